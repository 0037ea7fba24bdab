"""Time the send log's keyset pages and filters on a database of N notifications (default 1M).

Usage: python bench/sendlog_keyset.py [sqlite|postgresql] [ROWS] [--explain]; prints ms per query.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
import uuid
from datetime import timedelta

from sqlalchemy import create_engine, text
from sqlalchemy.orm import Session

from dispatch_notifier import migrate, sendlog
from dispatch_notifier.db import make_engine
from dispatch_notifier.models import utcnow

PG_SERVER = "postgresql+psycopg://postgres@127.0.0.1:5432/test"

FILL_SQL = """
INSERT INTO notifications (source_id, order_id, shipment_id, kind, order_number, event, status,
    phone, phone_tail, message, attempts, next_attempt_at, created_at, updated_at)
SELECT 1 + (n % 3), 'o' || n, 's' || n, 'dispatched', CAST(100000 + n AS TEXT), '{{}}',
    CASE WHEN n % 50 = 0 THEN 'failed' WHEN n % 97 = 0 THEN 'unknown' ELSE 'sent' END,
    '+4479111' || substr('00000' || CAST(n % 100000 AS TEXT), -5, 5),
    substr('0000' || CAST(n % 10000 AS TEXT), -4, 4),
    'Example Shop: your order is on its way.', 1, {start}, {created}, {created}
FROM {series}
"""


def fill(engine, rows: int) -> None:  # type: ignore[no-untyped-def]
    start = utcnow() - timedelta(days=60)
    with engine.begin() as c:
        for i in range(3):
            c.execute(
                text(
                    "INSERT INTO sources (name, platform, secrets, enabled, created_at, updated_at)"
                    " VALUES (:n, 'shopify', '[]', true, :t, :t)"
                ),
                {"n": f"shop{i}", "t": start},
            )
        if engine.dialect.name == "postgresql":
            created = f"TIMESTAMPTZ '{start.isoformat()}' + n * INTERVAL '5 seconds'"
            sql = FILL_SQL.format(
                start=f"TIMESTAMPTZ '{start.isoformat()}'",
                created=created,
                series=f"generate_series(1, {rows}) AS n",
            )
        else:
            base = start.replace(tzinfo=None).isoformat(sep=" ")
            created = f"strftime('%Y-%m-%d %H:%M:%f', '{base}', '+' || (n * 5) || ' seconds')"
            sql = (
                "WITH RECURSIVE s(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM s "
                f"WHERE n < {rows}) "
                + FILL_SQL.format(start=f"'{base}'", created=created, series="s")
            )
        c.execute(text(sql))
        if engine.dialect.name == "postgresql":
            c.execute(text("ANALYZE notifications"))
        else:
            c.execute(text("ANALYZE"))


def timed(session: Session, filters: sendlog.Filters, cursor: str | None = None) -> float:
    runs = []
    for _ in range(5):
        began = time.perf_counter()
        sendlog.page(session, filters, 50, cursor)
        runs.append((time.perf_counter() - began) * 1000)
        session.expunge_all()
    return statistics.median(runs)


def explain(session: Session, filters: sendlog.Filters, cursor: str | None) -> str:
    stmt = sendlog.query(session, filters)
    if cursor:
        stmt = sendlog.after(stmt, sendlog.decode_cursor(cursor))
    sql = str(stmt.limit(51).compile(session.get_bind(), compile_kwargs={"literal_binds": True}))
    postgres = session.get_bind().dialect.name == "postgresql"
    prefix = "EXPLAIN " if postgres else "EXPLAIN QUERY PLAN "
    return " | ".join(str(r[-1]) for r in session.execute(text(prefix + sql)))


def main() -> None:
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    backend = args[0] if args else "sqlite"
    rows = int(args[1]) if len(args) > 1 else 1_000_000
    admin = None
    if backend == "postgresql":
        name = f"dn_bench_{uuid.uuid4().hex[:6]}"
        admin = create_engine(PG_SERVER, isolation_level="AUTOCOMMIT")
        with admin.connect() as c:
            c.execute(text(f'CREATE DATABASE "{name}"'))
        url = PG_SERVER.rsplit("/", 1)[0] + f"/{name}"
    else:
        url = f"sqlite:///{tempfile.mkdtemp()}/bench.sqlite3"
    try:
        migrate.upgrade(url)
        engine = make_engine(url)
        began = time.perf_counter()
        fill(engine, rows)
        print(f"{backend}: {rows} rows inserted in {time.perf_counter() - began:.1f} s")
        with Session(engine) as session:
            middle = session.scalars(
                sendlog.query(session, sendlog.Filters()).offset(rows // 2).limit(1)
            ).one()
            deep = sendlog.encode_cursor(middle)
            session.expunge_all()
            day = utcnow() - timedelta(days=30)
            cases = {
                "first page": (sendlog.Filters(), None),
                "page after the middle (cursor)": (sendlog.Filters(), deep),
                "status=failed": (sendlog.Filters(status="failed"), None),
                "status=unknown, deep cursor": (sendlog.Filters(status="unknown"), deep),
                "source=shop1": (sendlog.Filters(source="shop1"), None),
                "order=150000": (sendlog.Filters(order="150000"), None),
                "phone=1234": (sendlog.Filters(phone="1234"), None),
                "since/until one day": (
                    sendlog.Filters(since=day, until=day + timedelta(days=1)),
                    None,
                ),
            }
            for label, (filters, cursor) in cases.items():
                print(f"  {label:34} {timed(session, filters, cursor):8.2f} ms")
                if "--explain" in sys.argv:
                    print("    " + explain(session, filters, cursor))
        engine.dispose()
    finally:
        if admin is not None:
            with admin.connect() as c:
                c.execute(text(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)'))
            admin.dispose()


if __name__ == "__main__":
    main()
