"""Shopware 6 receiver: hex signatures, shipped deliveries, dedupe on eventId and delivery id."""

from __future__ import annotations

import copy
import uuid
from typing import Any

import pytest

from dispatch_notifier.models import Delivery, Notification
from dispatch_notifier.platforms.shopware import parse_order
from dispatch_notifier.worker import Worker
from tests.platform_helpers import add_source, body_of, count, hex_hmac, notifications, race

SECRET = "shopware-shop-secret-from-registration"
SHIPPED = "state_enter.order_delivery.state.shipped"
ORDER_ID = "0193a1b2c3d4e5f60718293a4b5c6d7e"
DELIVERY_ID = "0193a1b2c3d4e5f60718293a4b5c6d80"


@pytest.fixture
def app(app_factory):  # type: ignore[no-untyped-def]
    app = app_factory()
    add_source(app, "sw-shop", "shopware", [SECRET], shop_name="Beispiel Shop")
    return app


def sw_order() -> dict[str, Any]:
    """An order entity as Shopware serialises it into webhooks (camelCase; our own values)."""
    return {
        "id": ORDER_ID,
        "orderNumber": "10042",
        "billingAddressId": "addr-billing",
        "orderCustomer": {"firstName": "Alex", "lastName": "Beispiel", "email": "a@example.com"},
        "addresses": [
            {"id": "addr-billing", "phoneNumber": "+49 151 00000000", "country": {"iso": "DE"}}
        ],
        "language": {"locale": {"code": "de-DE"}},
        "deliveries": [
            {
                "id": DELIVERY_ID,
                "trackingCodes": ["00340434161094042557"],
                "shippingOrderAddress": {
                    "firstName": "Alex",
                    "lastName": "Beispiel",
                    "phoneNumber": "0151 23456789",
                    "country": {"iso": "DE"},
                },
                "shippingMethod": {
                    "name": "Standard",
                    "translated": {
                        "name": "DHL Paket",
                        "trackingUrl": "https://www.dhl.de/de/privatkunden.html?piececode=%s",
                    },
                },
                "stateMachineState": {"technicalName": "shipped"},
            }
        ],
        "lineItems": [
            {"label": "Leinenhemd", "quantity": 2, "type": "product"},
            {"label": "10% Rabatt", "quantity": 1, "type": "promotion"},
        ],
    }


def sw_webhook(
    event: str = SHIPPED, order: dict[str, Any] | None = None, event_id: str | None = None
) -> dict[str, Any]:
    return {
        "data": {"payload": {"order": order or sw_order()}, "event": event},
        "source": {
            "url": "https://shop.example.com",
            "appVersion": "1.0.0",
            "shopId": "GLblL0Q8YI7veaV5",
            "eventId": event_id or uuid.uuid4().hex,
        },
        "timestamp": 1764079380,
    }


def post_sw(client, payload, secret=SECRET, **headers):  # type: ignore[no-untyped-def]
    body = body_of(payload)
    all_headers = {
        "Content-Type": "application/json",
        "shopware-shop-signature": hex_hmac(secret, body),
        "sw-version": "6.6.9.0",
        **headers,
    }
    return client.post("/webhooks/sw-shop", data=body, headers=all_headers)


# --- signatures ----------------------------------------------------------------------------


def test_a_valid_shipped_delivery_is_accepted(app, client):
    response = post_sw(client, sw_webhook())
    assert response.status_code == 200
    assert response.json["status"] == "accepted"
    [row] = notifications(app)
    assert (row.order_id, row.shipment_id, row.order_number) == (ORDER_ID, DELIVERY_ID, "10042")


def test_a_tampered_body_is_401(app, client):
    body = body_of(sw_webhook())
    signature = hex_hmac(SECRET, body)
    response = client.post(
        "/webhooks/sw-shop",
        data=body.replace(b"10042", b"10043"),
        headers={"shopware-shop-signature": signature},
    )
    assert response.status_code == 401
    assert count(app, Delivery) == 0


def test_a_missing_signature_is_401(client):
    response = client.post("/webhooks/sw-shop", json=sw_webhook())
    assert response.status_code == 401
    assert response.json["message"] == "missing shopware-shop-signature header"


def test_an_upper_case_hex_signature_is_accepted(client):
    body = body_of(sw_webhook())
    response = client.post(
        "/webhooks/sw-shop",
        data=body,
        headers={"shopware-shop-signature": hex_hmac(SECRET, body).upper()},
    )
    assert response.status_code == 200


def test_a_base64_signature_is_not_accepted(client):
    import base64
    import hashlib
    import hmac

    body = body_of(sw_webhook())
    wrong = base64.b64encode(hmac.new(SECRET.encode(), body, hashlib.sha256).digest()).decode()
    response = client.post(
        "/webhooks/sw-shop", data=body, headers={"shopware-shop-signature": wrong}
    )
    assert response.status_code == 401


