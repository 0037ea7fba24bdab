"""The generic `standard` platform: our documented dispatch event, signed as Standard Webhooks.

For any shop system without a module of its own; the body must match
`dispatch_notifier/schemas/dispatch-event.schema.json`, else `422` lists the problems.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import secrets as secrets_module
from collections.abc import Mapping
from functools import lru_cache
from importlib import resources
from typing import TYPE_CHECKING, Any

from jsonschema import Draft202012Validator
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from dispatch_notifier.events import DispatchEvent, Item
from dispatch_notifier.platforms import (
    InvalidEvent,
    Parsed,
    Platform,
    SignatureError,
    load_json_object,
    register,
    text,
)

if TYPE_CHECKING:
    from dispatch_notifier.models import Source

log = logging.getLogger(__name__)

DISPATCHED_TYPE = "shipment.dispatched"
SCHEMA_FILE = "dispatch-event.schema.json"
SECRET_PREFIX = "whsec_"
HEADERS = ("webhook-id", "webhook-timestamp", "webhook-signature")
MAX_PROBLEMS = 20

_LIBRARY_REASONS = {
    "Message timestamp too old": "webhook-timestamp is more than 5 minutes in the past",
    "Message timestamp too new": "webhook-timestamp is more than 5 minutes in the future",
    "Invalid Signature Headers": "webhook-timestamp is not a Unix time in seconds",
}


def verify_standard_webhook(
    body: bytes, headers: Mapping[str, str], keys: list[str | bytes]
) -> None:
    """Standard Webhooks verification (via the `standardwebhooks` package) against every key.

    Raises SignatureError with the specific reason: a missing header, a stale or future
    timestamp (±5 minutes), or no `v1,` signature that matches.
    """
    missing = [h for h in HEADERS if not headers.get(h)]
    if missing:
        plural = "s" if len(missing) > 1 else ""
        raise SignatureError(f"missing {', '.join(missing)} header{plural}")
    plain = {h: str(headers.get(h)) for h in HEADERS}
    reason = "webhook-signature does not match"
    for key in keys:
        try:
            Webhook(key).verify(body, plain, json_parse=False)
            return
        except WebhookVerificationError as exc:
            reason = _LIBRARY_REASONS.get(str(exc), reason)
            if str(exc) in _LIBRARY_REASONS:
                break  # the timestamp is wrong for every key alike
        except UnicodeDecodeError:
            raise SignatureError("the body is not UTF-8, so its signature cannot match") from None
        except (ValueError, binascii.Error):
            # The library splits entries on ',' and base64-decodes them without guarding.
            reason = "webhook-signature is malformed (expected space-separated 'v1,<base64>')"
            break
    raise SignatureError(reason)


def check_whsec(secret: str) -> bytes:
    """The key bytes of a `whsec_<base64>` secret; ValueError if it is not one."""
    if not secret.startswith(SECRET_PREFIX):
        raise ValueError("a Standard Webhooks secret starts with 'whsec_' followed by base64")
    try:
        key = base64.b64decode(secret[len(SECRET_PREFIX) :], validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("the part after 'whsec_' is not valid base64") from None
    if not 24 <= len(key) <= 64:
        raise ValueError(f"the secret decodes to {len(key)} bytes; use 24 to 64 random bytes")
    return key


@lru_cache(maxsize=1)
def validator() -> Draft202012Validator:
    schema = json.loads(
        resources.files("dispatch_notifier").joinpath("schemas", SCHEMA_FILE).read_text("utf-8")
    )
    return Draft202012Validator(schema)


def schema_problems(data: Any) -> list[str]:
    """Every way `data` breaks the schema, as `path: message` lines (at most MAX_PROBLEMS)."""
    errors = sorted(validator().iter_errors(data), key=lambda e: [str(p) for p in e.absolute_path])
    problems = []
    for error in errors[:MAX_PROBLEMS]:
        path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path)
        problems.append(f"{path.lstrip('.') or '(body)'}: {error.message}")
    if len(errors) > MAX_PROBLEMS:
        problems.append(f"... and {len(errors) - MAX_PROBLEMS} more")
    return problems


class Standard(Platform):
    name = "standard"
    title = "Generic (Standard Webhooks)"

    def new_secret(self) -> str:
        return SECRET_PREFIX + base64.b64encode(secrets_module.token_bytes(32)).decode()

    def check_secret(self, secret: str) -> None:
        check_whsec(secret)

    def verify(self, body: bytes, headers: Mapping[str, str], secrets: list[str]) -> None:
        keys: list[str | bytes] = []
        for secret in secrets:
            try:
                keys.append(check_whsec(secret))
            except ValueError as exc:
                # A misconfigured secret (e.g. DISPATCH_STANDARD_SECRET): say so, never echo it.
                log.error("a secret of this standard source is unusable: %s", exc)
        if not keys:
            raise SignatureError("the source has no usable whsec_ secret configured")
        verify_standard_webhook(body, headers, keys)

    def delivery_id(self, body: bytes, headers: Mapping[str, str]) -> str | None:
        return text(headers.get("webhook-id"))

    def parse(self, body: bytes, headers: Mapping[str, str], source: Source) -> Parsed:
        data = load_json_object(body)
        problems = schema_problems(data)
        if problems:
            raise InvalidEvent("the body does not match the dispatch event schema", problems)
        event_type = data["type"]
        if event_type != DISPATCHED_TYPE:
            return Parsed(event_type, ignored=f"event type {event_type} is not a dispatch")
        return Parsed(event_type, [dispatch_event(data["data"])])


def dispatch_event(d: dict[str, Any]) -> DispatchEvent:
    """A schema-valid `shipment.dispatched` data object as a DispatchEvent."""
    first, last = text(d.get("first_name")), text(d.get("last_name"))
    name = text(d.get("customer_name")) or " ".join(p for p in (first, last) if p) or None
    phone = text(d.get("phone"))
    country = text(d.get("country"))
    return DispatchEvent(
        order_id=text(d.get("order_id")) or d["order_number"],
        shipment_id=d["shipment_id"],
        order_number=d["order_number"],
        customer_name=name,
        first_name=first,
        last_name=last,
        phones=(phone,) if phone else (),
        country=country.upper() if country else None,
        locale=text(d.get("locale")),
        carrier=text(d.get("carrier")),
        tracking_number=text(d.get("tracking_number")),
        tracking_url=text(d.get("tracking_url")),
        items=tuple(Item(i["name"], int(i.get("quantity", 1))) for i in d.get("items") or ()),
        shop_name=text(d.get("shop_name")),
    )


STANDARD = register(Standard())
