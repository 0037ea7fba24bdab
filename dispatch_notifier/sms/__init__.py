"""SMS backends and what a send attempt can come to.

Outcomes, from the send log's point of view:

- `sent`: the provider accepted the message.
- `failed`: permanent; retrying would fail the same way (no credit, bad number, bad credentials).
- `retrying`: definitely not sent (could not connect, throttled, provider down): safe to try again.
- `unknown`: the request may have reached the provider; never retried automatically.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from flask import Flask


@dataclass(frozen=True)
class SendOutcome:
    """The result of one send attempt."""

    status: str  # sent | failed | retrying | unknown
    reason: str | None = None  # for a shop owner
    error_code: str | None = None  # the provider's ERROR_* token, or the error's class
    http_status: int | None = None
    retry_at: datetime | None = None  # the provider's own "not before" (429)
    detail: str | None = None  # for an engineer: a snippet of what came back


class SmsBackend(Protocol):
    name: str

    def send(self, e164: str, message: str) -> SendOutcome: ...


def backend_for(app: Flask) -> SmsBackend:
    """The backend the settings choose: Dotdigital, or the console for trying things out."""
    from dispatch_notifier.sms.console import ConsoleBackend
    from dispatch_notifier.sms.dotdigital import DotdigitalClient

    config = app.config
    if config["SMS_BACKEND"] == "console":
        return ConsoleBackend()
    if not (config["DOTDIGITAL_USER"] and config["DOTDIGITAL_PASSWORD"]):
        from dispatch_notifier.config import ConfigError

        raise ConfigError(
            "DISPATCH_SMS_BACKEND=dotdigital needs DISPATCH_DOTDIGITAL_USER and "
            "DISPATCH_DOTDIGITAL_PASSWORD"
        )
    return DotdigitalClient(
        config["DOTDIGITAL_API_URL"],
        config["DOTDIGITAL_USER"],
        config["DOTDIGITAL_PASSWORD"],
        timeout=(config["DOTDIGITAL_CONNECT_TIMEOUT"], config["DOTDIGITAL_READ_TIMEOUT"]),
        pool_size=max(10, config["SEND_CONCURRENCY"]),
    )
