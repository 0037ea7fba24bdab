"""On SQLite, a COMMIT returns only once the WAL is on disk, so what we answered for survives a
power cut: an acknowledged webhook is never lost, and a row marked `sending` is never sent twice."""

from __future__ import annotations

import pytest
from flask import Flask

from dispatch_notifier.db import get_db

SYNCHRONOUS_FULL = 2  # what `PRAGMA synchronous` reads for FULL


@pytest.fixture
def db_backend() -> str:
    return "sqlite"  # PostgreSQL's own `synchronous_commit` (on by default) is the server's


def test_every_connection_flushes_the_wal_at_each_commit(app: Flask) -> None:
    with app.app_context():
        db = get_db()
        with db.engine.connect() as writer, db.read_engine.connect() as reader:
            for connection in (writer, reader):
                pragma = connection.exec_driver_sql
                assert pragma("PRAGMA journal_mode").scalar_one() == "wal"
                assert pragma("PRAGMA synchronous").scalar_one() == SYNCHRONOUS_FULL
