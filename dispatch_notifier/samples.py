"""Sample data: the template preview context and a signed sample Shopify dispatch for `simulate`.

Invented values only (example.com shop, a valid-looking UK mobile); no customer data.
"""

from __future__ import annotations

import base64
import json
import uuid
from typing import Any

from dispatch_notifier.events import DispatchEvent, Item, template_context
from dispatch_notifier.platforms import hmac_sha256

SAMPLE_EVENT = DispatchEvent(
    order_id="5501234567890",
    shipment_id="4401234567890",
    order_number="1001",
    customer_name="Alex Example",
    first_name="Alex",
    last_name="Example",
    phones=("+447911123456",),
    country="GB",
    carrier="Royal Mail",
    tracking_number="RM123456785GB",
    tracking_url="https://track.example.com/RM123456785GB",
    items=(Item("Linen shirt", 1), Item("Canvas tote", 2)),
    shop_name="Example Shop",
)


def sample_context(locale: str = "en", event: DispatchEvent | None = None) -> dict[str, Any]:
    return template_context(event or SAMPLE_EVENT, shop_name="Example Shop", locale=locale)


def shopify_fulfillment(phone: str, order_number: str = "1001") -> dict[str, Any]:
    """A `fulfillments/create` body in Shopify's documented shape, with fresh ids."""
    fulfillment_id = uuid.uuid4().int % 10**13
    return {
        "id": fulfillment_id,
        "order_id": 5_500_000_000_000 + int(order_number) if order_number.isdigit() else 1,
        "name": f"#{order_number}.1",
        "status": "success",
        "email": "alex@example.com",
        "tracking_company": "Royal Mail",
        "tracking_number": "RM123456785GB",
        "tracking_numbers": ["RM123456785GB"],
        "tracking_url": "https://track.example.com/RM123456785GB",
        "tracking_urls": ["https://track.example.com/RM123456785GB"],
        "destination": {
            "first_name": "Alex",
            "last_name": "Example",
            "name": "Alex Example",
            "phone": phone,
            "country_code": "GB",
        },
        "line_items": [{"id": 1, "title": "Linen shirt", "quantity": 1}],
    }


def signed_shopify_fulfillment(
    secret: str, phone: str, order_number: str = "1001"
) -> tuple[bytes, dict[str, str]]:
    """Body and headers of a correctly signed `fulfillments/create` delivery."""
    body = json.dumps(shopify_fulfillment(phone, order_number)).encode()
    headers = {
        "Content-Type": "application/json",
        "X-Shopify-Topic": "fulfillments/create",
        "X-Shopify-Hmac-Sha256": base64.b64encode(hmac_sha256(secret, body)).decode(),
        "X-Shopify-Webhook-Id": str(uuid.uuid4()),
        "X-Shopify-Shop-Domain": "example.myshopify.com",
    }
    return body, headers
