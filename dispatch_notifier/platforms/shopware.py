"""Shopware 6 (app system): `state_enter.order_delivery.state.shipped` and `…shipped_partially`.

Signed with `shopware-shop-signature` (hex HMAC-SHA256 of the raw body); one SMS per order delivery.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from dispatch_notifier.events import DispatchEvent, Item
from dispatch_notifier.platforms import (
    MalformedPayload,
    Parsed,
    Platform,
    SignatureError,
    hmac_sha256,
    load_json_object,
    register,
    text,
)

if TYPE_CHECKING:
    from dispatch_notifier.models import Source

SIGNATURE_HEADER = "shopware-shop-signature"
DISPATCH_EVENTS = {
    "state_enter.order_delivery.state.shipped",
    "state_enter.order_delivery.state.shipped_partially",
}
SHIPPED_STATES = {"shipped", "shipped_partially"}
# Line item types that are not goods (discounts, credits) stay out of the item list.
NON_GOODS = {"promotion", "credit", "discount", "container"}


class Shopware(Platform):
    name = "shopware"
    title = "Shopware 6"

    def verify(self, body: bytes, headers: Mapping[str, str], secrets: list[str]) -> None:
        signature = text(headers.get(SIGNATURE_HEADER))
        if not signature:
            raise SignatureError(f"missing {SIGNATURE_HEADER} header")
        for secret in secrets:
            if hmac.compare_digest(hmac_sha256(secret, body).hex(), signature.lower()):
                return
        raise SignatureError(f"{SIGNATURE_HEADER} does not match")

    def delivery_id(self, body: bytes, headers: Mapping[str, str]) -> str | None:
        # source.eventId is stable across retries (6.4.11+); newer versions also send a header.
        source = load_json_object(body).get("source")
        event_id = text(source.get("eventId")) if isinstance(source, dict) else None
        return event_id or text(headers.get("X-Shopware-Event-Id"))

    def parse(self, body: bytes, headers: Mapping[str, str], source: Source) -> Parsed:
        data = load_json_object(body)
        inner = data.get("data")
        if not isinstance(inner, dict):
            raise MalformedPayload("a Shopware webhook has a 'data' object")
        event_name = text(inner.get("event"))
        if event_name not in DISPATCH_EVENTS:
            return Parsed(event_name, ignored=f"event {event_name or '(none)'} is not a dispatch")
        payload = inner.get("payload")
        order = payload.get("order") if isinstance(payload, dict) else None
        if not isinstance(order, dict):
            raise MalformedPayload("'data.payload.order' must be an object")
        events = parse_order(order)
        if not events:
            return Parsed(event_name, ignored="no delivery of the order is in a shipped state")
        return Parsed(event_name, events)


def parse_order(order: dict[str, Any]) -> list[DispatchEvent]:
    """One event per shipped delivery of a Shopware order entity (camelCase JSON)."""
    order_id = text(order.get("id"))
    if not order_id:
        raise MalformedPayload("an order needs 'id'")
    deliveries = [
        d for d in order.get("deliveries") or [] if isinstance(d, dict) and text(d.get("id"))
    ]
    shipped = [d for d in deliveries if _state(d) in SHIPPED_STATES]
    # Associations can be incomplete: without state information, every delivery counts.
    chosen = shipped or [d for d in deliveries if _state(d) is None]
    if deliveries and not chosen:
        return []
    customer = order.get("orderCustomer") if isinstance(order.get("orderCustomer"), dict) else {}
    billing = _billing_address(order)
    items = tuple(
        Item(str(li.get("label") or "item"), _quantity(li.get("quantity")))
        for li in order.get("lineItems") or []
        if isinstance(li, dict) and li.get("type") not in NON_GOODS and not li.get("parentId")
    )
    common = {
        "order_id": order_id,
        "order_number": text(order.get("orderNumber")) or order_id,
        "locale": _locale(order),
        "items": items,
    }
    if not chosen:
        # No delivery in the payload: the order itself is the shipment (one SMS per order).
        return [_event(common, order_id, {}, customer, billing)]
    return [_event(common, text(d.get("id")) or order_id, d, customer, billing) for d in chosen]


def _event(
    common: dict[str, Any],
    shipment_id: str,
    delivery: dict[str, Any],
    customer: dict[str, Any],
    billing: dict[str, Any],
) -> DispatchEvent:
    address = _dict(delivery.get("shippingOrderAddress"))
    first = text(address.get("firstName")) or text(customer.get("firstName"))
    last = text(address.get("lastName")) or text(customer.get("lastName"))
    codes = [text(c) for c in delivery.get("trackingCodes") or [] if text(c)]
    method = _dict(delivery.get("shippingMethod"))
    translated = _dict(method.get("translated"))
    url_template = text(translated.get("trackingUrl")) or text(method.get("trackingUrl"))
    tracking_url = None
    if codes and url_template:
        # Shopware's tracking URL has a %s placeholder for the code.
        tracking_url = url_template.replace("%s", codes[-1]) if "%s" in url_template else None
    country = _dict(address.get("country")) or _dict(billing.get("country"))
    return DispatchEvent(
        shipment_id=shipment_id,
        customer_name=" ".join(p for p in (first, last) if p) or None,
        first_name=first,
        last_name=last,
        phones=tuple(
            p for p in (text(address.get("phoneNumber")), text(billing.get("phoneNumber"))) if p
        ),
        country=text(country.get("iso")),
        carrier=text(translated.get("name")) or text(method.get("name")),
        tracking_number=codes[-1] if codes else None,
        tracking_url=tracking_url,
        **common,
    )


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _state(delivery: dict[str, Any]) -> str | None:
    return text(_dict(delivery.get("stateMachineState")).get("technicalName"))


def _billing_address(order: dict[str, Any]) -> dict[str, Any]:
    billing = _dict(order.get("billingAddress"))
    if billing:
        return billing
    for address in order.get("addresses") or []:
        if isinstance(address, dict) and address.get("id") == order.get("billingAddressId"):
            return address
    return {}


def _locale(order: dict[str, Any]) -> str | None:
    code = text(_dict(_dict(order.get("language")).get("locale")).get("code"))
    return code  # e.g. "de-DE"; template lookup falls back from de-DE to de


def _quantity(value: Any) -> int:
    try:
        return max(1, int(value))
    except (TypeError, ValueError):
        return 1


SHOPWARE = register(Shopware())
