"""Recording what the provider said: sends finishing together share a commit, each keeps its
own guarantees (the lease owner guard, the retry while the database is down)."""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
from sqlalchemy import event, func, select, update
from sqlalchemy.exc import OperationalError

from dispatch_notifier import outbox
from dispatch_notifier.db import get_db
from dispatch_notifier.models import Attempt, Notification, utcnow
from dispatch_notifier.resend import resend_notification
from dispatch_notifier.sender import Sender
from dispatch_notifier.sms import SendOutcome
from tests.conftest import fulfillment, post_shopify


class TogetherBackend:
    """Answers `sent` only once `n` sends are in flight, so they all finish together."""

    name = "together"

    def __init__(self, n: int, when_all_in_flight=None) -> None:  # type: ignore[no-untyped-def]
        self.barrier = threading.Barrier(n, when_all_in_flight, timeout=10)

    def send(self, e164: str, message: str) -> SendOutcome:
        self.barrier.wait()
        return SendOutcome("sent", http_status=204)


def queue_and_claim(app, n: int, owner: str) -> list[int]:  # type: ignore[no-untyped-def]
    client = app.test_client()
    for i in range(n):
        phone = f"+4479112{i:05d}"
        assert post_shopify(client, fulfillment(5100 + i, 6100 + i, phone=phone)).status_code == 200
    with get_db(app).session() as session:
        return outbox.claim(session, owner, n, timedelta(seconds=60))


def hold_first_transaction_until_queued(sender: Sender, others: int) -> None:
    """The first outcome transaction stays open until `others` outcomes wait behind it."""
    committer, write = sender.outcomes, sender.outcomes.write
    first = threading.Event()

    def write_after_queue(connection, job):  # type: ignore[no-untyped-def]
        if not first.is_set():
            first.set()
            for _ in range(1000):
                if len(committer._queue) >= others:
                    break
                threading.Event().wait(0.01)
        return write(connection, job)

    committer.write = write_after_queue


def statuses(app) -> dict[int, tuple[str, str | None]]:  # type: ignore[no-untyped-def]
    with get_db(app).session() as session:
        result = session.execute(
            select(Notification.id, Notification.status, Notification.lease_owner)
        )
        return {row.id: (row.status, row.lease_owner) for row in result}


def attempts(app) -> int:  # type: ignore[no-untyped-def]
    with get_db(app).session() as session:
        return session.scalar(select(func.count()).select_from(Attempt)) or 0


def test_outcomes_of_sends_finishing_together_are_committed_in_fewer_transactions(app):
    ids = queue_and_claim(app, 6, "w1")
    sender = Sender(app, get_db(app), TogetherBackend(6), "w1")
    hold_first_transaction_until_queued(sender, 5)
    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(sender.send_one, ids))
    assert results == ["sent"] * 6
    assert statuses(app) == {i: ("sent", None) for i in ids}
    assert attempts(app) == 6
    assert sender.outcomes.transactions < 6


def test_a_row_whose_lease_was_taken_over_is_not_overwritten_and_its_neighbours_are_recorded(app):
    ids = queue_and_claim(app, 4, "w1")
    stolen = ids[0]

    def lose_a_lease() -> None:  # e.g. swept while the worker could not renew it
        with get_db(app).session() as session:
            session.execute(
                update(Notification)
                .where(Notification.id == stolen)
                .values(lease_owner="w2", status="unknown")
            )
            session.commit()

    sender = Sender(app, get_db(app), TogetherBackend(4, lose_a_lease), "w1")
    hold_first_transaction_until_queued(sender, 3)
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(sender.send_one, ids))
    rows = statuses(app)
    assert rows[stolen] == ("unknown", "w2")
    assert all(rows[i] == ("sent", None) for i in ids[1:])
    assert attempts(app) == 3


