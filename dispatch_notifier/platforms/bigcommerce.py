"""BigCommerce: `store/shipment/created`, verified as Standard Webhooks, enriched through the API.

The webhook carries only ids, so the worker fetches the shipment, order and products with the
source's API credentials (`store_hash`, `access_token`, optional `api_url`) before rendering.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import requests
from requests.adapters import HTTPAdapter

from dispatch_notifier.events import DispatchEvent, Item
from dispatch_notifier.platforms import (
    EnrichmentError,
    MalformedPayload,
    Parsed,
    Platform,
    load_json_object,
    pretty_carrier,
    register,
    text,
)
from dispatch_notifier.platforms.standard import verify_standard_webhook

if TYPE_CHECKING:
    from dispatch_notifier.models import Source

log = logging.getLogger(__name__)

SHIPMENT_CREATED = "store/shipment/created"
DEFAULT_API_URL = "https://api.bigcommerce.com"
# (connect, read) seconds. This runs in the worker: a slow API delays one SMS, never a webhook.
TIMEOUT = (3.05, 10.0)

_session: requests.Session | None = None
_session_lock = threading.Lock()


def http() -> requests.Session:
    """One pooled session per process, shared by the worker's send threads."""
    global _session
    with _session_lock:
        if _session is None:
            session = requests.Session()
            # Retries are the outbox's job (with backoff and bounds), not urllib3's.
            adapter = HTTPAdapter(pool_connections=4, pool_maxsize=16, max_retries=0)
            session.mount("https://", adapter)
            session.mount("http://", adapter)
            session.headers["Accept"] = "application/json"
            _session = session
        return _session


class BigCommerce(Platform):
    name = "bigcommerce"
    title = "BigCommerce"
    credential_keys = ("store_hash", "access_token")
    secret_is_generated = False  # it is the app's client secret, shown by BigCommerce

    def verify(self, body: bytes, headers: Mapping[str, str], secrets: list[str]) -> None:
        # BigCommerce's own example passes base64(client secret) to the Standard Webhooks
        # library, which decodes it again: the HMAC key is the client secret's bytes.
        verify_standard_webhook(body, headers, [s.encode() for s in secrets if s])

    def delivery_id(self, body: bytes, headers: Mapping[str, str]) -> str | None:
        # "If a hook fires twice for the same event, both request bodies rely on the same hash."
        return text(load_json_object(body).get("hash")) or text(headers.get("webhook-id"))

    def parse(self, body: bytes, headers: Mapping[str, str], source: Source) -> Parsed:
        data = load_json_object(body)
        scope = text(data.get("scope"))
        if scope != SHIPMENT_CREATED:
            return Parsed(scope, ignored=f"scope {scope or '(none)'} is not a dispatch")
        inner = data.get("data")
        if not isinstance(inner, dict):
            raise MalformedPayload("a BigCommerce webhook has a 'data' object")
        shipment_id, order_id = text(inner.get("id")), text(inner.get("orderId"))
        if not shipment_id or not order_id:
            raise MalformedPayload("'data' needs the shipment 'id' and 'orderId'")
        store_hash = _producer_store(data.get("producer"))
        expected = text(source.api_credentials.get("store_hash"))
        if store_hash and expected and store_hash != expected:
            # One app secret signs for every store that installed the app: fetching this order
            # with another store's credentials would text somebody else's customer.
            return Parsed(
                scope, ignored=f"from store {store_hash}, but this source is store {expected}"
            )
        event = DispatchEvent(
            order_id=order_id,
            shipment_id=shipment_id,
            order_number=order_id,  # BigCommerce shows customers the order id
            needs_enrichment=True,
            extra={"store_hash": store_hash} if store_hash else {},
        )
        return Parsed(scope, [event])

    def enrich(self, event: DispatchEvent, source: Source) -> DispatchEvent:
        credentials = source.api_credentials
        store_hash = text(credentials.get("store_hash"))
        token = text(credentials.get("access_token"))
        if not store_hash or not token:
            raise EnrichmentError(
                f"source {source.name} has no BigCommerce API credentials: run `dispatch-notifier "
                f"sources update {source.name} --credential store_hash=… "
                "--credential access_token=…`",
                retryable=False,
            )
        api = (text(credentials.get("api_url")) or DEFAULT_API_URL).rstrip("/")
        base = f"{api}/stores/{store_hash}/v2/orders/{event.order_id}"
        shipment = _get(f"{base}/shipments/{event.shipment_id}", token, "shipment", event)
        order = _get(base, token, "order", event)
        try:
            products = _get(f"{base}/products", token, "order products", event)
        except EnrichmentError as exc:
            # Item names are a nicety the default message does not use; never hold the SMS for them.
            log.warning("order %s: item names unavailable: %s", event.order_id, exc)
            products = []
        return merge(event, _dict(shipment), _dict(order), products)


