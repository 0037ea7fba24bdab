"""Send-log queries: every filter is served by an index, and cursors are opaque and checked."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import text

from dispatch_notifier import sendlog
from dispatch_notifier.db import get_db
from dispatch_notifier.models import utcnow
from tests.console_helpers import add_notification

DAY = utcnow() - timedelta(days=1)
CASES = {
    "none": sendlog.Filters(),
    "status": sendlog.Filters(status="failed"),
    "source": sendlog.Filters(source="shopify"),
    "dates": sendlog.Filters(since=DAY, until=DAY + timedelta(days=1)),
    "order": sendlog.Filters(order="1001"),
    "phone": sendlog.Filters(phone="3456"),
}


@pytest.fixture
def db_backend() -> str:
    return "sqlite"  # SQLite's planner picks indexes even on tiny tables; PostgreSQL's doesn't


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("with_cursor", [False, True])
def test_every_filter_and_the_cursor_use_an_index(app, name, with_cursor):
    add_notification(app)
    with get_db(app).session() as session:
        stmt = sendlog.query(session, CASES[name])
        if with_cursor:
            stmt = sendlog.after(stmt, (utcnow(), 10))
        sql = stmt.limit(51).compile(session.get_bind(), compile_kwargs={"literal_binds": True})
        plan = " | ".join(r[-1] for r in session.execute(text(f"EXPLAIN QUERY PLAN {sql}")))
    assert "USING INDEX ix_notifications_" in plan, plan
    assert "SCAN notifications " not in plan.replace("SCAN notifications USING INDEX", ""), plan


def test_a_cursor_round_trips_and_a_forged_one_is_refused(app):
    nid = add_notification(app)
    with get_db(app).session() as session:
        page = sendlog.page(session, sendlog.Filters(), limit=1)
        token = sendlog.encode_cursor(page.rows[0])
        created, row_id = sendlog.decode_cursor(token)
        assert row_id == nid and created == page.rows[0].created_at
    with pytest.raises(sendlog.FilterError):
        sendlog.decode_cursor("eyJub3QiOiJhIGN1cnNvciJ9")
