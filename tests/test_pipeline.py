"""End to end: a Shopify webhook becomes one SMS through the (fake) Dotdigital API, or a reason."""

from __future__ import annotations

import threading
import time

from sqlalchemy import select

from dispatch_notifier import message_templates
from dispatch_notifier.db import get_db
from dispatch_notifier.models import Attempt, Notification
from dispatch_notifier.sms import SendOutcome
from dispatch_notifier.testing.fake_dotdigital import (
    drop,
    error,
    rate_limited,
    server_error,
    slow,
    unavailable,
)
from dispatch_notifier.worker import Worker
from tests.conftest import fulfillment, post_shopify


def only_notification(app) -> Notification:  # type: ignore[no-untyped-def]
    with get_db(app).session() as session:
        row = session.scalars(select(Notification)).one()
        row.attempt_rows  # noqa: B018 - load while the session is open
        return row


def test_a_dispatch_is_sent_through_dotdigital_with_the_exact_text_stored(
    dotdigital_app, fake_dotdigital
):
    post_shopify(dotdigital_app.test_client(), fulfillment())
    Worker(dotdigital_app).run_until_idle()
    [sms] = fake_dotdigital.sent
    assert sms.number == "447911123456"
    assert "1001" in sms.message and "Royal Mail" in sms.message
    assert "https://track.example.com/RM123456785GB" in sms.message
    row = only_notification(dotdigital_app)
    assert row.status == "sent"
    assert row.message == sms.message
    assert row.phone == "+447911123456"
    assert row.backend == "dotdigital"
    assert row.template_version_id is not None
    [attempt] = row.attempt_rows
    assert attempt.http_status == 204 and attempt.outcome == "sent"


def test_no_credit_fails_with_a_reason_a_shop_owner_understands(dotdigital_app, fake_dotdigital):
    fake_dotdigital.credits = 0
    post_shopify(dotdigital_app.test_client(), fulfillment())
    Worker(dotdigital_app).run_until_idle()
    row = only_notification(dotdigital_app)
    assert row.status == "failed"
    assert "no SMS credit" in row.error
    assert row.error_code == "ERROR_SMS_SENDNOTPERMITTED"
    assert fake_dotdigital.sent == []


def test_invalid_number_token_fails_permanently(dotdigital_app, fake_dotdigital):
    fake_dotdigital.script(error(400, "ERROR_SMS_INVALIDPHONENUMBER"))
    post_shopify(dotdigital_app.test_client(), fulfillment())
    Worker(dotdigital_app).run_until_idle()
    assert only_notification(dotdigital_app).status == "failed"


def test_provider_unavailable_is_retried_until_sent(dotdigital_app, fake_dotdigital):
    fake_dotdigital.script(unavailable(), rate_limited(reset_in=0))
    post_shopify(dotdigital_app.test_client(), fulfillment())
    worker = Worker(dotdigital_app)
    deadline = time.monotonic() + 10
    while not fake_dotdigital.sent and time.monotonic() < deadline:
        worker.run_until_idle()
        time.sleep(0.05)
    row = only_notification(dotdigital_app)
    assert row.status == "sent"
    assert [a.outcome for a in row.attempt_rows] == ["retrying", "retrying", "sent"]
    assert len(fake_dotdigital.sent) == 1


def test_a_500_is_unknown_and_never_retried_automatically(dotdigital_app, fake_dotdigital):
    fake_dotdigital.script(server_error(500))
    post_shopify(dotdigital_app.test_client(), fulfillment())
    worker = Worker(dotdigital_app)
    worker.run_until_idle()
    worker.run_until_idle()
    row = only_notification(dotdigital_app)
    assert row.status == "unknown"
    assert len(row.attempt_rows) == 1


def test_a_read_timeout_is_unknown_even_though_the_provider_sent_it(
    dotdigital_app, fake_dotdigital
):
    fake_dotdigital.script(slow(1.5))  # longer than the app's 1 s read timeout
    post_shopify(dotdigital_app.test_client(), fulfillment())
    Worker(dotdigital_app).run_until_idle()
    row = only_notification(dotdigital_app)
    assert row.status == "unknown"
    assert "may have been sent" in row.error
    fake_dotdigital.wait_for_sent(1)


def test_a_dropped_connection_after_sending_is_unknown(dotdigital_app, fake_dotdigital):
    fake_dotdigital.script(drop())
    post_shopify(dotdigital_app.test_client(), fulfillment())
    Worker(dotdigital_app).run_until_idle()
    assert only_notification(dotdigital_app).status == "unknown"


