"""Shared fixtures: an app on a fresh SQLite file or the real PostgreSQL, clients, fakes, signers.

Every database test runs twice, once per backend (`db_backend` parameter); PostgreSQL tests skip
outside CI when no server is reachable, and fail under CI=true.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import create_engine, text

from dispatch_notifier import create_app, message_templates, migrate
from dispatch_notifier.db import get_db
from dispatch_notifier.platforms import hmac_sha256
from dispatch_notifier.testing.fake_dotdigital import FakeDotdigital
from dispatch_notifier.wake_ups import NOTIFY_CHANNEL

POSTGRES_URL = os.environ.get(
    "DISPATCH_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
SHOPIFY_SECRET = "test-shopify-secret"
SHARED = Path(__file__).resolve().parent.parent.parent / "shared"
TEMPLATES_DIR = Path(__file__).resolve().parent.parent / "templates"


def _postgres_problem() -> str | None:
    try:
        engine = create_engine(POSTGRES_URL)
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        engine.dispose()
    except Exception as exc:
        return f"PostgreSQL not reachable at {POSTGRES_URL}: {type(exc).__name__}"
    return None


@pytest.fixture(scope="session")
def postgres_server_url() -> str:
    """The admin URL of the real PostgreSQL; skip (fail under CI) when it is unreachable."""
    problem = _postgres_problem()
    if problem:
        if IN_CI:
            pytest.fail(f"{problem} (CI=true: PostgreSQL tests must run)")
        pytest.skip(f"{problem}; set DISPATCH_TEST_POSTGRES_URL to run PostgreSQL tests")
    return POSTGRES_URL


@pytest.fixture(scope="session")
def postgres_url(postgres_server_url: str) -> Iterator[str]:
    """A database of our own for this test session, migrated to head, dropped at the end."""
    name = f"dn_test_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    admin = create_engine(postgres_server_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    url = postgres_server_url.rsplit("/", 1)[0] + f"/{name}"
    migrate.upgrade(url)
    yield url
    with admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated SQLite file that each test copies (faster than migrating every time)."""
    path = tmp_path_factory.mktemp("sqlite-template") / "template.sqlite3"
    migrate.upgrade(f"sqlite:///{path}")
    return path


def _truncate_postgres(url: str) -> None:
    engine = create_engine(url)
    with engine.begin() as connection:
        tables = (
            connection.execute(
                text(
                    "SELECT tablename FROM pg_tables WHERE schemaname = 'public' "
                    "AND tablename <> 'alembic_version'"
                )
            )
            .scalars()
            .all()
        )
        if tables:
            quoted = ", ".join(f'"{t}"' for t in tables)
            connection.execute(text(f"TRUNCATE {quoted} RESTART IDENTITY CASCADE"))
    engine.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def database_url(db_backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, migrated database of the parametrised backend."""
    if db_backend == "postgresql":
        url = request.getfixturevalue("postgres_url")
        _truncate_postgres(url)
        return url
    template = request.getfixturevalue("sqlite_template")
    path = tmp_path / "db.sqlite3"
    shutil.copy(template, path)
    return f"sqlite:///{path}"


def make_app(database_url: str, tmp_path: Path, **overrides: Any) -> Flask:
    config = {
        "TESTING": True,
        "INSTANCE_PATH": str(tmp_path / "instance"),
        "DATABASE_URL": database_url,
        "SECRET_KEY": "test-secret-key",
        "SMS_BACKEND": "console",
        "SHOPIFY_SECRET": SHOPIFY_SECRET,
        "POLL_INTERVAL": 0.05,
        # Tests change sources and post at once; production caches them for a second.
        "SOURCE_CACHE_SECONDS": 0,
        "TEMPLATE_CACHE_SECONDS": 0,
        "SECURE_COOKIES": False,
        "WTF_CSRF_ENABLED": True,
    }
    config.update(overrides)
    app = create_app(config)
    with get_db(app).session() as session:
        message_templates.seed(session, TEMPLATES_DIR)
        session.commit()
    return app


@pytest.fixture
def app_factory(database_url: str, tmp_path: Path) -> Iterator[Any]:
    """Build apps on the test's database with extra settings; engines disposed afterwards."""
    apps: list[Flask] = []

    def factory(**overrides: Any) -> Flask:
        app = make_app(database_url, tmp_path, **overrides)
        apps.append(app)
        return app

    yield factory
    for app in apps:
        get_db(app).dispose()


@pytest.fixture
def app(app_factory: Any) -> Flask:
    return app_factory()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def runner(app: Flask):  # type: ignore[no-untyped-def]
    return app.test_cli_runner()


@pytest.fixture
def fake_dotdigital() -> Iterator[FakeDotdigital]:
    with FakeDotdigital(user="apiuser-test@apiconnector.com", password="test-password") as fake:
        yield fake


@pytest.fixture
def dotdigital_app(app_factory: Any, fake_dotdigital: FakeDotdigital) -> Flask:
    """An app that sends through the local fake Dotdigital API."""
    return app_factory(
        SMS_BACKEND="dotdigital",
        DOTDIGITAL_API_URL=fake_dotdigital.url,
        DOTDIGITAL_USER="apiuser-test@apiconnector.com",
        DOTDIGITAL_PASSWORD="test-password",
        DOTDIGITAL_READ_TIMEOUT=1.0,
        RETRY_BASE_SECONDS=0.01,
    )


# --- Shopify helpers -----------------------------------------------------------------------


def shopify_headers(
    body: bytes,
    topic: str = "fulfillments/create",
    webhook_id: str | None = None,
    secret: str = SHOPIFY_SECRET,
) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "X-Shopify-Topic": topic,
        "X-Shopify-Hmac-Sha256": base64.b64encode(hmac_sha256(secret, body)).decode(),
        "X-Shopify-Webhook-Id": webhook_id or str(uuid.uuid4()),
        "X-Shopify-Shop-Domain": "example.myshopify.com",
    }


