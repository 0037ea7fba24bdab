"""Property tests: the Shopify parser turns any JSON into events or a 400, never a crash."""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dispatch_notifier.events import DispatchEvent
from dispatch_notifier.platforms import MalformedPayload
from dispatch_notifier.platforms.shopify import SHOPIFY

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)
fulfillment_like = st.fixed_dictionaries(
    {},
    optional={
        "id": st.integers() | st.text(max_size=10) | st.none(),
        "order_id": st.integers() | st.text(max_size=10) | st.none(),
        "name": st.text(max_size=12),
        "status": st.sampled_from(["success", "cancelled", "pending"]) | st.text(max_size=5),
        "destination": json_values,
        "tracking_numbers": json_values,
        "tracking_urls": json_values,
        "line_items": json_values,
        "fulfillments": json_values,
        "order_number": json_values,
    },
)


class _Source:
    name = "shopify"


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(
    fulfillment_like | json_values,
    st.sampled_from(["fulfillments/create", "fulfillments/update", "orders/fulfilled", "x"]),
)
def test_any_json_parses_to_events_or_a_malformed_payload_error(payload, topic):
    body = json.dumps(payload).encode()
    try:
        parsed = SHOPIFY.parse(body, {"X-Shopify-Topic": topic}, _Source())  # type: ignore[arg-type]
    except MalformedPayload:
        return
    for event in parsed.events:
        assert isinstance(event, DispatchEvent)
        assert event.order_id and event.shipment_id
        assert DispatchEvent.from_json(event.to_json()) == event
