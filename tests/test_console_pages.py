"""Console pages: template editor rules, versions, test send, sources, send log, resend."""

from __future__ import annotations

import csv
import io
import re
from datetime import timedelta

from sqlalchemy import select

from dispatch_notifier import segments
from dispatch_notifier.db import get_db
from dispatch_notifier.models import AuditEntry, MessageTemplate, Notification, Source, utcnow
from dispatch_notifier.sources import fingerprint
from tests.console_helpers import add_many, add_notification, logged_in

EDITOR = "/admin/templates/dispatched/en"


def audit_actions(app) -> list[tuple[str, str, str | None]]:  # type: ignore[no-untyped-def]
    with get_db(app).session() as session:
        return [
            (e.actor, e.action, e.target)
            for e in session.scalars(select(AuditEntry).order_by(AuditEntry.id))
        ]


def current_body(app) -> str:  # type: ignore[no-untyped-def]
    with get_db(app).session() as session:
        template = session.scalar(
            select(MessageTemplate).where(
                MessageTemplate.kind == "dispatched", MessageTemplate.locale == "en"
            )
        )
        return template.current_version.body


# --- template editor -------------------------------------------------------------------------


def test_preview_endpoint_counts_with_the_same_module_as_the_server(app):
    client, token = logged_in(app)
    body = "{{ shop_name }}: your order {{ order_number }} is on its way – “soon”"
    data = client.post(
        "/admin/templates/preview", json={"body": body}, headers={"X-CSRFToken": token}
    ).json
    expected = segments.count(data["text"])
    assert data["count"]["encoding"] == expected.encoding == "UCS-2"
    assert data["count"]["characters"] == expected.characters
    assert data["count"]["segments"] == expected.segments
    assert [d["char"] for d in data["count"]["unicode_details"]] == ["–", "“", "”"]
    assert data["gsm_safe_body"] == segments.gsm_safe(body)
    assert data["minimum"]["characters"] < data["count"]["characters"]
    assert "Example Shop" in data["text"]


def test_preview_uses_sample_data_of_the_chosen_platform(app):
    client, token = logged_in(app)
    data = client.post(
        "/admin/templates/preview",
        json={"body": "{{ shop_name }} {{ carrier }}", "platform": "shopware"},
        headers={"X-CSRFToken": token},
    ).json
    assert data["text"] == "Beispiel Shop DHL"


def test_save_creates_a_version_with_author_and_an_audit_entry(app):
    client, token = logged_in(app)
    body = "{{ shop_name }}: order {{ order_number }} shipped. {{ tracking_url }}"
    response = client.post(EDITOR, data={"body": body, "csrf_token": token, "note": "shorter"})
    assert response.status_code == 302
    assert current_body(app) == body
    page = client.get(EDITOR).text
    assert "Saved as version 2." in page and "owner" in page and "shorter" in page
    assert ("owner", "template_save", "template:dispatched/en") in audit_actions(app)


def test_save_refuses_a_template_that_does_not_compile(app):
    client, token = logged_in(app)
    before = current_body(app)
    response = client.post(EDITOR, data={"body": "Hi {% if %}", "csrf_token": token})
    assert response.status_code == 422
    assert "Not saved" in response.text and "template error" in response.text
    assert current_body(app) == before


def test_save_refuses_unknown_variables_and_names_them(app):
    client, token = logged_in(app)
    response = client.post(EDITOR, data={"body": "Hi {{ customer_email }}", "csrf_token": token})
    assert response.status_code == 422
    assert "unknown variables: customer_email" in response.text


def test_save_refuses_a_message_over_the_configured_maximum_segments(app_factory):
    app = app_factory(MAX_TEMPLATE_SEGMENTS=1)
    client, token = logged_in(app)
    body = "{{ order_number }} " + "x" * 200
    response = client.post(EDITOR, data={"body": body, "csrf_token": token})
    assert response.status_code == 422
    assert "needs 2 SMS; the maximum is 1" in response.text


def test_version_page_shows_a_diff_and_restore_makes_a_new_version(app):
    client, token = logged_in(app)
    original = current_body(app)
    client.post(EDITOR, data={"body": "Order {{ order_number }} shipped.", "csrf_token": token})
    diff = client.get(EDITOR + "/versions/2").text
    assert "<ins>" in diff and "<del>" in diff
    response = client.post(EDITOR + "/versions/1/restore", data={"csrf_token": token})
    assert response.status_code == 302
    assert current_body(app) == original
    assert "restored version 1" in client.get(EDITOR).text
    assert ("owner", "template_restore", "template:dispatched/en") in audit_actions(app)


