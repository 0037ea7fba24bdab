"""Benchmark 5, the send log at scale: many notifications generated straight in the database.

Times the first page and a filtered page (status + date) of `/admin/log`, the JSON API and the CLI's
`log` query, in-process (server time), against the bare SQL page query, and shows the plans. Then,
on a real `serve`, webhooks at a fixed rate while one client pages through the log with the API,
against the same webhooks with nobody reading (reading the log must not hold webhooks up).
"""

from __future__ import annotations

import json
import random
import re
import statistics
import sys
import threading
import time
import urllib.parse
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common
from sqlalchemy import event, text
from sqlalchemy.exc import DBAPIError

from dispatch_notifier import create_app
from dispatch_notifier.db import get_db

TARGET_MS = 50.0
API_TOKEN = "bench-api-token-0123456789abcdef"
ADMIN_USER, ADMIN_PASSWORD = "bench", "bench-password-123456"
# (status, share in per mille) of the generated rows.
STATUS_MIX = [
    ("sent", 900),
    ("failed", 20),
    ("skipped", 40),
    ("unknown", 10),
    ("retrying", 10),
    ("pending", 20),
]
SPREAD_DAYS = 365


def main() -> None:
    parser = common.base_parser(__doc__ or "")
    parser.add_argument("--rows", type=int, default=200_000, help="notifications to generate")
    parser.add_argument("--repeat", type=int, default=15, help="timed requests per page")
    parser.add_argument("--plans", action="store_true", help="print every query plan in full")
    parser.add_argument(
        "--webhook-rate", type=float, default=300.0, help="webhooks/s while the log is read"
    )
    parser.add_argument("--reader-seconds", type=float, default=8.0, help="per round")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of (nobody reading, reading)")
    args = parser.parse_args()
    if args.smoke:
        args.rows, args.repeat = 2000, 2
        args.webhook_rate, args.reader_seconds, args.rounds = 50.0, 1.0, 1

    rows, plan_rows, reader_rows = [], [], []
    for run in common.scratch_runs(args):
        started = time.monotonic()
        generate(run.db, run.url, args.rows)
        common.say(f"{run.db}: {args.rows:,} rows in {time.monotonic() - started:.0f}s")
        r, p = measure(run.db, run.url, run.folder, args)
        rows += r
        plan_rows += p
        reader_rows += webhooks_while_reading(run.db, run.url, run.folder, args)
    common.print_table(
        f"Send log with {args.rows:,} notifications: server time per page (median of "
        f"{args.repeat}; p95 beside it)",
        [
            "database",
            "path",
            "page",
            "median ms",
            "p95 ms",
            "bare SQL ms",
            "× bare SQL",
            "rows",
            "target ≤ 50 ms",
        ],
        rows,
    )
    common.print_table(
        "Query plans of the statements each path ran (notifications only)",
        ["database", "path", "page", "index used", "plan"],
        plan_rows,
    )
    common.print_table(
        f"Webhooks at {args.webhook_rate:.0f}/s (open loop) while one client pages through the "
        f"log with `GET /api/v1/notifications`, {args.rounds} interleaved rounds of "
        f"{args.reader_seconds:.0f} s: all requests pooled",
        [
            "database",
            "reader",
            "webhooks",
            "p50 ms",
            "p99 ms",
            "p99 × nobody reading",
            "max ms",
            "non-2xx",
            "log pages read/s",
        ],
        reader_rows,
    )


# --- webhooks while the log is read ------------------------------------------------------------