def merge(
    event: DispatchEvent, shipment: dict[str, Any], order: dict[str, Any], products: Any
) -> DispatchEvent:
    """The event with the fetched shipment and order details filled in."""
    ship_to = _dict(shipment.get("shipping_address"))
    bill_to = _dict(order.get("billing_address")) or _dict(shipment.get("billing_address"))
    person = ship_to if text(ship_to.get("first_name")) else bill_to
    first, last = text(person.get("first_name")), text(person.get("last_name"))
    names = {
        text(p.get("id")): text(p.get("name"))
        for p in (products if isinstance(products, list) else [])
        if isinstance(p, dict)
    }
    items = tuple(
        Item(names.get(text(i.get("order_product_id"))) or "item", _quantity(i.get("quantity")))
        for i in shipment.get("items") or []
        if isinstance(i, dict)
    )
    return event.with_changes(
        needs_enrichment=False,
        order_number=text(order.get("id")) or event.order_number,
        customer_name=" ".join(p for p in (first, last) if p) or None,
        first_name=first,
        last_name=last,
        phones=tuple(p for p in (text(ship_to.get("phone")), text(bill_to.get("phone"))) if p),
        country=text(ship_to.get("country_iso2")) or text(bill_to.get("country_iso2")),
        locale=text(order.get("customer_locale")),
        carrier=pretty_carrier(shipment.get("tracking_carrier"))
        or pretty_carrier(shipment.get("shipping_provider")),
        tracking_number=text(shipment.get("tracking_number")),
        tracking_url=text(shipment.get("tracking_link"))
        or text(shipment.get("generated_tracking_link")),
        items=items,
    )


def _get(url: str, token: str, what: str, event: DispatchEvent) -> Any:
    """GET one API resource; EnrichmentError says whether trying again can help."""
    subject = f"BigCommerce {what} (order {event.order_id}, shipment {event.shipment_id})"
    try:
        response = http().get(url, headers={"X-Auth-Token": token}, timeout=TIMEOUT)
    except requests.RequestException as exc:
        # A GET is safe to repeat, so even a read timeout is simply retried.
        raise EnrichmentError(f"{subject}: {type(exc).__name__}", retryable=True) from None
    status = response.status_code
    if status in (401, 403):
        raise EnrichmentError(
            f"{subject}: BigCommerce refused the API token (HTTP {status}); check the source's "
            "access_token and that it may read orders",
            retryable=False,
        )
    if status == 404:
        raise EnrichmentError(f"{subject}: not found (HTTP 404)", retryable=False)
    if status == 429 or status >= 500:
        raise EnrichmentError(f"{subject}: HTTP {status}, will retry", retryable=True)
    if status == 204:
        return []
    if status != 200:
        raise EnrichmentError(f"{subject}: unexpected HTTP {status}", retryable=False)
    try:
        return response.json()
    except ValueError:
        raise EnrichmentError(f"{subject}: the answer is not JSON", retryable=True) from None


def _producer_store(producer: Any) -> str | None:
    """`stores/abc123` -> `abc123` (None for the docs' literal `stores/{store_hash}`)."""
    value = text(producer) or ""
    if not value.startswith("stores/"):
        return None
    store = value.removeprefix("stores/")
    return store if store and "{" not in store else None


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _quantity(value: Any) -> int:
    try:
        return max(1, int(value))
    except (TypeError, ValueError):
        return 1


BIGCOMMERCE = register(BigCommerce())