def test_get_never_restores_a_version(app):
    client, _ = logged_in(app)
    assert client.get(EDITOR + "/versions/1/restore").status_code == 405


def test_test_send_goes_through_the_configured_backend(dotdigital_app, fake_dotdigital):
    client, token = logged_in(dotdigital_app)
    response = client.post(EDITOR + "/test", data={"number": "07911 123456", "csrf_token": token})
    assert response.status_code == 302
    [sms] = fake_dotdigital.sent
    assert sms.number == "447911123456"
    assert "1001" in sms.message
    page = client.get(EDITOR).text
    assert "Test SMS sent to +44 •••• ••3456" in page
    assert ("owner", "test_send", "template:dispatched/en") in audit_actions(dotdigital_app)


def test_test_send_to_an_invalid_number_explains_why(app):
    client, token = logged_in(app)
    client.post(EDITOR + "/test", data={"number": "12", "csrf_token": token})
    assert "Cannot send a test to that number: invalid phone number" in client.get(EDITOR).text


def test_a_new_language_starts_from_the_default_text(app):
    client, token = logged_in(app)
    response = client.post("/admin/templates/new", data={"locale": "fr", "csrf_token": token})
    assert response.headers["Location"].endswith("/admin/templates/dispatched/fr")
    page = client.get("/admin/templates/dispatched/fr").text
    assert "is on its way" in page


# --- sources ---------------------------------------------------------------------------------


def test_sources_page_shows_the_absolute_webhook_url_and_fingerprint_only(app_factory):
    app = app_factory(PUBLIC_URL="https://sms.example.com/")
    client, _ = logged_in(app)
    page = client.get("/admin/sources").text
    assert "https://sms.example.com/webhooks/shopify" in page
    assert "sha256:" in page
    assert "test-shopify-secret" not in page


def test_reveal_shows_the_secret_and_is_audited(app):
    client, token = logged_in(app)
    with get_db(app).session() as session:
        sid = session.scalar(select(Source.id).where(Source.name == "shopify"))
    page = client.post(f"/admin/sources/{sid}/reveal", data={"csrf_token": token}).text
    assert "test-shopify-secret" in page
    assert ("owner", "reveal_secret", "source:shopify") in audit_actions(app)


def test_rotate_keeps_the_old_secret_until_retired(app):
    client, token = logged_in(app)
    add_notification(app, source="myshop")
    with get_db(app).session() as session:
        sid = session.scalar(select(Source.id).where(Source.name == "myshop"))
    page = client.post(f"/admin/sources/{sid}/rotate", data={"csrf_token": token}).text
    with get_db(app).session() as session:
        secrets = session.get(Source, sid).secrets
    assert len(secrets) == 2 and secrets[1] == "s3cret-myshop"
    # The page answering the rotation shows it (not what was read before it).
    assert "Also still accepted" in page and fingerprint("s3cret-myshop") in page
    client.post(f"/admin/sources/{sid}/retire", data={"csrf_token": token})
    with get_db(app).session() as session:
        assert session.get(Source, sid).secrets == secrets[:1]
    actions = [a for _, a, _ in audit_actions(app)]
    assert actions == ["rotate_secret", "retire_secret"]


def test_a_secret_set_in_the_environment_is_not_rotated_from_the_console(app):
    client, token = logged_in(app)
    with get_db(app).session() as session:
        sid = session.scalar(select(Source.id).where(Source.name == "shopify"))
    client.post(f"/admin/sources/{sid}/rotate", data={"csrf_token": token})
    with get_db(app).session() as session:
        assert session.get(Source, sid).secrets == ["test-shopify-secret"]


def test_sources_page_counts_the_last_24_hours_by_status(app):
    client, _ = logged_in(app)
    add_many(app, 3, status="sent")
    add_notification(app, status="failed", order="2")
    add_notification(app, status="failed", order="3", created_at=utcnow() - timedelta(days=2))
    page = client.get("/admin/sources").text
    assert 'badge-sent">sent</span> 3' in page
    assert 'badge-failed">failed</span> 1' in page


# --- dashboard -------------------------------------------------------------------------------


def test_dashboard_shows_no_credit_failures_prominently(app):
    client, _ = logged_in(app)
    add_notification(
        app, status="failed", error="no SMS credit", error_code="ERROR_SMS_SENDNOTPERMITTED"
    )
    add_notification(app, status="sent", order="1002")
    page = client.get("/admin/").text
    assert "Needs your attention" in page
    assert "No SMS credit left" in page
    assert 'class="tile-count">1</span><span class="tile-label">sent' in page


# --- send log --------------------------------------------------------------------------------