def test_an_outcome_write_failing_on_a_database_error_is_retried_until_recorded(app):
    [nid] = queue_and_claim(app, 1, "w1")
    sender = Sender(app, get_db(app), TogetherBackend(1), "w1")
    write, failures = sender.outcomes.write, []

    def write_failing_twice(connection, job):  # type: ignore[no-untyped-def]
        if len(failures) < 2:
            failures.append(job[0])
            raise OperationalError("UPDATE", {}, Exception("server closed the connection"))
        return write(connection, job)

    sender.outcomes.write = write_failing_twice
    assert sender.send_one(nid) == "sent"
    assert failures == [nid, nid]
    assert statuses(app) == {nid: ("sent", None)}
    assert attempts(app) == 1


def lease_lost_warnings(caplog) -> list[str]:  # type: ignore[no-untyped-def]
    return [r.getMessage() for r in caplog.records if "lease lost" in r.getMessage()]


def test_outcomes_recorded_alone_and_shared_are_not_reported_as_lost_leases(app, caplog):
    ids = queue_and_claim(app, 3, "w1")
    sender = Sender(app, get_db(app), TogetherBackend(3), "w1")
    hold_first_transaction_until_queued(sender, 2)  # one outcome alone, then two sharing
    warnings = caplog.at_level(logging.WARNING, logger="dispatch_notifier.sender")
    with warnings, ThreadPoolExecutor(3) as pool:
        assert list(pool.map(sender.send_one, ids)) == ["sent"] * 3
    assert sender.outcomes.transactions == 2
    assert lease_lost_warnings(caplog) == []
    assert statuses(app) == {i: ("sent", None) for i in ids}


@pytest.mark.parametrize("autocommit", [True, False], ids=["autocommitted", "in-a-transaction"])
def test_writing_an_outcome_says_whether_the_row_was_still_ours(app, autocommit):
    db = get_db(app)
    ours, taken = queue_and_claim(app, 2, "w1")
    with db.session() as session:
        outbox.mark_sending(session, ours, "w1", {"phone": "+447911200000"})
        outbox.mark_sending(session, taken, "w1", {"phone": "+447911200001"})
        session.execute(
            update(Notification).where(Notification.id == taken).values(lease_owner="w2")
        )
        session.commit()
    attempt = {
        "started_at": utcnow(),
        "duration_ms": 100,
        "backend": "together",
        "outcome": "sent",
        "http_status": 204,
        "provider_error": None,
        "error_class": None,
        "detail": None,
    }
    engine = db.single_statement if autocommit else db.engine
    with engine.connect() as connection:
        wrote = [
            outbox.write_outcome(connection, nid, "w1", {"status": "sent"}, dict(attempt))
            for nid in (ours, taken)
        ]
        connection.commit()
    assert wrote == [True, False]
    assert statuses(app) == {ours: ("sent", None), taken: ("sending", "w2")}
    assert attempts(app) == 1


def test_a_lone_send_whose_lease_was_taken_over_writes_neither_outcome_nor_attempt(app, caplog):
    [nid] = queue_and_claim(app, 1, "w1")

    def lose_the_lease() -> None:
        with get_db(app).session() as session:
            session.execute(
                update(Notification).where(Notification.id == nid).values(lease_owner="w2")
            )
            session.commit()

    sender = Sender(app, get_db(app), TogetherBackend(1, lose_the_lease), "w1")
    with caplog.at_level(logging.WARNING, logger="dispatch_notifier.sender"):
        assert sender.send_one(nid) == "sent"  # what the provider said; the row is not ours
    assert statuses(app) == {nid: ("sending", "w2")}
    assert attempts(app) == 0
    assert lease_lost_warnings(caplog) == [f"notification {nid}: lease lost before recording sent"]


def expire_and_sweep(app, nid: int) -> None:  # type: ignore[no-untyped-def]
    """What another worker's sweep does to a send whose lease ran out (its worker stalled)."""
    with get_db(app).session() as session:
        session.execute(
            update(Notification).values(lease_expires_at=utcnow() - timedelta(seconds=1))
        )
        session.commit()
        assert outbox.sweep_abandoned(session) == [nid]


