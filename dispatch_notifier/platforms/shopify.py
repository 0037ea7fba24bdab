"""Shopify: `fulfillments/create`, `fulfillments/update` and `orders/fulfilled` webhooks.

Signed with `X-Shopify-Hmac-Sha256` (base64 HMAC-SHA256 of the raw body); one SMS per fulfillment.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from dispatch_notifier.events import DispatchEvent, Item
from dispatch_notifier.platforms import (
    MalformedPayload,
    Parsed,
    Platform,
    as_dict,
    as_list,
    first_text,
    load_json_object,
    register,
    text,
    verify_hmac_base64,
)

if TYPE_CHECKING:
    from dispatch_notifier.models import Source

FULFILLMENT_TOPICS = {"fulfillments/create", "fulfillments/update"}
ORDER_TOPICS = {"orders/fulfilled"}


class Shopify(Platform):
    name = "shopify"
    title = "Shopify"

    def verify(self, body: bytes, headers: Mapping[str, str], secrets: list[str]) -> None:
        verify_hmac_base64(
            body, headers.get("X-Shopify-Hmac-Sha256"), secrets, "X-Shopify-Hmac-Sha256"
        )

    def delivery_id(self, body: bytes, headers: Mapping[str, str]) -> str | None:
        return text(headers.get("X-Shopify-Webhook-Id"))

    def parse(self, body: bytes, headers: Mapping[str, str], source: Source) -> Parsed:
        data = load_json_object(body)
        topic = text(headers.get("X-Shopify-Topic"))
        shop = text(headers.get("X-Shopify-Shop-Domain"))
        if topic in FULFILLMENT_TOPICS:
            event = parse_fulfillment(data, order=None, shop_domain=shop)
            if event.needs_enrichment:
                return Parsed(topic, ignored="fulfillment is not for shipping")
            return Parsed(topic, [event])
        if topic in ORDER_TOPICS:
            events = parse_fulfilled_order(data, shop_domain=shop)
            if not events:
                return Parsed(topic, ignored="the order has no fulfillments")
            return Parsed(topic, events)
        return Parsed(topic, ignored=f"topic {topic or '(none)'} is not a dispatch")


def parse_fulfillment(
    data: dict[str, Any], order: dict[str, Any] | None, shop_domain: str | None
) -> DispatchEvent:
    """A Shopify Fulfillment resource (optionally inside its order) as a DispatchEvent."""
    fulfillment_id = text(data.get("id"))
    order = order or {}
    order_id = text(data.get("order_id")) or text(order.get("id"))
    if not fulfillment_id or not order_id:
        raise MalformedPayload("a fulfillment needs 'id' and 'order_id'")
    destination = data.get("destination") or order.get("shipping_address") or {}
    if not isinstance(destination, dict):
        raise MalformedPayload("'destination' must be an object")
    customer = as_dict(order.get("customer"))
    billing = as_dict(order.get("billing_address"))
    first = text(destination.get("first_name")) or text(customer.get("first_name"))
    last = text(destination.get("last_name")) or text(customer.get("last_name"))
    name = text(destination.get("name")) or " ".join(p for p in (first, last) if p) or None
    phones = tuple(
        p
        for p in (
            text(destination.get("phone")),
            text(order.get("phone")),
            text(customer.get("phone")),
            text(billing.get("phone")),
        )
        if p
    )
    return DispatchEvent(
        order_id=order_id,
        shipment_id=fulfillment_id,
        order_number=_order_number(data, order),
        customer_name=name,
        first_name=first,
        last_name=last,
        phones=phones,
        country=text(destination.get("country_code")),
        locale=text(order.get("customer_locale")),
        carrier=text(data.get("tracking_company")),
        tracking_number=text(data.get("tracking_number"))
        or first_text(data.get("tracking_numbers")),
        tracking_url=text(data.get("tracking_url")) or first_text(data.get("tracking_urls")),
        items=tuple(_item(li) for li in as_list(data.get("line_items")) if isinstance(li, dict)),
        shop_name=None,
        extra={"shop_domain": shop_domain} if shop_domain else {},
    )


def parse_fulfilled_order(data: dict[str, Any], shop_domain: str | None) -> list[DispatchEvent]:
    """`orders/fulfilled`: one event per fulfillment, keyed exactly as fulfillments/create."""
    if not text(data.get("id")):
        raise MalformedPayload("an order needs 'id'")
    fulfillments = data.get("fulfillments") or []
    if not isinstance(fulfillments, list):
        raise MalformedPayload("'fulfillments' must be a list")
    return [
        parse_fulfillment({**f, "order_id": data["id"]}, order=data, shop_domain=shop_domain)
        for f in fulfillments
        if isinstance(f, dict) and f.get("status") not in ("cancelled", "error", "failure")
    ]


def _item(line_item: dict[str, Any]) -> Item:
    name = text(line_item.get("title")) or text(line_item.get("name")) or "item"
    quantity = line_item.get("quantity")
    return Item(name, quantity if isinstance(quantity, int) and quantity > 0 else 1)


def _order_number(fulfillment: dict[str, Any], order: dict[str, Any]) -> str:
    """The number the customer knows: order_number, or the name without '#' and '.N' suffix."""
    number = text(order.get("order_number"))
    if number:
        return number
    name = text(order.get("name")) or text(fulfillment.get("name")) or ""
    name = name.lstrip("#")
    # A fulfillment's name is the order's name plus ".1", ".2", ...
    if "." in name and not order:
        name = name.rsplit(".", 1)[0]
    return name or str(fulfillment.get("order_id"))


SHOPIFY = register(Shopify())
