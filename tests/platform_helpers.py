"""Helpers for the per-platform tests: creating sources, signing requests, racing deliveries.

Signing uses the platforms' documented schemes independently of the code under test where it can
(the `standardwebhooks` package signs for BigCommerce and the generic platform).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import func, select
from standardwebhooks.webhooks import Webhook

from dispatch_notifier.db import get_db
from dispatch_notifier.models import Notification, Source
from tests.conftest import SHARED


def add_source(
    app: Flask,
    name: str,
    platform: str,
    secrets: list[str],
    credentials: dict[str, str] | None = None,
    shop_name: str | None = None,
    enabled: bool = True,
) -> None:
    with get_db(app).session() as session:
        session.add(
            Source(
                name=name,
                platform=platform,
                secrets=secrets,
                api_credentials=credentials,
                shop_name=shop_name,
                enabled=enabled,
            )
        )
        session.commit()


def count(app: Flask, model: Any) -> int:
    with get_db(app).session() as session:
        return session.scalar(select(func.count()).select_from(model)) or 0


def notifications(app: Flask) -> list[Notification]:
    with get_db(app).session() as session:
        return list(session.scalars(select(Notification).order_by(Notification.id)))


def body_of(payload: dict[str, Any] | bytes) -> bytes:
    return payload if isinstance(payload, bytes) else json.dumps(payload).encode()


def b64_hmac(secret: str, body: bytes) -> str:
    return base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest()).decode()


def hex_hmac(secret: str, body: bytes) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def standard_webhook_headers(
    key: str | bytes, body: bytes, msg_id: str, timestamp: datetime | None = None
) -> dict[str, str]:
    """Standard Webhooks headers made by the reference library (`key` as it takes it)."""
    when = timestamp or datetime.now(UTC)
    return {
        "Content-Type": "application/json",
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(when.timestamp())),
        "webhook-signature": Webhook(key).sign(msg_id, when, body.decode()),
    }


def race(post: Callable[[int], int], n: int = 24) -> list[int]:
    """Call `post(i)` n times from 8 threads at once; return the status codes."""
    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(post, range(n)))


def public_sample(platform: str, name: str) -> bytes:
    """A public sample payload from ../shared/samples (never copied into the repository)."""
    path: Path = SHARED / "samples" / platform / name
    if not path.exists():
        pytest.skip(f"public sample {path} not present (it lives outside the repository)")
    return path.read_bytes()
