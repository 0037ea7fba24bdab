"""Reliability scenarios with real processes: duplicate storms, kill -9, a database outage,
a misbehaving provider, and the same on SQLite. Run alone with `pytest -m reliability -s`."""

from __future__ import annotations

import signal
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest

from dispatch_notifier.models import TERMINAL_STATUSES
from tests.reliability.conftest import (
    Event,
    deliver_until_acknowledged,
    notification_rows,
    report,
    storm,
    wait_until_settled,
)

pytestmark = [pytest.mark.reliability, pytest.mark.timeout(150)]


@pytest.mark.postgres
def test_a_duplicate_storm_across_two_web_processes_and_two_workers_sends_exactly_n_sms(
    fresh_postgres, fake, stack_factory
):
    n = 60
    # Our shared limit is half the provider's, so even misaligned windows never see a 429.
    fake.rate_limit = (20, 1.0)
    stack = stack_factory(fresh_postgres, fake, SMS_RATE_LIMIT="10/second")
    url = stack.serve(web_processes=2)
    stack.worker()
    stack.worker()
    events = [Event(i) for i in range(n)]
    storm(url, events, copies=4, clients=16)
    answers = Counter(a for e in events for a in e.answers)
    assert set(answers) == {200}, answers
    rows = wait_until_settled(fresh_postgres, n, timeout=60)
    times = sorted(s.at for s in fake.sent)
    busiest = max(sum(1 for t in times if start <= t < start + 1.0) for start in times)
    report(
        "a. duplicate storm (PG, 2 web, 2 workers)",
        events,
        rows,
        fake,
        f"4 copies each; limit 10/s, busiest 1 s: {busiest}",
    )
    assert busiest <= 20  # two adjacent fixed windows at most
    assert len(fake.sent) == n
    assert all(r["status"] == "sent" for r in rows)
    assert not [r for r in fake.requests if r.status == 429], "the shared rate limit was exceeded"


@pytest.mark.postgres
def test_kill_9_of_a_worker_mid_batch_texts_no_one_twice_and_sends_the_rest_after_restart(
    fresh_postgres, fake, stack_factory
):
    n = 40
    fake.latency = 0.4
    stack = stack_factory(fresh_postgres, fake, SEND_CONCURRENCY=8)
    url = stack.serve(web_processes=1)
    events = [Event(i) for i in range(n)]
    storm(url, events, copies=1, clients=8)
    worker = stack.worker()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        statuses = Counter(r["status"] for r in notification_rows(fresh_postgres))
        if statuses["sent"] >= 8 and statuses["sending"] >= 1:
            break
        time.sleep(0.05)
    worker.send_signal(signal.SIGKILL)
    worker.wait(10)
    in_doubt = {r["id"] for r in notification_rows(fresh_postgres) if r["status"] == "sending"}
    assert in_doubt, "the worker was not killed mid-send"
    fake.latency = 0.0
    stack.worker()
    rows = wait_until_settled(fresh_postgres, n, timeout=40)
    report("b. kill -9 mid-batch (PG)", events, rows, fake)
    unknown = {r["id"] for r in rows if r["status"] == "unknown"}
    assert unknown == in_doubt  # exactly the in-doubt ones, never re-sent
    assert all(r["error_code"] == "worker_lost" for r in rows if r["status"] == "unknown")
    assert Counter(r["status"] for r in rows)["sent"] == n - len(in_doubt)


@pytest.mark.postgres
def test_a_database_outage_during_ingestion_answers_503_and_loses_nothing_acknowledged(
    private_cluster, fake, stack_factory
):
    database_url = private_cluster.create_database("dn_reliability")
    # Slow answers keep sends in flight across the outage: their outcomes must still be recorded.
    fake.latency = 0.3
    stack = stack_factory(database_url, fake)
    url = stack.serve(web_processes=2)
    stack.worker()
    events = [Event(i) for i in range(45)]
    # The first event proves the worker is up before the database goes away.
    deliver_until_acknowledged(url, events[0], time.monotonic() + 20)
    fake.wait_for_sent(1, timeout=20)

    def platform(batch: list[Event]) -> None:
        # Each event is delivered as a platform would: retried until acknowledged.
        for event in batch:
            deliver_until_acknowledged(url, event, time.monotonic() + 40)
            time.sleep(0.15)

    batches = [events[i::5] for i in range(5)]
    batches[0].remove(events[0])
    with ThreadPoolExecutor(5) as pool:
        futures = [pool.submit(platform, b) for b in batches]
        time.sleep(0.5)
        private_cluster.stop()
        time.sleep(2.0)
        private_cluster.start()
        for future in futures:
            future.result(timeout=60)
    answers = Counter(a for e in events for a in e.answers)
    rows = wait_until_settled(database_url, len(events), timeout=60)
    report("c. PostgreSQL stopped during ingestion", events, rows, fake, f"{answers[503]} x 503")
    assert answers[503] > 0, f"the outage was not observed: {answers}"
    assert set(answers) <= {200, 503}, answers  # never a 2xx for an event we could not store
    assert all(e.acknowledged for e in events)
    assert all(r["status"] == "sent" for r in rows)


