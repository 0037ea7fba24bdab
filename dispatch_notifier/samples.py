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


# One invented dispatch per platform, shaped like what that platform's parser produces, so a
# template can be previewed with the values each connected shop really supplies.
PLATFORM_SAMPLES: dict[str, DispatchEvent] = {
    "shopify": SAMPLE_EVENT,
    "woocommerce": DispatchEvent(
        order_id="727",
        shipment_id="completed",
        order_number="727",
        customer_name="Jordan Sample",
        first_name="Jordan",
        last_name="Sample",
        phones=("07911 123456",),
        country="GB",
        locale="en",
        carrier=None,
        tracking_number=None,
        tracking_url=None,
        items=(Item("Ceramic mug", 2),),
        shop_name="Example Woo Shop",
    ),
    "bigcommerce": DispatchEvent(
        order_id="118",
        shipment_id="9",
        order_number="118",
        customer_name="Sam Placeholder",
        first_name="Sam",
        last_name="Placeholder",
        phones=("+447911123456",),
        country="GB",
        carrier="DPD",
        tracking_number="15501234567890",
        tracking_url="https://track.dpd.example/15501234567890",
        items=(Item("Wool scarf", 1),),
        shop_name="Example BigCommerce Store",
    ),
    "shopware": DispatchEvent(
        order_id="0190a1b2c3d4e5f6a7b8c9d0e1f2a3b4",
        shipment_id="0190a1b2c3d4e5f6a7b8c9d0e1f2a3b5",
        order_number="10042",
        customer_name="Kim Muster",
        first_name="Kim",
        last_name="Muster",
        phones=("+4915112345678",),
        country="DE",
        locale="de-DE",
        carrier="DHL",
        tracking_number="00340434161094042557",
        tracking_url="https://www.dhl.de/de/privatkunden/pakete-empfangen/verfolgen.html?piececode=00340434161094042557",
        items=(Item("Kaffeebecher", 1), Item("Untersetzer", 4)),
        shop_name="Beispiel Shop",
    ),
    "standard": DispatchEvent(
        order_id="A-2001",
        shipment_id="A-2001-1",
        order_number="A-2001",
        customer_name="Robin Demo",
        first_name="Robin",
        last_name="Demo",
        phones=("+447911123456",),
        country="GB",
        carrier="Evri",
        tracking_number="H01234567890123",
        tracking_url="https://www.evri.com/track/parcel/H01234567890123",
        items=(Item("Notebook", 3),),
        shop_name="Example Store",
    ),
}


def sample_for(platform: str) -> DispatchEvent:
    """The sample dispatch of `platform` (Shopify's for a platform without its own)."""
    return PLATFORM_SAMPLES.get(platform, SAMPLE_EVENT)
