"""Generic `standard` receiver: Standard Webhooks signatures, the published schema, 422 problems."""

from __future__ import annotations

import base64
import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from dispatch_notifier.models import Delivery, Notification
from dispatch_notifier.platforms import standard
from dispatch_notifier.worker import Worker
from tests.platform_helpers import (
    add_source,
    body_of,
    count,
    notifications,
    race,
    standard_webhook_headers,
)

SECRET = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()
SCHEMA_PATH = (
    Path(__file__).resolve().parent.parent
    / "dispatch_notifier"
    / "schemas"
    / "dispatch-event.schema.json"
)


@pytest.fixture
def app(app_factory):  # type: ignore[no-untyped-def]
    app = app_factory()
    add_source(app, "warehouse", "standard", [SECRET], shop_name="Example Shop")
    return app


def dispatch(**data: Any) -> dict[str, Any]:
    body = {
        "type": "shipment.dispatched",
        "timestamp": "2026-11-25T14:03:00Z",
        "data": {
            "order_number": "1001",
            "shipment_id": "1001-1",
            "customer_name": "Alex Example",
            "phone": "+447911123456",
            "country": "GB",
            "locale": "en",
            "carrier": "Royal Mail",
            "tracking_number": "RM123456785GB",
            "tracking_url": "https://track.example.com/RM123456785GB",
            "items": [{"name": "Linen shirt", "quantity": 2}],
        },
    }
    body["data"].update(data)
    return body


def post(client, payload, msg_id=None, secret=SECRET, timestamp=None):  # type: ignore[no-untyped-def]
    body = body_of(payload)
    headers = standard_webhook_headers(secret, body, msg_id or f"msg_{uuid.uuid4().hex}", timestamp)
    return client.post("/webhooks/warehouse", data=body, headers=headers)


# --- the schema ----------------------------------------------------------------------------


def test_the_published_schema_is_a_valid_json_schema_and_its_example_passes():
    schema = json.loads(SCHEMA_PATH.read_text())
    Draft202012Validator.check_schema(schema)
    for example in schema["examples"]:
        assert standard.schema_problems(example) == []


def test_the_schema_ships_inside_the_package():
    assert standard.validator().schema["title"].startswith("dispatch-notifier")


# --- signatures ----------------------------------------------------------------------------


def test_a_valid_dispatch_is_accepted(app, client):
    response = post(client, dispatch())
    assert response.status_code == 200
    assert response.json["status"] == "accepted"
    [row] = notifications(app)
    assert (row.order_id, row.shipment_id, row.order_number) == ("1001", "1001-1", "1001")


def test_a_tampered_body_is_401(app, client):
    body = body_of(dispatch())
    headers = standard_webhook_headers(SECRET, body, "msg_1")
    response = client.post(
        "/webhooks/warehouse", data=body.replace(b"1001", b"1002"), headers=headers
    )
    assert response.status_code == 401
    assert response.json["message"] == "webhook-signature does not match"
    assert count(app, Delivery) == 0


def test_a_missing_signature_header_is_named(client):
    body = body_of(dispatch())
    headers = standard_webhook_headers(SECRET, body, "msg_1")
    del headers["webhook-signature"]
    response = client.post("/webhooks/warehouse", data=body, headers=headers)
    assert response.status_code == 401
    assert response.json["message"] == "missing webhook-signature header"


@pytest.mark.parametrize(
    ("shift", "word"), [(timedelta(minutes=-6), "past"), (timedelta(minutes=6), "future")]
)
def test_a_timestamp_outside_five_minutes_is_401(client, shift, word):
    response = post(client, dispatch(), timestamp=datetime.now(UTC) + shift)
    assert response.status_code == 401
    assert word in response.json["message"]


def test_a_timestamp_within_five_minutes_is_accepted(client):
    when = datetime.now(UTC) - timedelta(minutes=4)
    assert post(client, dispatch(), timestamp=when).status_code == 200


@pytest.mark.parametrize("signature", ["garbage", "v1,!!!notbase64", "v1"])
def test_a_malformed_signature_header_is_401_not_500(client, signature):
    body = body_of(dispatch())
    headers = standard_webhook_headers(SECRET, body, "msg_1")
    headers["webhook-signature"] = signature
    response = client.post("/webhooks/warehouse", data=body, headers=headers)
    assert response.status_code == 401


def test_any_matching_v1_signature_among_several_is_accepted(client):
    body = body_of(dispatch())
    headers = standard_webhook_headers(SECRET, body, "msg_1")
    headers["webhook-signature"] = "v1,AAAA v1a,ignored " + headers["webhook-signature"]
    assert client.post("/webhooks/warehouse", data=body, headers=headers).status_code == 200


def test_the_previous_secret_still_works_during_a_rotation(app_factory):
    app = app_factory()
    new = "whsec_" + base64.b64encode(b"N" * 32).decode()
    add_source(app, "warehouse", "standard", [new, SECRET])
    assert post(app.test_client(), dispatch(), secret=SECRET).status_code == 200
    assert post(app.test_client(), dispatch(shipment_id="2"), secret=new).status_code == 200


