"""Shop platforms: each module verifies, identifies and parses its own webhooks.

Adding a platform means one module here (a `Platform` subclass) and its tests; the receiver,
the outbox and the worker only see `Parsed` results and `DispatchEvent`s.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets as secrets_module
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from dispatch_notifier.events import DispatchEvent

if TYPE_CHECKING:
    from dispatch_notifier.models import Source


class WebhookError(Exception):
    """A webhook we refuse; `status` and `code` become the JSON error answer."""

    status: ClassVar[int] = 400
    code: ClassVar[str] = "bad_request"

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.problems = problems or []


class SignatureError(WebhookError):
    """Missing or wrong signature: the sender does not hold the source's secret."""

    status = 401
    code = "invalid_signature"


class MalformedPayload(WebhookError):
    """The body is not what the platform sends (not JSON, not an object, fields missing)."""

    status = 400
    code = "malformed_payload"


class InvalidEvent(WebhookError):
    """Well-formed JSON that is not a valid event (the generic endpoint's schema)."""

    status = 422
    code = "invalid_event"


class EnrichmentError(Exception):
    """Fetching an id-only event's details failed; `retryable` says whether to try again."""

    def __init__(self, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable


@dataclass
class Parsed:
    """What a webhook means: its topic, the dispatches in it, or why it is ignored."""

    topic: str | None
    events: list[DispatchEvent] = field(default_factory=list)
    ignored: str | None = None  # reason, when the webhook is acknowledged but sends nothing
    ping: bool = False  # a platform's "is this URL alive" check


class Platform:
    """The interface each platform module implements."""

    name: ClassVar[str]
    title: ClassVar[str]
    # API credentials a source of this platform needs (id-only platforms fetch details).
    credential_keys: ClassVar[tuple[str, ...]] = ()
    # Whether we may generate the webhook secret, or it comes from the platform (an app secret).
    secret_is_generated: ClassVar[bool] = True

    def new_secret(self) -> str:
        """A fresh random webhook secret in the form this platform expects."""
        return secrets_module.token_urlsafe(32)

    def check_secret(self, secret: str) -> None:
        """Raise ValueError if `secret` cannot be this platform's webhook secret."""
        if not secret or secret != secret.strip():
            raise ValueError("the secret must not be empty or start/end with spaces")

    def verify(self, body: bytes, headers: Mapping[str, str], secrets: list[str]) -> None:
        """Raise SignatureError unless the request is signed with one of `secrets`."""
        raise NotImplementedError

    def unsigned_ping(self, body: bytes, headers: Mapping[str, str]) -> Parsed | None:
        """A platform's unsigned liveness ping, answered 200 without verification, if any."""
        return None

    def delivery_id(self, body: bytes, headers: Mapping[str, str]) -> str | None:
        """The platform's id for this delivery, stable across its retries (None if it has none)."""
        return None

    def parse(self, body: bytes, headers: Mapping[str, str], source: Source) -> Parsed:
        raise NotImplementedError

    def enrich(self, event: DispatchEvent, source: Source) -> DispatchEvent:
        """Fill in details an id-only webhook left out (runs in the worker, not the request)."""
        return event


def load_json_object(body: bytes) -> dict[str, Any]:
    """The body as a JSON object, or MalformedPayload."""
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MalformedPayload(f"the body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise MalformedPayload("the body must be a JSON object")
    return data


def hmac_sha256(secret: str, body: bytes) -> bytes:
    return hmac.new(secret.encode(), body, hashlib.sha256).digest()


def verify_hmac_base64(body: bytes, signature: str | None, secrets: list[str], header: str) -> None:
    """Check a base64 HMAC-SHA256 of the raw body against every active secret."""
    if not signature:
        raise SignatureError(f"missing {header} header")
    for secret in secrets:
        expected = base64.b64encode(hmac_sha256(secret, body)).decode()
        if hmac.compare_digest(expected, signature.strip()):
            return
    raise SignatureError(f"{header} does not match")


def text(value: Any) -> str | None:
    """A stripped string, or None for missing/blank values."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        return None
    result = str(value).strip()
    return result or None


def as_dict(value: Any) -> dict[str, Any]:
    """`value` if it is an object, else an empty one: optional parts of payloads vary."""
    return value if isinstance(value, dict) else {}


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def first_text(value: Any) -> str | None:
    """The first non-blank string of a list (e.g. `tracking_numbers`)."""
    for item in as_list(value):
        if result := text(item):
            return result
    return None


_REGISTRY: dict[str, Platform] = {}


def register(platform: Platform) -> Platform:
    _REGISTRY[platform.name] = platform
    return platform


def get(name: str) -> Platform:
    _load_builtin()
    return _REGISTRY[name]


def names() -> list[str]:
    _load_builtin()
    return sorted(_REGISTRY)


_builtin_loaded = False


def _load_builtin() -> None:
    # A flag, not "is the registry empty": a platform module imported on its own (by a test, a
    # script) registers itself, and the other built-in platforms must still load.
    global _builtin_loaded
    if not _builtin_loaded:
        from dispatch_notifier.platforms import (  # noqa: F401
            bigcommerce,
            shopify,
            shopware,
            standard,
            woocommerce,
        )

        _builtin_loaded = True


_CARRIER_ACRONYMS = {"dhl", "dpd", "ups", "usps", "tnt", "gls", "ems", "dsv", "ctt", "uk", "us"}
_CARRIER_NAMES = {"fedex": "FedEx", "auspost": "Australia Post", "parcelforce": "Parcelforce"}


def pretty_carrier(value: Any) -> str | None:
    """A carrier as customers know it: slugs `royal-mail`, `usps` become `Royal Mail`, `USPS`.

    Names that already have capitals or spaces are kept as the shop wrote them.
    """
    raw = text(value)
    if raw is None or raw.lower() in ("custom", "none", "other"):
        return None
    if any(c.isupper() for c in raw) or " " in raw:
        return raw
    if raw in _CARRIER_NAMES:
        return _CARRIER_NAMES[raw]
    words = raw.replace("_", "-").split("-")
    return " ".join(w.upper() if w in _CARRIER_ACRONYMS else w.capitalize() for w in words if w)