def test_send_log_filters_and_masks_numbers(app):
    client, _ = logged_in(app)
    add_notification(app, status="sent", order="1001", phone="+447911123456")
    add_notification(app, status="failed", order="2002", phone="+447700123999", error="boom")
    page = client.get("/admin/log?status=failed").text
    assert "2002" in page and ">1001<" not in page
    assert "+447700123999" not in page and "+44 •••• ••3999" in page
    by_phone = client.get("/admin/log?phone=3456").text
    assert "1001" in by_phone and "2002" not in by_phone
    assert "2002" in client.get("/admin/log?order=%232002").text


def test_send_log_explains_a_bad_filter(app):
    client, _ = logged_in(app)
    response = client.get("/admin/log?phone=12ab")
    assert response.status_code == 400
    assert "last 4 digits" in response.text


def test_send_log_pages_with_an_opaque_cursor_newest_first(app):
    client, _ = logged_in(app)
    same_time = utcnow() - timedelta(hours=2)
    ids = [add_notification(app, order=str(3000 + i), created_at=same_time, n=i) for i in range(3)]
    ids += add_many(app, 55)
    first = client.get("/admin/log").text
    assert first.count('href="/admin/log/') == 50
    assert f'href="/admin/log/{ids[-1]}"' in first  # the newest

    cursor = re.search(r'href="/admin/log\?cursor=([^"&]+)', first).group(1)
    second = client.get(f"/admin/log?cursor={cursor}").text
    assert second.count('href="/admin/log/') == 8
    for i in ids[:3]:  # rows sharing a timestamp are neither lost nor repeated
        assert f'href="/admin/log/{i}"' in second


def test_csv_export_streams_the_filtered_view(app):
    client, _ = logged_in(app)
    add_many(app, 3, status="sent")
    add_notification(app, status="failed", order="=HYPERLINK(1)", error="x")
    response = client.get("/admin/log.csv?status=failed")
    assert response.is_streamed
    assert response.mimetype == "text/csv"
    rows = list(csv.DictReader(io.StringIO(response.get_data(as_text=True))))
    assert len(rows) == 1
    assert rows[0]["order"] == "'=HYPERLINK(1)"  # no formula injection into spreadsheets
    assert rows[0]["phone"] == "+44 •••• ••3456"


def test_detail_page_shows_text_attempts_and_raw_event(app):
    client, _ = logged_in(app)
    nid = add_notification(
        app,
        status="unknown",
        error="Dotdigital answered 502",
        attempts=[
            {
                "started_at": utcnow(),
                "duration_ms": 123,
                "outcome": "unknown",
                "http_status": 502,
                "provider_error": "HTTP_502",
            }
        ],
    )
    page = client.get(f"/admin/log/{nid}").text
    assert "your order 1001 is on its way" in page
    assert "123 ms" in page and "502" in page and "HTTP_502" in page
    assert "order_number" in page  # the event


def test_resend_asks_for_confirmation_and_warns_when_already_sent(app):
    client, token = logged_in(app)
    nid = add_notification(app, status="sent")
    confirm = client.get(f"/admin/log/{nid}/resend")
    assert "already sent" in confirm.text
    with get_db(app).session() as session:
        assert session.get(Notification, nid).status == "sent"  # GET changed nothing
    unconfirmed = client.post(f"/admin/log/{nid}/resend", data={"csrf_token": token})
    assert unconfirmed.status_code == 400
    done = client.post(f"/admin/log/{nid}/resend", data={"csrf_token": token, "confirm": "yes"})
    assert done.status_code == 302
    with get_db(app).session() as session:
        row = session.get(Notification, nid)
        assert row.status == "pending" and row.requested_by == "owner"
    assert ("owner", "resend", f"notification:{nid}") in audit_actions(app)


def test_resend_of_an_unknown_outcome_warns_it_may_have_arrived(app):
    client, _ = logged_in(app)
    nid = add_notification(app, status="unknown")
    assert "may already have reached the customer" in client.get(f"/admin/log/{nid}/resend").text


def test_pausing_a_template_is_audited_and_skips_its_messages(app):
    from dispatch_notifier.worker import Worker
    from tests.conftest import fulfillment, post_shopify

    client, token = logged_in(app)
    client.post(EDITOR + "/enabled", data={"enabled": "no", "csrf_token": token})
    assert "paused" in client.get(EDITOR).text
    post_shopify(app.test_client(), fulfillment())
    Worker(app).run_until_idle()
    with get_db(app).session() as session:
        row = session.scalars(select(Notification)).one()
        assert (row.status, row.error) == ("skipped", "template disabled")
    client.post(EDITOR + "/enabled", data={"enabled": "yes", "csrf_token": token})
    actions = [a for _, a, _ in audit_actions(app)]
    assert actions == ["template_disable", "template_enable"]