# --- events --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "event",
    ["state_enter.order.state.completed", "order.written", "checkout.order.placed", ""],
)
def test_other_events_are_acknowledged_and_ignored(app, client, event):
    response = post_sw(client, sw_webhook(event=event))
    assert response.status_code == 200
    assert response.json["status"] == "ignored"
    assert count(app, Notification) == 0


def test_shipped_partially_is_a_dispatch(app, client):
    order = sw_order()
    order["deliveries"][0]["stateMachineState"]["technicalName"] = "shipped_partially"
    event = "state_enter.order_delivery.state.shipped_partially"
    assert post_sw(client, sw_webhook(event, order)).json["status"] == "accepted"


def test_a_payload_without_an_order_is_400(client):
    payload = sw_webhook()
    payload["data"]["payload"] = {}
    response = post_sw(client, payload)
    assert response.status_code == 400
    assert "data.payload.order" in response.json["message"]


# --- idempotency ---------------------------------------------------------------------------


def test_a_retried_event_id_is_a_duplicate_delivery(app, client):
    post_sw(client, sw_webhook(event_id="evt-1"))
    second = post_sw(client, sw_webhook(event_id="evt-1"))
    assert second.json["status"] == "duplicate"
    assert count(app, Delivery) == 1


def test_the_event_id_header_is_used_when_the_body_has_none(app, client):
    payload = sw_webhook()
    del payload["source"]["eventId"]
    post_sw(client, payload, **{"X-Shopware-Event-Id": "hdr-1"})
    assert post_sw(client, payload, **{"X-Shopware-Event-Id": "hdr-1"}).json["status"] == (
        "duplicate"
    )
    assert count(app, Delivery) == 1


def test_the_same_delivery_in_a_new_event_sends_one_sms(app, client, capsys):
    post_sw(client, sw_webhook())
    assert post_sw(client, sw_webhook()).json["status"] == "duplicate"
    Worker(app).run_until_idle()
    assert capsys.readouterr().out.count("--- SMS") == 1


def test_a_second_delivery_of_the_order_is_a_second_sms(app, client):
    post_sw(client, sw_webhook())
    order = sw_order()
    second = copy.deepcopy(order["deliveries"][0])
    second["id"] = "second-delivery"
    order["deliveries"].append(second)
    response = post_sw(client, sw_webhook(order=order))
    assert response.json["notifications"] and count(app, Notification) == 2


@pytest.mark.parametrize("same_event_id", [True, False])
def test_concurrent_identical_deliveries_make_one_notification(app, same_event_id):
    def deliver(i: int) -> int:
        payload = sw_webhook(event_id="race" if same_event_id else f"race-{i}")
        return post_sw(app.test_client(), payload).status_code

    assert race(deliver) == [200] * 24
    assert count(app, Notification) == 1


# --- parsing and rendering -----------------------------------------------------------------


def test_parsing_takes_the_delivery_address_phone_tracking_and_goods_only():
    [event] = parse_order(sw_order())
    assert event.phones == ("0151 23456789", "+49 151 00000000")
    assert event.country == "DE"
    assert event.carrier == "DHL Paket"
    assert (
        event.tracking_url
        == "https://www.dhl.de/de/privatkunden.html?piececode=00340434161094042557"
    )
    assert [(i.name, i.quantity) for i in event.items] == [("Leinenhemd", 2)]
    assert event.locale == "de-DE"


def test_deliveries_not_yet_shipped_are_left_out():
    order = sw_order()
    open_delivery = copy.deepcopy(order["deliveries"][0])
    open_delivery["id"] = "still-open"
    open_delivery["stateMachineState"]["technicalName"] = "open"
    order["deliveries"].append(open_delivery)
    assert [e.shipment_id for e in parse_order(order)] == [DELIVERY_ID]


def test_a_realistic_order_renders_the_default_german_template(app, client, capsys):
    post_sw(client, sw_webhook())
    Worker(app).run_until_idle()
    [row] = notifications(app)
    assert (row.status, row.phone, row.locale) == ("sent", "+4915123456789", "de")
    assert row.message == (
        "Beispiel Shop: Ihre Bestellung 10042 ist unterwegs mit DHL Paket. Sendung verfolgen: "
        "https://www.dhl.de/de/privatkunden.html?piececode=00340434161094042557"
    )
    assert row.message in capsys.readouterr().out


def test_public_shopware_samples_are_answered_200_when_present(app, client):
    """../shared/samples has no Shopware payload yet; any that appears must be handled."""
    from tests.conftest import SHARED

    samples = sorted((SHARED / "samples" / "shopware").glob("*.json"))
    if not samples:
        pytest.skip("no public Shopware sample in ../shared/samples (the tests above use the docs)")
    for path in samples:
        assert post_sw(client, path.read_bytes()).status_code == 200, path.name
