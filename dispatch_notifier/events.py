"""`DispatchEvent`: what every platform's payload is parsed into, and the template context.

One shape for all platforms means one template serves every shop.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields, replace
from typing import Any

DISPATCHED = "dispatched"


@dataclass(frozen=True)
class Item:
    name: str
    quantity: int = 1


@dataclass(frozen=True)
class DispatchEvent:
    """A shipment left the warehouse. `order_id` + `shipment_id` + `kind` identify it."""

    order_id: str
    shipment_id: str
    order_number: str
    kind: str = DISPATCHED
    customer_name: str | None = None
    first_name: str | None = None
    last_name: str | None = None
    phones: tuple[str, ...] = ()
    country: str | None = None
    locale: str | None = None
    carrier: str | None = None
    tracking_number: str | None = None
    tracking_url: str | None = None
    items: tuple[Item, ...] = ()
    shop_name: str | None = None
    # Id-only platforms (BigCommerce) leave the details to be fetched by the worker.
    needs_enrichment: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        # Shallow and explicit: dataclasses.asdict deep-copies every value, which cost more than
        # the rest of serialising on the webhook path.
        data = {f.name: getattr(self, f.name) for f in _FIELDS}
        data["items"] = [{"name": item.name, "quantity": item.quantity} for item in self.items]
        return json.dumps(data, separators=(",", ":"), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> DispatchEvent:
        data = json.loads(text)
        data["phones"] = tuple(data.get("phones") or ())
        data["items"] = tuple(Item(**item) for item in data.get("items") or ())
        return cls(**data)

    def with_changes(self, **changes: Any) -> DispatchEvent:
        return replace(self, **changes)


_FIELDS = fields(DispatchEvent)


# The variables a template may use, with a description for the editor.
TEMPLATE_VARIABLES: dict[str, str] = {
    "shop_name": "the shop's name",
    "order_number": "the order number the customer sees, e.g. 1001",
    "customer_name": "the customer's full name",
    "first_name": "the customer's first name",
    "last_name": "the customer's last name",
    "carrier": "the carrier, e.g. Royal Mail",
    "tracking_number": "the tracking number",
    "tracking_url": "the tracking link",
    "items": "the items shipped: a list of {name, quantity}",
    "item_count": "how many items were shipped",
    "country": "the shipping country code, e.g. GB",
    "locale": "the message language, e.g. en",
}


def template_context(event: DispatchEvent, *, shop_name: str | None, locale: str) -> dict[str, Any]:
    """The flat, plain-value context a template is rendered with (never ORM objects)."""
    first = event.first_name or (event.customer_name or "").split(" ")[0] or None
    return {
        "shop_name": event.shop_name or shop_name or "",
        "order_number": event.order_number,
        "customer_name": event.customer_name or "",
        "first_name": first or "",
        "last_name": event.last_name or "",
        "carrier": event.carrier or "",
        "tracking_number": event.tracking_number or "",
        "tracking_url": event.tracking_url or "",
        "items": [{"name": item.name, "quantity": item.quantity} for item in event.items],
        "item_count": sum(item.quantity for item in event.items),
        "country": event.country or "",
        "locale": locale,
    }
