"""Signed sample dispatches for every platform, for `dispatch-notifier simulate SOURCE`.

Invented values only (a valid-looking UK mobile, example.com links); fresh ids on every call, so
each simulation is a new shipment.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import uuid
from datetime import UTC, datetime

from standardwebhooks.webhooks import Webhook

from dispatch_notifier.samples import signed_shopify_fulfillment

TRACKING_URL = "https://track.example.com/RM123456785GB"


def signed_sample(
    platform: str, secret: str, phone: str, order_number: str = "1001"
) -> tuple[bytes, dict[str, str]]:
    """Body and headers of a correctly signed dispatch webhook for `platform`.

    Raises ValueError for platforms whose webhooks cannot be simulated offline.
    """
    if platform == "shopify":
        return signed_shopify_fulfillment(secret, phone=phone, order_number=order_number)
    fresh = uuid.uuid4().int % 10**9
    if platform == "woocommerce":
        body = json.dumps(_woocommerce_order(fresh, phone, order_number)).encode()
        signature = base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest())
        return body, {
            "Content-Type": "application/json",
            "X-WC-Webhook-Topic": "order.updated",
            "X-WC-Webhook-Signature": signature.decode(),
            "X-WC-Webhook-Delivery-ID": uuid.uuid4().hex,
        }
    if platform == "shopware":
        body = json.dumps(_shopware_webhook(phone, order_number)).encode()
        return body, {
            "Content-Type": "application/json",
            "shopware-shop-signature": hmac.new(secret.encode(), body, hashlib.sha256).hexdigest(),
        }
    if platform == "standard":
        body = json.dumps(_standard_event(fresh, phone, order_number)).encode()
        msg_id, now = f"msg_{uuid.uuid4().hex}", datetime.now(UTC)
        return body, {
            "Content-Type": "application/json",
            "webhook-id": msg_id,
            "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": Webhook(secret).sign(msg_id, now, body.decode()),
        }
    raise ValueError(
        f"{platform} webhooks carry only ids that are looked up in the shop's API, "
        "so they cannot be simulated; ship a test order in the shop instead"
    )


def _woocommerce_order(order_id: int, phone: str, order_number: str) -> dict[str, object]:
    return {
        "id": order_id,
        "number": order_number,
        "status": "completed",
        "billing": {"first_name": "Alex", "last_name": "Example", "country": "GB", "phone": phone},
        "shipping": {"first_name": "Alex", "last_name": "Example", "country": "GB"},
        "meta_data": [
            {
                "key": "_wc_shipment_tracking_items",
                "value": [
                    {
                        "tracking_provider": "royal-mail",
                        "tracking_number": "RM123456785GB",
                        "custom_tracking_link": TRACKING_URL,
                    }
                ],
            }
        ],
        "line_items": [{"name": "Linen shirt", "quantity": 1}],
    }


def _shopware_webhook(phone: str, order_number: str) -> dict[str, object]:
    order = {
        "id": uuid.uuid4().hex,
        "orderNumber": order_number,
        "orderCustomer": {"firstName": "Alex", "lastName": "Example"},
        "deliveries": [
            {
                "id": uuid.uuid4().hex,
                "trackingCodes": ["RM123456785GB"],
                "shippingOrderAddress": {
                    "firstName": "Alex",
                    "lastName": "Example",
                    "phoneNumber": phone,
                    "country": {"iso": "GB"},
                },
                "shippingMethod": {
                    "name": "Royal Mail",
                    "trackingUrl": "https://track.example.com/%s",
                },
                "stateMachineState": {"technicalName": "shipped"},
            }
        ],
        "lineItems": [{"label": "Linen shirt", "quantity": 1, "type": "product"}],
    }
    return {
        "data": {"payload": {"order": order}, "event": "state_enter.order_delivery.state.shipped"},
        "source": {"url": "https://shop.example.com", "eventId": uuid.uuid4().hex},
        "timestamp": int(datetime.now(UTC).timestamp()),
    }


def _standard_event(fresh: int, phone: str, order_number: str) -> dict[str, object]:
    return {
        "type": "shipment.dispatched",
        "timestamp": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        "data": {
            "order_number": order_number,
            "order_id": f"sim-{fresh}",
            "shipment_id": "1",
            "customer_name": "Alex Example",
            "phone": phone,
            "country": "GB",
            "carrier": "Royal Mail",
            "tracking_number": "RM123456785GB",
            "tracking_url": TRACKING_URL,
            "items": [{"name": "Linen shirt", "quantity": 1}],
        },
    }
