"""WooCommerce: `order.updated`/`order.created` with `status == "completed"`, one SMS per order.

Signed with `X-WC-Webhook-Signature` (base64 HMAC-SHA256 of the raw body); the unsigned activation
ping (`webhook_id=N`) is answered 200.
"""

from __future__ import annotations

import html
import json
import logging
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from dispatch_notifier.events import DispatchEvent, Item
from dispatch_notifier.platforms import (
    MalformedPayload,
    Parsed,
    Platform,
    load_json_object,
    pretty_carrier,
    register,
    text,
    verify_hmac_base64,
)

if TYPE_CHECKING:
    from dispatch_notifier.models import Source

log = logging.getLogger(__name__)

ORDER_TOPICS = {"order.updated", "order.created"}
DISPATCH_STATUS = "completed"
# WooCommerce re-sends order.updated on every later save: the order, not the delivery, is the key.
SHIPMENT_KEY = "completed"
SIGNATURE_HEADER = "X-WC-Webhook-Signature"
TRACKING_META_KEY = "_wc_shipment_tracking_items"
PING_BODY = re.compile(rb"^webhook_id=\d{1,20}$")


class WooCommerce(Platform):
    name = "woocommerce"
    title = "WooCommerce"

    def unsigned_ping(self, body: bytes, headers: Mapping[str, str]) -> Parsed | None:
        # WooCommerce checks a new webhook's URL with an unsigned form post and wants exactly 200.
        if headers.get(SIGNATURE_HEADER) or not PING_BODY.match(body.strip()):
            return None
        return Parsed("webhook.ping", ping=True)

    def verify(self, body: bytes, headers: Mapping[str, str], secrets: list[str]) -> None:
        # WooCommerce HTML-decodes the stored secret before signing; accept either form.
        keys = []
        for secret in secrets:
            keys += [secret] if html.unescape(secret) == secret else [secret, html.unescape(secret)]
        verify_hmac_base64(body, headers.get(SIGNATURE_HEADER), keys, SIGNATURE_HEADER)

    def delivery_id(self, body: bytes, headers: Mapping[str, str]) -> str | None:
        # X-WC-Webhook-Delivery-ID is new on every attempt: logged in parse, never a dedupe key.
        return None

    def parse(self, body: bytes, headers: Mapping[str, str], source: Source) -> Parsed:
        topic = text(headers.get("X-WC-Webhook-Topic"))
        log.info(
            "woocommerce delivery %s (webhook %s, topic %s)",
            text(headers.get("X-WC-Webhook-Delivery-ID")) or "-",
            text(headers.get("X-WC-Webhook-ID")) or "-",
            topic or "-",
        )
        data = load_json_object(body)
        if topic not in ORDER_TOPICS:
            return Parsed(topic, ignored=f"topic {topic or '(none)'} is not a dispatch")
        status = text(data.get("status"))
        if status != DISPATCH_STATUS:
            return Parsed(topic, ignored=f"order status {status or '(none)'} is not completed")
        return Parsed(topic, [parse_order(data)])


def parse_order(order: dict[str, Any]) -> DispatchEvent:
    """A completed WooCommerce v3 REST order as a DispatchEvent."""
    order_id = text(order.get("id"))
    if not order_id:
        raise MalformedPayload("an order needs 'id'")
    shipping = _object(order, "shipping")
    billing = _object(order, "billing")
    # The name comes from the shipping address when it has one (digital orders have none).
    has_name = text(shipping.get("first_name")) or text(shipping.get("last_name"))
    person = shipping if has_name else billing
    first, last = text(person.get("first_name")), text(person.get("last_name"))
    tracking = _tracking(order.get("meta_data"))
    return DispatchEvent(
        order_id=order_id,
        shipment_id=SHIPMENT_KEY,
        order_number=text(order.get("number")) or order_id,
        customer_name=" ".join(p for p in (first, last) if p) or None,
        first_name=first,
        last_name=last,
        phones=tuple(p for p in (text(shipping.get("phone")), text(billing.get("phone"))) if p),
        country=text(shipping.get("country")) or text(billing.get("country")),
        locale=_meta(order.get("meta_data"), "wpml_language"),
        carrier=tracking.get("carrier"),
        tracking_number=tracking.get("number"),
        tracking_url=tracking.get("url"),
        items=tuple(
            Item(html.unescape(str(li.get("name") or "item")), _quantity(li.get("quantity")))
            for li in order.get("line_items") or []
            if isinstance(li, dict)
        ),
    )


def _object(order: dict[str, Any], key: str) -> dict[str, Any]:
    value = order.get(key) or {}
    if not isinstance(value, dict):
        raise MalformedPayload(f"'{key}' must be an object")
    return value


def _quantity(value: Any) -> int:
    try:
        return max(1, int(value))
    except (TypeError, ValueError):
        return 1


def _meta(meta_data: Any, key: str) -> Any:
    for entry in meta_data if isinstance(meta_data, list) else []:
        if isinstance(entry, dict) and entry.get("key") == key:
            return entry.get("value")
    return None


def _tracking(meta_data: Any) -> dict[str, str | None]:
    """The newest entry of the Shipment Tracking extension's meta, if the shop uses it."""
    items = _meta(meta_data, TRACKING_META_KEY)
    if isinstance(items, str):
        try:
            items = json.loads(items)
        except json.JSONDecodeError:
            return {}
    if isinstance(items, dict):
        items = list(items.values())
    entries = [i for i in items or [] if isinstance(i, dict) and text(i.get("tracking_number"))]
    if not entries:
        return {}
    entry = entries[-1]  # the extension appends; the last one is the latest shipment
    return {
        "carrier": text(entry.get("custom_tracking_provider"))
        or pretty_carrier(entry.get("tracking_provider")),
        "number": text(entry.get("tracking_number")),
        "url": text(entry.get("custom_tracking_link")) or text(entry.get("tracking_link")),
    }


WOOCOMMERCE = register(WooCommerce())