def test_an_unreachable_provider_is_retried_not_unknown(app_factory):
    app = app_factory(
        SMS_BACKEND="dotdigital",
        DOTDIGITAL_API_URL="http://127.0.0.1:9",
        DOTDIGITAL_USER="u",
        DOTDIGITAL_PASSWORD="p",
        RETRY_BASE_SECONDS=60,
    )
    post_shopify(app.test_client(), fulfillment())
    Worker(app).run_until_idle()
    row = only_notification(app)
    assert row.status == "retrying"
    assert row.error == "could not connect to Dotdigital"


def test_an_invalid_phone_is_skipped_with_the_reason(app):
    post_shopify(app.test_client(), fulfillment(phone="555-555-SHIP"))
    Worker(app).run_until_idle()
    row = only_notification(app)
    assert row.status == "skipped"
    assert row.error in ("invalid phone number", "not a mobile number")


def test_no_phone_at_all_is_skipped(app):
    post_shopify(app.test_client(), fulfillment(phone=""))
    Worker(app).run_until_idle()
    row = only_notification(app)
    assert (row.status, row.error) == ("skipped", "no phone number")


def test_a_broken_template_fails_the_notification_not_the_worker(app):
    with get_db(app).session() as session:
        message_templates.save_version(session, "dispatched", "en", "Hi {{ nobody }}", "test")
        session.commit()
    response = post_shopify(app.test_client(), fulfillment())
    assert response.status_code == 200
    Worker(app).run_until_idle()
    row = only_notification(app)
    assert row.status == "failed"
    assert "nobody" in row.error and row.error_code == "template_error"


def test_a_running_worker_sends_an_edited_template_once_its_cache_time_is_up(
    app_factory, monkeypatch
):
    clock = [1000.0]
    monkeypatch.setattr(message_templates, "monotonic", lambda: clock[0])
    app = app_factory(TEMPLATE_CACHE_SECONDS=1)
    worker = Worker(app)
    client = app.test_client()

    def send(n: int) -> str:
        post_shopify(client, fulfillment(fulfillment_id=n, order_id=n))
        worker.run_until_idle()
        with get_db(app).session() as session:
            return session.scalars(
                select(Notification.message).where(Notification.order_id == str(n))
            ).one()

    assert not send(1).startswith("Edited")
    with get_db(app).session() as session:
        message_templates.save_version(session, "dispatched", "en", "Edited {{ order_number }}", "")
        session.commit()
    clock[0] += 0.5
    assert not send(2).startswith("Edited")  # the worker's copy is half a second old
    clock[0] += 0.6
    assert send(3) == "Edited 1001"


def test_the_row_is_committed_as_sending_before_the_provider_is_called(app):
    seen: list[str] = []

    class Inspecting:
        name = "inspecting"

        def send(self, e164: str, message: str) -> SendOutcome:
            # A separate connection sees only committed data.
            with get_db(app).session() as session:
                seen.append(session.scalars(select(Notification.status)).one())
            return SendOutcome("sent")

    post_shopify(app.test_client(), fulfillment())
    Worker(app, backend=Inspecting()).run_until_idle()
    assert seen == ["sending"]
    assert only_notification(app).status == "sent"


def test_new_work_is_picked_up_promptly_by_a_running_worker(app_factory, fake_dotdigital):
    app = app_factory(
        SMS_BACKEND="dotdigital",
        DOTDIGITAL_API_URL=fake_dotdigital.url,
        DOTDIGITAL_USER="apiuser-test@apiconnector.com",
        DOTDIGITAL_PASSWORD="test-password",
        POLL_INTERVAL=0.5,
    )
    worker = Worker(app)
    thread = threading.Thread(target=worker.run)
    thread.start()
    try:
        time.sleep(0.3)
        post_shopify(app.test_client(), fulfillment())
        # Generous bound for a loaded CI machine; the benchmark measures the real latency.
        fake_dotdigital.wait_for_sent(1, timeout=5)
    finally:
        worker.stop()
        thread.join(10)
    assert not thread.is_alive()
    assert len(fake_dotdigital.sent) == 1


def test_attempt_rows_record_duration_and_provider_error(dotdigital_app, fake_dotdigital):
    fake_dotdigital.credits = 0
    post_shopify(dotdigital_app.test_client(), fulfillment())
    Worker(dotdigital_app).run_until_idle()
    with get_db(dotdigital_app).session() as session:
        attempt = session.scalars(select(Attempt)).one()
        assert attempt.http_status == 403
        assert attempt.provider_error == "ERROR_SMS_SENDNOTPERMITTED"
        assert attempt.duration_ms is not None and attempt.duration_ms >= 0