# --- schema validation ---------------------------------------------------------------------


def test_a_non_conforming_body_is_422_with_every_problem(app, client):
    payload = dispatch(phone=447911123456, country="GBR", tracking_url="ftp://x", oops=1)
    del payload["data"]["shipment_id"]
    payload["data"]["items"] = [{"name": "Shirt", "quantity": 0}]
    response = post(client, payload)
    assert response.status_code == 422
    assert response.json["error"] == "invalid_event"
    problems = response.json["problems"]
    joined = "\n".join(problems)
    for expected in (
        "data: 'shipment_id' is a required property",
        "data.phone: 447911123456 is not of type 'string', 'null'",
        "data.country: 'GBR' does not match",
        "data.tracking_url: 'ftp://x' does not match",
        "data.items[0].quantity: 0 is less than the minimum of 1",
        "'oops' was unexpected",
    ):
        assert expected in joined
    assert count(app, Delivery) == 0


def test_a_body_without_type_is_422(client):
    response = post(client, {"data": {}})
    assert response.status_code == 422
    assert response.json["problems"] == ["(body): 'type' is a required property"]


def test_a_body_that_is_not_json_is_400(client):
    assert post(client, b"not json").status_code == 400


def test_other_event_types_are_acknowledged_and_ignored(app, client):
    response = post(client, {"type": "shipment.delivered", "data": {"anything": True}})
    assert response.status_code == 200
    assert response.json["status"] == "ignored"
    assert count(app, Notification) == 0


def test_a_null_phone_is_valid_and_the_send_is_skipped_with_the_reason(app, client):
    post(client, dispatch(phone=None))
    Worker(app).run_until_idle()
    [row] = notifications(app)
    assert (row.status, row.error) == ("skipped", "no phone number")


# --- idempotency ---------------------------------------------------------------------------


def test_a_repeated_webhook_id_is_a_duplicate_delivery(app, client):
    post(client, dispatch(), msg_id="msg_same")
    second = post(client, dispatch(), msg_id="msg_same")
    assert second.json["status"] == "duplicate"
    assert count(app, Delivery) == 1


def test_the_same_shipment_under_a_new_webhook_id_sends_one_sms(app, client, capsys):
    post(client, dispatch())
    assert post(client, dispatch()).json["status"] == "duplicate"
    Worker(app).run_until_idle()
    assert capsys.readouterr().out.count("--- SMS") == 1


@pytest.mark.parametrize("same_id", [True, False])
def test_concurrent_identical_deliveries_make_one_notification(app, same_id):
    body = body_of(dispatch(shipment_id="race"))

    def deliver(i: int) -> int:
        msg_id = "msg_race" if same_id else f"msg_race_{i}"
        headers = standard_webhook_headers(SECRET, body, msg_id)
        return app.test_client().post("/webhooks/warehouse", data=body, headers=headers).status_code

    assert race(deliver) == [200] * 24
    assert count(app, Notification) == 1


# --- rendering -----------------------------------------------------------------------------


def test_a_realistic_dispatch_renders_the_default_template(app, client, capsys):
    post(client, dispatch())
    Worker(app).run_until_idle()
    [row] = notifications(app)
    assert row.status == "sent"
    assert row.message == (
        "Example Shop: your order 1001 is on its way with Royal Mail. "
        "Track it: https://track.example.com/RM123456785GB"
    )
    assert row.message in capsys.readouterr().out


def test_a_german_locale_uses_the_german_template(app, client):
    post(client, dispatch(locale="de-AT", shop_name="Beispiel"))
    Worker(app).run_until_idle()
    [row] = notifications(app)
    assert row.message.startswith("Beispiel: Ihre Bestellung 1001 ist unterwegs mit Royal Mail.")


# --- secrets -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "secret", ["plain-secret", "whsec_not*base64", "whsec_" + base64.b64encode(b"short").decode()]
)
def test_secrets_that_are_not_whsec_are_refused(secret):
    with pytest.raises(ValueError):
        standard.STANDARD.check_secret(secret)


def test_generated_secrets_are_whsec_with_32_bytes():
    secret = standard.STANDARD.new_secret()
    assert len(standard.check_whsec(secret)) == 32


def test_a_source_with_an_unusable_secret_answers_401_not_500(app_factory):
    app = app_factory(STANDARD_SECRET="not-a-whsec-secret")
    response = post(app.test_client(), dispatch())
    # posted to /webhooks/warehouse, which does not exist on this app
    assert response.status_code == 404
    body = body_of(dispatch())
    headers = standard_webhook_headers(SECRET, body, "m1")
    response = app.test_client().post("/webhooks/standard", data=body, headers=headers)
    assert response.status_code == 401
    assert "no usable whsec_ secret" in response.json["message"]