def post_shopify(
    client: FlaskClient,
    payload: dict[str, Any] | bytes,
    topic: str = "fulfillments/create",
    webhook_id: str | None = None,
    source: str = "shopify",
):  # type: ignore[no-untyped-def]
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return client.post(
        f"/webhooks/{source}", data=body, headers=shopify_headers(body, topic, webhook_id)
    )


def fulfillment(
    fulfillment_id: int = 4401, order_id: int = 5501, phone: str = "+447911123456", **extra: Any
) -> dict[str, Any]:
    """A `fulfillments/create` body in Shopify's documented shape (our own values)."""
    body: dict[str, Any] = {
        "id": fulfillment_id,
        "order_id": order_id,
        "name": "#1001.1",
        "status": "success",
        "tracking_company": "Royal Mail",
        "tracking_number": "RM123456785GB",
        "tracking_numbers": ["RM123456785GB"],
        "tracking_url": "https://track.example.com/RM123456785GB",
        "tracking_urls": ["https://track.example.com/RM123456785GB"],
        "destination": {
            "first_name": "Alex",
            "last_name": "Example",
            "name": "Alex Example",
            "phone": phone,
            "country_code": "GB",
        },
        "line_items": [{"id": 1, "title": "Linen shirt", "quantity": 2}],
    }
    body.update(extra)
    return body


def fulfilled_order(
    order_id: int = 5501, fulfillment_ids: tuple[int, ...] = (4401,), phone: str = "+447911123456"
) -> dict[str, Any]:
    """An `orders/fulfilled` body: the order with its fulfillments."""
    return {
        "id": order_id,
        "name": "#1001",
        "order_number": 1001,
        "phone": None,
        "customer_locale": "en",
        "customer": {"first_name": "Alex", "last_name": "Example", "phone": None},
        "shipping_address": {
            "first_name": "Alex",
            "last_name": "Example",
            "phone": phone,
            "country_code": "GB",
        },
        "billing_address": {"phone": "+447911000000"},
        "fulfillments": [
            {k: v for k, v in fulfillment(fid, order_id).items() if k != "destination"}
            for fid in fulfillment_ids
        ],
    }


@contextmanager
def listening(database_url: str) -> Iterator[Callable[[], int]]:
    """LISTEN as the workers do; yields a call that counts the NOTIFYs received since the last."""
    engine = create_engine(database_url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as connection:
            connection.exec_driver_sql(f"LISTEN {NOTIFY_CHANNEL}")
            listener = connection.connection.dbapi_connection

            def received(timeout: float = 0.5) -> int:
                return sum(1 for _ in listener.notifies(timeout=timeout))

            yield received
    finally:
        engine.dispose()


@pytest.fixture
def runner_factory(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A CLI runner for an app on any database URL (for commands that create the schema)."""
    made: list[Flask] = []

    def factory(url: str, **overrides: Any):  # type: ignore[no-untyped-def]
        app = create_app(
            {
                "TESTING": True,
                "DATABASE_URL": url,
                "INSTANCE_PATH": str(tmp_path / "instance"),
                **overrides,
            }
        )
        made.append(app)
        return app.test_cli_runner()

    yield factory
    for app in made:
        get_db(app).dispose()