CHAOS = {
    "p_unavailable": 0.15,
    "p_rate_limited": 0.06,
    "p_slow": 0.06,
    "slow_seconds": 1.5,  # longer than the read timeout: the SMS goes out, we say `unknown`
    "p_drop": 0.05,
    "p_server_error": 0.05,
    "rate_limited_reset_in": 1.0,
}


def provider_answers(fake) -> str:  # type: ignore[no-untyped-def]
    counts = Counter("dropped" if r.status is None else str(r.status) for r in fake.requests)
    return "provider: " + " ".join(f"{k}x{v}" for k, v in sorted(counts.items()))


def check_chaos_outcome(rows: list[dict], n: int) -> None:
    assert len(rows) == n
    stuck = [r for r in rows if r["status"] not in TERMINAL_STATUSES]
    assert not stuck, f"not terminal: {Counter(r['status'] for r in stuck)}"


@pytest.mark.postgres
def test_a_misbehaving_provider_leaves_every_row_terminal_and_none_sent_twice_on_postgres(
    fresh_postgres, fake, stack_factory
):
    n = 50
    fake.chaos(seed=4, **CHAOS)
    stack = stack_factory(fresh_postgres, fake)
    url = stack.serve(web_processes=2)
    stack.worker()
    stack.worker()
    events = [Event(i) for i in range(n)]
    storm(url, events, copies=2, clients=12)
    rows = wait_until_settled(fresh_postgres, n, timeout=90)
    report("d. provider chaos (PG, 2 workers)", events, rows, fake, provider_answers(fake))
    check_chaos_outcome(rows, n)


def test_the_same_chaos_on_sqlite_with_one_web_and_one_worker_process(
    tmp_path, fake, stack_factory
):
    n = 30
    fake.chaos(seed=5, **CHAOS)
    database_url = f"sqlite:///{tmp_path / 'reliability.sqlite3'}"
    stack = stack_factory(database_url, fake)
    url = stack.serve(web_processes=1)
    stack.worker()
    events = [Event(i) for i in range(n)]
    storm(url, events, copies=3, clients=8)
    answers = Counter(a for e in events for a in e.answers)
    assert set(answers) == {200}, answers
    rows = wait_until_settled(database_url, n, timeout=90)
    report("e. provider chaos + duplicates (SQLite)", events, rows, fake, provider_answers(fake))
    check_chaos_outcome(rows, n)


# --- graceful stop of real processes -----------------------------------------------------------


def _wait_for_sending(database_url: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not any(r["status"] == "sending" for r in notification_rows(database_url)):
        assert time.monotonic() < deadline, "no send started"
        time.sleep(0.05)


@pytest.mark.parametrize("command", ["worker", "serve"])
def test_sigterm_finishes_in_flight_sends_claims_nothing_new_and_exits_promptly(
    command, tmp_path, fake, stack_factory
):
    fake.latency = 1.0
    database_url = f"sqlite:///{tmp_path / 'stop.sqlite3'}"
    stack = stack_factory(
        database_url, fake, SEND_CONCURRENCY=2, STOP_TIMEOUT=5, DOTDIGITAL_READ_TIMEOUT=5
    )
    if command == "worker":
        url = stack.serve(web_processes=1)
        process = stack.worker()
    else:
        stack.port = None
        process = stack.spawn("serve-embedded", "serve", "--workers", "1", "--port", "0")
        url = None
    events = [Event(i) for i in range(8)]
    if url is None:
        # Queue the events straight through the app when serve's port is not known.
        from dispatch_notifier import create_app
        from tests.conftest import post_shopify

        app = create_app({"DATABASE_URL": database_url, "INSTANCE_PATH": str(tmp_path / "i")})
        client = app.test_client()
        for event in events:
            post_shopify(
                client, fulfillment_for(event), webhook_id=event.webhook_id, source="shopify"
            )
    else:
        storm(url, events, copies=1, clients=4)
    _wait_for_sending(database_url)
    stopped_at = time.monotonic()
    process.send_signal(signal.SIGTERM)
    process.wait(15)
    took = time.monotonic() - stopped_at
    rows = notification_rows(database_url)
    statuses = Counter(r["status"] for r in rows)
    print(f"\n{command}: stopped {took:.1f}s after SIGTERM; {dict(statuses)}")
    assert process.returncode == 0
    assert took < 5 + 3
    assert statuses["sending"] == 0 and statuses["unknown"] == 0  # in-flight sends finished
    assert 1 <= statuses["sent"] <= 4  # at most two rounds of two: nothing new was claimed
    assert statuses["sent"] == len(fake.sent)
    assert statuses["pending"] == len(events) - statuses["sent"]


def fulfillment_for(event: Event) -> dict:
    import json

    return json.loads(event.body())
