"""Helpers for the console and API tests: a user, a logged-in client, send-log rows."""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta
from typing import Any

from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from dispatch_notifier import users
from dispatch_notifier.db import get_db
from dispatch_notifier.models import Attempt, Notification, Source, utcnow

PASSWORD = "correct horse battery"


def create_user(app: Flask, name: str = "owner", password: str = PASSWORD) -> None:
    with get_db(app).session() as session:
        users.create_user(session, name, password)
        session.commit()


def csrf_token(client: FlaskClient, path: str = "/admin/login") -> str:
    page = client.get(path)
    match = re.search(r'name="csrf-token" content="([^"]+)"', page.text)
    assert match, page.text[:500]
    return match.group(1)


def login(client: FlaskClient, name: str = "owner", password: str = PASSWORD) -> str:
    """Log in; returns a CSRF token valid for the logged-in session."""
    token = csrf_token(client)
    response = client.post(
        "/admin/login", data={"username": name, "password": password, "csrf_token": token}
    )
    assert response.status_code == 302, response.text
    return csrf_token(client, "/admin/")


def logged_in(app: Flask) -> tuple[FlaskClient, str]:
    create_user(app)
    client = app.test_client()
    return client, login(client)


def source_id(app: Flask, name: str = "shopify") -> int:
    with get_db(app).session() as session:
        found = session.scalar(select(Source.id).where(Source.name == name))
        if found is None:
            source = Source(name=name, platform="shopify", secrets=["s3cret-" + name])
            session.add(source)
            session.commit()
            found = source.id
        return found


def add_notification(
    app: Flask,
    *,
    source: str = "shopify",
    status: str = "sent",
    order: str = "1001",
    phone: str | None = "+447911123456",
    created_at: datetime | None = None,
    message: str | None = "Example Shop: your order 1001 is on its way.",
    attempts: list[dict[str, Any]] | None = None,
    **extra: Any,
) -> int:
    """One send-log row (and its attempt rows) written straight to the database."""
    sid = source_id(app, source)
    created_at = created_at or utcnow()
    with get_db(app).session() as session:
        row = Notification(
            source_id=sid,
            order_id=f"o-{order}",
            shipment_id=f"s-{order}-{created_at.timestamp()}-{extra.pop('n', 0)}",
            order_number=order,
            event_json=json.dumps({"order_number": order, "phones": [phone]}),
            status=status,
            phone=phone,
            phone_tail=phone[-4:] if phone else None,
            message=message,
            backend="dotdigital",
            created_at=created_at,
            updated_at=created_at,
            next_attempt_at=created_at,
            **extra,
        )
        session.add(row)
        session.flush()
        for attempt in attempts or []:
            session.add(Attempt(notification_id=row.id, **attempt))
        session.commit()
        return row.id


def add_many(app: Flask, count: int, start: datetime | None = None, **kwargs: Any) -> list[int]:
    start = start or utcnow() - timedelta(hours=1)
    return [
        add_notification(app, created_at=start + timedelta(seconds=i), n=i, **kwargs)
        for i in range(count)
    ]
