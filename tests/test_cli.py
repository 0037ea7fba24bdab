"""The `dispatch-notifier` commands, as an operator or a script would use them."""

from __future__ import annotations

import json
import threading
from datetime import datetime

import pytest
from sqlalchemy import select
from werkzeug.serving import make_server

from dispatch_notifier.db import get_db
from dispatch_notifier.models import AuditEntry, Notification
from dispatch_notifier.worker import Worker
from tests.conftest import fulfillment, post_shopify


def send_some(app) -> None:  # type: ignore[no-untyped-def]
    client = app.test_client()
    post_shopify(client, fulfillment(1, 11))
    post_shopify(client, fulfillment(2, 12, phone="555-555-SHIP", name="#1002.1"))
    Worker(app).run_until_idle()


# --- log -----------------------------------------------------------------------------------


def test_log_json_prints_one_array_of_records_newest_first(app, runner):
    send_some(app)
    result = runner.invoke(args=["log", "--json"])
    assert result.exit_code == 0, result.output
    records = json.loads(result.output)
    assert [r["order"] for r in records] == ["1002", "1001"]
    sent, skipped = records[1], records[0]
    assert sent["status"] == "sent" and sent["phone"] == "+44 •••• ••3456"
    assert sent["attempts"] == 1
    assert "1001" in sent["message"]
    assert skipped["status"] == "skipped" and skipped["error"]
    for key in (
        "id",
        "source",
        "order",
        "status",
        "phone",
        "attempts",
        "error",
        "message",
        "created_at",
        "updated_at",
    ):
        assert key in sent
    assert datetime.fromisoformat(sent["created_at"].replace("Z", "+00:00")).tzinfo is not None
    assert "+447911123456" not in result.output


def test_log_filters_by_status_and_limits(app, runner):
    send_some(app)
    records = json.loads(runner.invoke(args=["log", "--json", "--status", "skipped"]).output)
    assert [r["status"] for r in records] == ["skipped"]
    assert len(json.loads(runner.invoke(args=["log", "--json", "--limit", "1"]).output)) == 1


def test_log_as_text_masks_numbers_and_marks_console_sends(app, runner):
    send_some(app)
    output = runner.invoke(args=["log"]).output
    assert "+44 •••• ••3456" in output
    assert "console" in output
    assert "+447911123456" not in output


def test_log_refuses_an_unknown_status(runner):
    result = runner.invoke(args=["log", "--status", "lost"])
    assert result.exit_code != 0
    assert "lost" in result.output


# --- resend --------------------------------------------------------------------------------


def test_resend_of_a_sent_notification_needs_confirmation_without_a_terminal(app, runner):
    send_some(app)
    result = runner.invoke(args=["resend", "1"])
    assert result.exit_code != 0
    assert "--yes" in result.output


def test_resend_with_yes_queues_it_again_and_records_who_asked(app, runner, capsys):
    send_some(app)
    result = runner.invoke(args=["resend", "1", "--yes", "--actor", "ops"])
    assert result.exit_code == 0, result.output
    Worker(app).run_until_idle()
    with get_db(app).session() as session:
        row = session.get(Notification, 1)
        assert row.status == "sent" and row.requested_by == "ops"
        audit = session.scalars(select(AuditEntry)).one()
        assert (audit.actor, audit.action) == ("ops", "resend")


def test_webhooks_are_stored_while_resend_waits_for_the_operator(app, runner, monkeypatch):
    send_some(app)
    webhooks: list[int] = []

    def operator_takes_a_while(question: str, abort: bool = False) -> bool:
        assert "was already sent" in question
        # Meanwhile a shop posts a webhook: it must not wait for the operator's answer.
        webhooks.append(post_shopify(app.test_client(), fulfillment(3, 13)).status_code)
        return True

    monkeypatch.setattr("dispatch_notifier.cli._interactive", lambda: True)
    monkeypatch.setattr("click.confirm", operator_takes_a_while)
    result = runner.invoke(args=["resend", "1"])
    assert result.exit_code == 0, result.output
    assert webhooks == [200]
    with get_db(app).session() as session:
        assert session.get(Notification, 1).requested_by == "cli"


def test_resend_of_a_missing_notification_fails(runner):
    result = runner.invoke(args=["resend", "999"])
    assert result.exit_code != 0
    assert "no notification 999" in result.output


# --- send-test -----------------------------------------------------------------------------


def test_send_test_sends_through_the_configured_backend(dotdigital_app, fake_dotdigital):
    result = dotdigital_app.test_cli_runner().invoke(args=["send-test", "07911 123456"])
    assert result.exit_code == 0, result.output
    assert "sent" in result.output
    assert fake_dotdigital.sent[0].number == "447911123456"