def webhooks_while_reading(db: str, url: str, folder: Path, args) -> list[list]:  # type: ignore[no-untyped-def]
    """Open-loop webhooks with nobody reading the log, then with one client paging through it
    (status filter, 100 rows a page, following the cursor), in alternating rounds."""
    service = common.start_serve(url, folder, workers=2, API_TOKEN=API_TOKEN)
    runs: dict[bool, list[common.LoadResult]] = {False: [], True: []}
    pages: dict[bool, int] = {False: 0, True: 0}
    count = int(args.webhook_rate * args.reader_seconds) + 10
    try:
        warm = common.distinct_deliveries(50, start=60_000_000)
        common.python_load(service, warm, rate=None, duration=3, connections=4)
        for number in range(args.rounds):
            for reading in (False, True):
                common.say(f"{db}: webhooks, round {number + 1}/{args.rounds}, reader: {reading}")
                first_id = 61_000_000 + (2 * number + reading) * count
                deliveries = common.distinct_deliveries(count, start=first_id)
                with LogReader(service, active=reading) as reader:
                    runs[reading].append(
                        common.python_load(
                            service,
                            deliveries,
                            rate=args.webhook_rate,
                            duration=args.reader_seconds,
                        )
                    )
                pages[reading] += reader.pages
    finally:
        service.stop()
    quiet_p99 = common.percentile([ms for r in runs[False] for ms in r.extra["latencies"]], 99)
    rows = []
    for reading in (False, True):
        latencies = [ms for r in runs[reading] for ms in r.extra["latencies"]]
        p99 = common.percentile(latencies, 99)
        seconds = sum(r.seconds for r in runs[reading])
        rows.append(
            [
                db,
                "one client paging" if reading else "nobody",
                len(latencies),
                common.percentile(latencies, 50),
                p99,
                common.ratio(p99, quiet_p99),
                max(latencies, default=None),
                sum(r.non_2xx + r.errors for r in runs[reading]),
                pages[reading] / seconds if reading and seconds else None,
            ]
        )
    return rows


class LogReader:
    """A thread that pages through the send log with the API until the block ends."""

    def __init__(self, service: common.Service, active: bool) -> None:
        self.service, self.active, self.pages = service, active, 0
        self.error: Exception | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> LogReader:
        if self.active:
            self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        if self.active:
            self._thread.join()
        if self.error is not None:  # a reader that stopped early would flatter the figures
            raise RuntimeError(f"the log reader failed: {self.error}") from self.error

    def _run(self) -> None:
        cursor = None
        try:
            while not self._stop.is_set():
                query = {"limit": 100, "status": "sent", **({"cursor": cursor} if cursor else {})}
                request = urllib.request.Request(
                    f"{self.service.url}/api/v1/notifications?{urllib.parse.urlencode(query)}",
                    headers={"Authorization": f"Bearer {API_TOKEN}"},
                )
                with urllib.request.urlopen(request, timeout=30) as response:
                    cursor = json.load(response).get("next_cursor")
                self.pages += 1
        except Exception as exc:
            self.error = exc


# --- data --------------------------------------------------------------------------------------


def generate(db: str, url: str, count: int) -> None:
    load(db, url, count)
    if db == "postgresql":
        settle(get_engine(url))


def load(db: str, url: str, count: int) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    engine = get_engine(url)
    with engine.begin() as connection:
        source_id = connection.execute(text("SELECT id FROM sources WHERE name='shopify'")).scalar()
        if db == "postgresql":
            cases = []
            edge = 0
            for status, share in STATUS_MIX:
                edge += share
                cases.append(f"WHEN g % 1000 < {edge} THEN '{status}'")
            connection.execute(
                text(
                    f"""
                INSERT INTO notifications (source_id, order_id, shipment_id, kind, order_number,
                    event, status, phone, phone_tail, message, backend, attempts,
                    next_attempt_at, created_at, updated_at, sent_at)
                SELECT :source_id, 'L' || g, 'S' || g, 'dispatched', (100000 + g)::text, '{{}}',
                    CASE {" ".join(cases)} ELSE 'sent' END,
                    '+447400' || lpad((g % 1000000)::text, 6, '0'), lpad((g % 10000)::text, 4, '0'),
                    'Example Shop: order ' || (100000 + g) || ' is on its way with Royal Mail.',
                    'dotdigital', 1, ts, ts, ts, ts
                FROM (SELECT g, :now - make_interval(secs => (:count - g) * :step) AS ts
                      FROM generate_series(1, :count) AS g) AS s
                """
                ),
                {
                    "source_id": source_id,
                    "now": now,
                    "count": count,
                    "step": SPREAD_DAYS * 86400 / count,
                },
            )
            connection.execute(text("ANALYZE notifications"))
            return
        rng = random.Random(5)
        statuses = [s for s, share in STATUS_MIX for _ in range(share)]
        step = SPREAD_DAYS * 86400 / count
        batch = []
        insert = text(
            "INSERT INTO notifications (source_id, order_id, shipment_id, kind, order_number, "
            "event, status, phone, phone_tail, message, backend, attempts, next_attempt_at, "
            "created_at, updated_at, sent_at) VALUES (:s, :o, :sh, 'dispatched', :n, '{}', "
            ":st, :p, :pt, :m, 'dotdigital', 1, :t, :t, :t, :t)"
        )
        for g in range(1, count + 1):
            ts = (now - timedelta(seconds=(count - g) * step)).replace(tzinfo=None)
            batch.append(
                {
                    "s": source_id,
                    "o": f"L{g}",
                    "sh": f"S{g}",
                    "n": str(100000 + g),
                    "st": statuses[rng.randrange(1000)],
                    "p": f"+447400{g % 1000000:06d}",
                    "pt": f"{g % 10000:04d}",
                    "m": f"Example Shop: order {100000 + g} is on its way with Royal Mail.",
                    "t": ts,
                }
            )
            if len(batch) >= 20_000:
                connection.execute(insert, batch)
                batch = []
        if batch:
            connection.execute(insert, batch)
        connection.execute(text("ANALYZE"))


