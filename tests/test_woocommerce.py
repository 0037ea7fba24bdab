"""WooCommerce receiver: the activation ping, signatures, completed orders, one SMS per order."""

from __future__ import annotations

import json
from typing import Any

import pytest

from dispatch_notifier.models import Delivery, Notification
from dispatch_notifier.platforms.woocommerce import parse_order
from dispatch_notifier.worker import Worker
from tests.platform_helpers import b64_hmac, body_of, count, notifications, public_sample, race

SECRET = "wc-test-secret"


@pytest.fixture
def app(app_factory):  # type: ignore[no-untyped-def]
    # DISPATCH_WOOCOMMERCE_SECRET creates the source named "woocommerce".
    return app_factory(WOOCOMMERCE_SECRET=SECRET)


def wc_order(order_id: int = 1234, status: str = "completed", **extra: Any) -> dict[str, Any]:
    """An `order.updated` body in the WooCommerce v3 REST order shape (our own values)."""
    order: dict[str, Any] = {
        "id": order_id,
        "number": str(order_id),
        "status": status,
        "billing": {
            "first_name": "Alex",
            "last_name": "Example",
            "country": "GB",
            "email": "alex@example.com",
            "phone": "+447911000000",
        },
        "shipping": {
            "first_name": "Sam",
            "last_name": "Example",
            "country": "GB",
            "phone": "07911 123456",
        },
        "meta_data": [
            {"id": 1, "key": "_order_stock_reduced", "value": "yes"},
            {
                "id": 2,
                "key": "_wc_shipment_tracking_items",
                "value": [
                    {
                        "tracking_provider": "royal-mail",
                        "custom_tracking_provider": "",
                        "custom_tracking_link": "",
                        "tracking_number": "RM123456785GB",
                        "date_shipped": "1764000000",
                        "tracking_id": "a1",
                    }
                ],
            },
        ],
        "line_items": [{"id": 1, "name": "Linen shirt &ndash; blue", "quantity": 2}],
    }
    order.update(extra)
    return order


def post_wc(client, payload, topic="order.updated", secret=SECRET, source="woocommerce", **headers):  # type: ignore[no-untyped-def]
    body = body_of(payload)
    all_headers = {
        "Content-Type": "application/json",
        "X-WC-Webhook-Topic": topic,
        "X-WC-Webhook-Resource": "order",
        "X-WC-Webhook-Event": topic.split(".")[-1],
        "X-WC-Webhook-ID": "7",
        "X-WC-Webhook-Delivery-ID": "d41d8cd98f00b204e9800998ecf8427e",
        "X-WC-Webhook-Signature": b64_hmac(secret, body),
        **headers,
    }
    return client.post(f"/webhooks/{source}", data=body, headers=all_headers)


# --- the activation ping -------------------------------------------------------------------