def test_send_test_reports_a_failure_with_a_non_zero_exit(dotdigital_app, fake_dotdigital):
    fake_dotdigital.credits = 0
    result = dotdigital_app.test_cli_runner().invoke(args=["send-test", "+447911123456"])
    assert result.exit_code == 1
    assert "no SMS credit" in result.output


def test_send_test_refuses_an_invalid_number(runner):
    result = runner.invoke(args=["send-test", "12"])
    assert result.exit_code != 0
    assert "invalid phone number" in result.output


# --- sources -------------------------------------------------------------------------------


def test_sources_add_generates_a_secret_once_and_lists_only_its_fingerprint(runner):
    result = runner.invoke(args=["sources", "add", "my-shop", "--platform", "shopify"])
    assert result.exit_code == 0, result.output
    secret = result.output.split("paste it into the shop): ")[1].strip()
    listing = runner.invoke(args=["sources", "list"]).output
    assert "my-shop" in listing and "/webhooks/my-shop" in listing
    assert secret not in listing
    assert "sha256:" in listing


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["sources", "add", "Bad Name!", "--platform", "shopify"], "URL-safe"),
        (["sources", "add", "ok", "--platform", "magento"], "unknown platform"),
        (["sources", "add", "shopify", "--platform", "shopify"], "exists already"),
        (["sources", "add", "x", "--platform", "shopify", "--country", "GBR"], "two-letter"),
    ],
)
def test_sources_add_refuses_bad_input_clearly(runner, args, message):
    result = runner.invoke(args=args)
    assert result.exit_code != 0
    assert message in result.output


def test_a_new_source_receives_webhooks_with_its_own_secret(app, runner):
    import base64
    import hashlib
    import hmac

    runner.invoke(args=["sources", "add", "second", "--platform", "shopify", "--secret", "two"])
    body = json.dumps(fulfillment()).encode()
    signature = base64.b64encode(hmac.new(b"two", body, hashlib.sha256).digest()).decode()
    response = app.test_client().post(
        "/webhooks/second",
        data=body,
        headers={"X-Shopify-Topic": "fulfillments/create", "X-Shopify-Hmac-Sha256": signature},
    )
    assert response.status_code == 200


# --- templates -----------------------------------------------------------------------------


def test_templates_list_shows_the_seeded_defaults(runner):
    output = runner.invoke(args=["templates", "list"]).output
    assert "dispatched/en: version 1" in output
    assert "dispatched/de: version 1" in output


def test_templates_preview_renders_sample_data_with_its_cost(runner):
    result = runner.invoke(args=["templates", "preview", "dispatched"])
    assert result.exit_code == 0, result.output
    assert "Example Shop: your order 1001 is on its way with Royal Mail." in result.output
    assert "GSM-7, 1 segment(s)" in result.output


def test_the_default_template_fits_one_gsm_segment_for_typical_values(runner):
    output = runner.invoke(args=["templates", "preview", "dispatched", "--locale", "de"]).output
    assert "GSM-7, 1 segment(s)" in output


def test_templates_export_then_import_round_trips(runner, tmp_path):
    runner.invoke(args=["templates", "export", "--dir", str(tmp_path)])
    path = tmp_path / "dispatched.txt.j2"
    assert "order_number" in path.read_text()
    path.write_text("Order {{ order_number }} shipped.\n")
    result = runner.invoke(args=["templates", "import", "--dir", str(tmp_path), "--force"])
    assert "dispatched/en" in result.output
    assert "version 2 by file" in runner.invoke(args=["templates", "list"]).output


def test_templates_import_refuses_unknown_variables(runner, tmp_path):
    (tmp_path / "dispatched.txt.j2").write_text("Hi {{ customer_pin }}")
    result = runner.invoke(args=["templates", "import", "--dir", str(tmp_path), "--force"])
    assert result.exit_code != 0
    assert "customer_pin" in result.output


# --- simulate ------------------------------------------------------------------------------


@pytest.fixture
def live_url(app):  # type: ignore[no-untyped-def]
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    thread.join()


def test_simulate_posts_a_signed_sample_that_is_accepted(app, runner, live_url):
    result = runner.invoke(args=["simulate", "shopify", "--url", live_url])
    assert result.exit_code == 0, result.output
    assert '"status":"accepted"' in result.output
    with get_db(app).session() as session:
        assert session.scalars(select(Notification)).one().order_number == "1001"


def test_simulate_explains_an_unreachable_service(runner):
    result = runner.invoke(args=["simulate", "--url", "http://127.0.0.1:9"])
    assert result.exit_code != 0
    assert "could not reach" in result.output