def settle(engine: Any) -> None:
    """PostgreSQL: leave the table as a long-lived one is, not as a bulk load leaves it.

    Right after the load, the first reads set hint bits on a million rows and a checkpoint
    flushes the load itself; webhooks timed meanwhile waited 100-240 ms for that, not for us.
    """
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.execute(text("VACUUM (ANALYZE) notifications"))
        try:
            connection.execute(text("CHECKPOINT"))
        except DBAPIError as exc:  # needs superuser or pg_checkpoint; the run goes on without
            common.say(f"postgresql: no CHECKPOINT before timing ({type(exc).__name__})")


_engines: dict[str, Any] = {}


def get_engine(url: str) -> Any:
    from dispatch_notifier.db import make_engine

    if url not in _engines:
        _engines[url] = make_engine(url)
    return _engines[url]


# --- measuring ---------------------------------------------------------------------------------


class Recorder:
    """Collects the SQL an engine runs while `active`, to EXPLAIN it afterwards."""

    def __init__(self, engine: Any) -> None:
        self.active = False
        self.statements: list[tuple[str, Any]] = []
        event.listen(engine, "before_cursor_execute", self._record)

    def _record(self, _conn, _cursor, statement, parameters, _context, _many) -> None:  # type: ignore[no-untyped-def]
        if self.active and statement.lstrip().upper().startswith("SELECT"):
            self.statements.append((statement, parameters))


def explain(engine: Any, db: str, statement: str, parameters: Any) -> str:
    prefix = "EXPLAIN " if db == "postgresql" else "EXPLAIN QUERY PLAN "
    with engine.connect() as connection:
        result = connection.exec_driver_sql(prefix + statement, parameters)
        lines = [str(row[-1]) for row in result]
    # Costs and widths make the table unreadable; the node types and index names are the point.
    return " / ".join(
        re.sub(r"\s*\(cost=[^)]*\)", "", line).replace("->", "").strip() for line in lines
    )


def uses_index(db: str, plan: str) -> bool:
    if db == "postgresql":
        return "Seq Scan on notifications" not in plan and "Index" in plan
    return (
        "SCAN notifications"
        not in plan.replace("USING INDEX", "").replace("USING COVERING INDEX", "")
        or "USING" in plan
    )


def timed(call, repeat: int) -> tuple[float, float, Any]:  # type: ignore[no-untyped-def]
    result = call()  # warm-up (and the answer we check)
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        call()
        samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples), common.percentile(samples, 95) or 0.0, result