def test_the_unsigned_activation_ping_gets_exactly_200_and_is_recorded(app, client):
    response = client.post(
        "/webhooks/woocommerce",
        data=b"webhook_id=7",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 200
    assert response.json["status"] == "ping"
    assert count(app, Notification) == 0
    [delivery] = _deliveries(app)
    assert delivery.result == "ping"


def test_anything_else_unsigned_is_401(client):
    response = client.post("/webhooks/woocommerce", data=b"webhook_id=7&status=completed")
    assert response.status_code == 401
    assert response.json == {
        "error": "invalid_signature",
        "message": "missing X-WC-Webhook-Signature header",
    }


# --- signatures ----------------------------------------------------------------------------


def test_a_valid_completed_order_is_accepted(app, client):
    response = post_wc(client, wc_order())
    assert response.status_code == 200
    assert response.json["status"] == "accepted"
    [row] = notifications(app)
    assert (row.order_id, row.shipment_id, row.order_number) == ("1234", "completed", "1234")


def test_a_tampered_body_is_401_and_stores_nothing(app, client):
    body = body_of(wc_order())
    signature = b64_hmac(SECRET, body)
    response = client.post(
        "/webhooks/woocommerce",
        data=body.replace(b"07911 123456", b"07911 999999"),
        headers={"X-WC-Webhook-Topic": "order.updated", "X-WC-Webhook-Signature": signature},
    )
    assert response.status_code == 401
    assert response.json["error"] == "invalid_signature"
    assert count(app, Delivery) == 0


def test_a_wrong_secret_is_401(client):
    assert post_wc(client, wc_order(), secret="not-it").status_code == 401


def test_a_missing_signature_is_401(client):
    response = client.post(
        "/webhooks/woocommerce", json=wc_order(), headers={"X-WC-Webhook-Topic": "order.updated"}
    )
    assert response.status_code == 401
    assert "X-WC-Webhook-Signature" in response.json["message"]


def test_a_secret_with_html_entities_is_used_as_woocommerce_decodes_it(app_factory):
    app = app_factory(WOOCOMMERCE_SECRET="a&amp;b")
    response = post_wc(app.test_client(), wc_order(), secret="a&b")
    assert response.status_code == 200


# --- statuses and topics -------------------------------------------------------------------


@pytest.mark.parametrize("status", ["processing", "on-hold", "pending", "refunded", "cancelled"])
def test_other_statuses_are_acknowledged_and_ignored(app, client, status):
    response = post_wc(client, wc_order(status=status))
    assert response.status_code == 200
    assert response.json["status"] == "ignored"
    assert status in response.json["reason"]
    assert count(app, Notification) == 0


@pytest.mark.parametrize("topic", ["product.updated", "order.deleted", "customer.created"])
def test_non_order_topics_are_ignored(app, client, topic):
    response = post_wc(client, wc_order(), topic=topic)
    assert response.json["status"] == "ignored"
    assert count(app, Notification) == 0


def test_order_created_already_completed_is_a_dispatch(app, client):
    assert post_wc(client, wc_order(), topic="order.created").json["status"] == "accepted"


def test_a_body_that_is_not_a_json_object_is_400(client):
    assert post_wc(client, b"[1]").status_code == 400
    assert post_wc(client, b"{").json["error"] == "malformed_payload"


# --- idempotency ---------------------------------------------------------------------------


def test_later_saves_of_a_completed_order_send_one_sms(app, client, capsys):
    """WooCommerce re-sends order.updated on every save, each with a new delivery id."""
    for note in ("first", "note added", "address fixed"):
        response = post_wc(
            client,
            wc_order(customer_note=note),
            **{"X-WC-Webhook-Delivery-ID": f"delivery-{note}"},
        )
        assert response.status_code == 200
    assert response.json["status"] == "duplicate"
    assert count(app, Notification) == 1
    assert count(app, Delivery) == 3
    Worker(app).run_until_idle()
    assert capsys.readouterr().out.count("--- SMS") == 1


def test_an_identical_redelivery_is_a_duplicate(app, client):
    post_wc(client, wc_order())
    second = post_wc(client, wc_order())
    assert second.status_code == 200
    assert second.json["status"] == "duplicate"


def test_concurrent_identical_deliveries_make_one_notification(app):
    body = body_of(wc_order(9001))

    def deliver(i: int) -> int:
        return post_wc(app.test_client(), body).status_code

    assert race(deliver) == [200] * 24
    assert count(app, Notification) == 1


def test_two_orders_are_two_notifications(app, client):
    post_wc(client, wc_order(1))
    post_wc(client, wc_order(2))
    assert count(app, Notification) == 2


# --- parsing and rendering -----------------------------------------------------------------


def test_phone_is_shipping_then_billing_and_tracking_comes_from_the_extension():
    event = parse_order(wc_order())
    assert event.phones == ("07911 123456", "+447911000000")
    assert (event.carrier, event.tracking_number) == ("Royal Mail", "RM123456785GB")
    assert event.customer_name == "Sam Example"
    assert event.items[0].name == "Linen shirt – blue"


def test_without_shipping_phone_the_billing_phone_is_used():
    order = wc_order()
    del order["shipping"]["phone"]
    assert parse_order(order).phones == ("+447911000000",)


def test_without_the_tracking_extension_there_is_no_tracking():
    event = parse_order(wc_order(meta_data=[]))
    assert (event.carrier, event.tracking_number, event.tracking_url) == (None, None, None)


def test_a_custom_tracking_provider_and_link_are_used():
    order = wc_order()
    order["meta_data"][1]["value"][0].update(
        custom_tracking_provider="Parcel Co", custom_tracking_link="https://parcel.example/t/1"
    )
    event = parse_order(order)
    assert (event.carrier, event.tracking_url) == ("Parcel Co", "https://parcel.example/t/1")


def test_a_realistic_order_renders_the_default_template(app, client, capsys):
    order = wc_order()
    order["meta_data"][1]["value"][0]["custom_tracking_link"] = (
        "https://www.royalmail.com/track-your-item#/tracking-results/RM123456785GB"
    )
    post_wc(client, order)
    Worker(app).run_until_idle()
    [row] = notifications(app)
    assert row.status == "sent"
    assert row.phone == "+447911123456"
    assert row.message == (
        "Your order 1234 is on its way with Royal Mail. Track it: "
        "https://www.royalmail.com/track-your-item#/tracking-results/RM123456785GB"
    )
    assert row.message in capsys.readouterr().out


# --- the public sample (when ../shared is present) -----------------------------------------


def test_published_order_sample_is_accepted_and_skipped_for_its_fake_phone(app, client):
    body = public_sample("woocommerce", "order-updated-completed.json")
    response = post_wc(client, body)
    assert response.status_code == 200
    assert response.json["status"] == "accepted"
    Worker(app).run_until_idle()
    [row] = notifications(app)
    assert row.order_number == "727"
    # "(555) 555-5555" is not a real number: skipped with the reason, not sent.
    assert row.status == "skipped"
    assert row.error == "invalid phone number"


def test_published_order_sample_with_a_real_number_renders(app, client):
    order = json.loads(public_sample("woocommerce", "order-updated-completed.json"))
    order["billing"]["phone"] = "+1 415 555 2671"
    post_wc(client, order)
    Worker(app).run_until_idle()
    [row] = notifications(app)
    assert (row.status, row.phone) == ("sent", "+14155552671")
    assert row.message == "Your order 727 is on its way."


def _deliveries(app):  # type: ignore[no-untyped-def]
    from sqlalchemy import select

    from dispatch_notifier.db import get_db

    with get_db(app).session() as session:
        return list(session.scalars(select(Delivery)))


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("royal-mail", "Royal Mail"),
        ("usps", "USPS"),
        ("dhl-express", "DHL Express"),
        ("fedex", "FedEx"),
        ("DHL Paket", "DHL Paket"),
        ("custom", None),
        ("", None),
        (None, None),
    ],
)
def test_carrier_slugs_are_shown_as_customers_know_them(raw, shown):
    from dispatch_notifier.platforms import pretty_carrier

    assert pretty_carrier(raw) == shown