def test_the_providers_answer_replaces_the_sweeps_guess_when_the_worker_comes_back(app, caplog):
    # The sweep says `unknown` ("the SMS may have been sent"), and a person reading that might
    # resend an SMS that went out. The worker that only stalled knows what the provider said.
    [nid] = queue_and_claim(app, 1, "w1")
    sender = Sender(app, get_db(app), TogetherBackend(1, lambda: expire_and_sweep(app, nid)), "w1")
    with caplog.at_level(logging.WARNING, logger="dispatch_notifier.sender"):
        assert sender.send_one(nid) == "sent"
    assert statuses(app) == {nid: ("sent", None)}
    assert attempts(app) == 2  # the sweep's guess and the provider's answer, both kept
    assert lease_lost_warnings(caplog) == []


class SweptThenNotSent:
    """The send stalls until another worker's sweep has guessed `unknown`, then the provider's
    answer comes: the request never got through."""

    name = "swept"

    def __init__(self, app, nid: int) -> None:  # type: ignore[no-untyped-def]
        self.app, self.nid = app, nid

    def send(self, e164: str, message: str) -> SendOutcome:
        expire_and_sweep(self.app, self.nid)
        return SendOutcome("retrying", "could not connect", "ConnectError")


def test_a_late_answer_that_nothing_was_sent_puts_a_swept_send_back_in_the_queue(app):
    [nid] = queue_and_claim(app, 1, "w1")
    sender = Sender(app, get_db(app), SweptThenNotSent(app, nid), "w1")
    assert sender.send_one(nid) == "retrying"
    assert statuses(app) == {nid: ("retrying", None)}  # `unknown` would never be sent again
    with get_db(app).session() as session:
        session.execute(update(Notification).values(next_attempt_at=utcnow()))
        session.commit()
        assert outbox.claim(session, "w2", 1, timedelta(seconds=60)) == [nid]


def test_a_late_answer_leaves_a_swept_send_alone_once_a_person_has_resent_it(app, caplog):
    [nid] = queue_and_claim(app, 1, "w1")

    def swept_and_resent() -> None:
        expire_and_sweep(app, nid)
        with get_db(app).session() as session:
            resend_notification(session, nid, "owner@example.com")

    sender = Sender(app, get_db(app), TogetherBackend(1, swept_and_resent), "w1")
    with caplog.at_level(logging.WARNING, logger="dispatch_notifier.sender"):
        assert sender.send_one(nid) == "sent"
    assert statuses(app) == {nid: ("pending", None)}  # queued again, as the person asked
    assert attempts(app) == 1  # the sweep's
    assert lease_lost_warnings(caplog) == [f"notification {nid}: lease lost before recording sent"]


def test_on_postgresql_a_lone_outcome_and_its_attempt_row_are_one_autocommitted_statement(
    app, db_backend
):
    if db_backend != "postgresql":
        pytest.skip("SQLite has no round trips to save; its outcome is two statements")
    [nid] = queue_and_claim(app, 1, "w1")
    sent = threading.Event()
    sender = Sender(app, get_db(app), TogetherBackend(1, sent.set), "w1")
    recorded: list[tuple[str, bool]] = []  # what runs once the provider has the SMS

    def record(connection, _cursor, statement, *_args) -> None:  # type: ignore[no-untyped-def]
        if sent.is_set():
            recorded.append((statement, connection.connection.dbapi_connection.autocommit))

    engine = get_db(app).engine
    event.listen(engine, "before_cursor_execute", record)
    try:
        assert sender.send_one(nid) == "sent"
    finally:
        event.remove(engine, "before_cursor_execute", record)

    assert len(recorded) == 1, recorded
    [(sql, autocommit)] = recorded
    assert " ".join(sql.split()).startswith("WITH finished AS (UPDATE notifications SET")
    assert "INSERT INTO attempts" in sql
    assert autocommit
    with get_db(app).session() as session:
        row = session.get(Notification, nid)
        assert (row.status, row.lease_owner, row.sent_at is not None) == ("sent", None, True)
        attempt = session.scalars(select(Attempt).where(Attempt.notification_id == nid)).one()
        assert (attempt.outcome, attempt.http_status, attempt.backend) == ("sent", 204, "together")