def measure(db: str, url: str, folder: Path, args) -> tuple[list, list]:  # type: ignore[no-untyped-def]
    app = create_app(
        {
            "TESTING": True,
            "DATABASE_URL": url,
            "INSTANCE_PATH": str(folder / "instance"),
            "SECRET_KEY": "bench",
            "API_TOKEN": API_TOKEN,
            "WTF_CSRF_ENABLED": False,
            "SECURE_COOKIES": False,
            "LOG_LEVEL": "WARNING",
        }
    )
    engine = get_db(app).engine
    recorder = Recorder(engine)
    since = datetime.now(UTC) - timedelta(days=30)
    pages = {
        "first page": ({}, ""),
        "status=failed + last 30 days": (
            {"status": "failed", "since": since.strftime("%Y-%m-%dT%H:%M:%SZ")},
            "WHERE status = 'failed' AND created_at >= :since",
        ),
    }
    rows: list[list] = []
    plans: list[list] = []

    def bare_sql(where: str) -> float:
        sql = text(
            f"SELECT * FROM notifications {where} ORDER BY created_at DESC, id DESC LIMIT 50"
        )
        params = {"since": since if db == "postgresql" else since.replace(tzinfo=None)}
        with engine.connect() as connection:
            median, _p95, _ = timed(lambda: connection.execute(sql, params).all(), args.repeat)
        return median

    def record_plans(path: str, page: str, call) -> None:  # type: ignore[no-untyped-def]
        recorder.statements.clear()
        recorder.active = True
        try:
            call()
        finally:
            recorder.active = False
        for statement, parameters in recorder.statements:
            if "notifications" not in statement:
                continue
            plan = explain(engine, db, statement, parameters)
            shown = plan if args.plans else plan[:240]
            plans.append([db, path, page, "yes" if uses_index(db, plan) else "NO", shown])

    client = app.test_client()
    runner = app.test_cli_runner()
    from dispatch_notifier import cli

    admin_problem = admin_login(app, client)
    api_problem = None if has_rule(app, "/api/v1/notifications") else common.NOT_AVAILABLE
    for page, (query, where) in pages.items():
        base = bare_sql(where)
        rows.append([db, "bare SQL (baseline)", page, base, None, base, 1.0, "50", ""])

        def api_call(q=query):  # type: ignore[no-untyped-def]
            return client.get(
                "/api/v1/notifications",
                query_string={**q, "limit": 50},
                headers={"Authorization": f"Bearer {API_TOKEN}"},
            )

        def admin_call(q=query):  # type: ignore[no-untyped-def]
            return client.get("/admin/log", query_string=q)

        for path, problem, call in (
            ("GET /admin/log", admin_problem, admin_call),
            ("GET /api/v1/notifications", api_problem, api_call),
        ):
            if problem:
                rows.append([db, path, page, None, None, base, None, "-", problem])
                continue
            median, p95, answer = timed(call, args.repeat)
            if answer.status_code != 200:
                rows.append(
                    [
                        db,
                        path,
                        page,
                        None,
                        None,
                        base,
                        None,
                        "-",
                        f"HTTP {answer.status_code}: check the benchmark's query names",
                    ]
                )
                continue
            count = "?"
            if answer.is_json and isinstance(answer.get_json(), dict):
                data = answer.get_json()
                items = data.get("items") or data.get("notifications") or data.get("data")
                count = str(len(items)) if isinstance(items, list) else "?"
            elif answer.mimetype == "text/html":
                # The log's table: one <tr> per message, plus the header row.
                body = answer.get_data(as_text=True)
                tbody = body.split("<tbody>", 1)[-1].split("</tbody>", 1)[0]
                count = str(tbody.count("<tr"))
            rows.append(
                [
                    db,
                    path,
                    page,
                    median,
                    p95,
                    base,
                    common.ratio(median, base),
                    count,
                    common.verdict(median <= TARGET_MS),
                ]
            )
            record_plans(path, page, call)
        # The CLI filters by status only (it has no date option).
        cli_args = ["--limit", "50", "--json"] + (["--status", "failed"] if query else [])
        cli_page = "status=failed" if query else page

        def cli_call(a=cli_args):  # type: ignore[no-untyped-def]
            return runner.invoke(cli.log, a)

        median, p95, answer = timed(cli_call, args.repeat)
        ok = answer.exit_code == 0
        rows.append(
            [
                db,
                "CLI `log --json` (in-process)",
                cli_page,
                median,
                p95,
                base,
                common.ratio(median, base),
                "50" if ok else f"exit {answer.exit_code}",
                common.verdict(ok and median <= TARGET_MS),
            ]
        )
        record_plans("CLI log", cli_page, cli_call)
    get_db(app).dispose()
    return rows, plans


def has_rule(app: Any, path: str) -> bool:
    return any(rule.rule == path for rule in app.url_map.iter_rules())


def admin_login(app: Any, client: Any) -> str | None:
    """Log the test client in to the console (issue 5); a reason string when that is impossible."""
    if not has_rule(app, "/admin/log"):
        return common.NOT_AVAILABLE
    runner = app.test_cli_runner()
    created = runner.invoke(
        args=["users", "create", ADMIN_USER], input=f"{ADMIN_PASSWORD}\n{ADMIN_PASSWORD}\n"
    )
    if created.exit_code != 0:
        return f"{common.NOT_AVAILABLE} (users create: exit {created.exit_code})"
    answer = client.post("/admin/login", data={"username": ADMIN_USER, "password": ADMIN_PASSWORD})
    if answer.status_code not in (200, 302, 303):
        return f"login failed: HTTP {answer.status_code}"
    return None


if __name__ == "__main__":
    main()
    common.report_warnings()
