"""PostgreSQL connections from the pool: checked before use only after sitting idle."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import create_engine, text

from dispatch_notifier import db

pytestmark = pytest.mark.postgres


@pytest.fixture
def engine(postgres_url: str, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    monkeypatch.setattr(db, "PING_AFTER_IDLE_SECONDS", 0.2)
    engine = db.make_engine(postgres_url, pool_size=1)
    pings: list[float] = []
    ping = engine.dialect.do_ping

    def counting_ping(dbapi_connection):  # type: ignore[no-untyped-def]
        pings.append(time.monotonic())
        return ping(dbapi_connection)

    engine.dialect.do_ping = counting_ping  # type: ignore[method-assign]
    engine.pings = pings  # type: ignore[attr-defined]
    yield engine
    engine.dispose()


def backend_pid(engine) -> int:  # type: ignore[no-untyped-def]
    with engine.connect() as connection:
        return int(connection.execute(text("SELECT pg_backend_pid()")).scalar_one())


def test_a_connection_used_a_moment_ago_is_not_pinged_again(engine) -> None:  # type: ignore[no-untyped-def]
    first = backend_pid(engine)
    for _ in range(5):
        assert backend_pid(engine) == first
    assert engine.pings == []


def test_a_connection_idle_past_the_limit_is_pinged_before_use(engine) -> None:  # type: ignore[no-untyped-def]
    first = backend_pid(engine)
    time.sleep(0.3)
    assert backend_pid(engine) == first
    assert len(engine.pings) == 1


def test_an_idle_connection_the_server_closed_is_replaced_without_an_error(  # type: ignore[no-untyped-def]
    engine, postgres_url: str
) -> None:
    first = backend_pid(engine)
    admin = create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": first})
    admin.dispose()
    time.sleep(0.3)
    assert backend_pid(engine) != first
