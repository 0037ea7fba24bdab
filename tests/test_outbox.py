"""The outbox: claims never overlap, leases expire, abandoned sends become `unknown`."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta

import pytest
from sqlalchemy import Connection, event, select, update

from dispatch_notifier import outbox
from dispatch_notifier.db import get_db
from dispatch_notifier.models import Notification, utcnow
from dispatch_notifier.samples import SAMPLE_EVENT
from dispatch_notifier.worker import Worker
from tests.conftest import fulfillment, post_shopify


def queue(app, n: int) -> None:  # type: ignore[no-untyped-def]
    client = app.test_client()
    for i in range(n):
        assert post_shopify(client, fulfillment(1000 + i, 2000 + i)).status_code == 200


def test_concurrent_claims_never_hand_out_a_row_twice(app):
    queue(app, 40)
    db = get_db(app)
    claimed: dict[str, list[int]] = {}
    barrier = threading.Barrier(4)

    def claim(name: str) -> None:
        barrier.wait()
        ids: list[int] = []
        while True:
            with db.session() as session:
                got = outbox.claim(session, name, 3, timedelta(seconds=60))
            if not got:
                break
            ids.extend(got)
        claimed[name] = ids

    threads = [threading.Thread(target=claim, args=(f"w{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    everything = [i for ids in claimed.values() for i in ids]
    assert len(everything) == 40
    assert len(set(everything)) == 40


def test_a_claimed_row_is_not_claimed_again_until_its_lease_expires(app):
    queue(app, 1)
    db = get_db(app)
    with db.session() as session:
        assert outbox.claim(session, "a", 10, timedelta(seconds=60)) != []
    with db.session() as session:
        assert outbox.claim(session, "b", 10, timedelta(seconds=60)) == []
        session.execute(update(Notification).values(lease_expires_at=utcnow() - timedelta(1)))
        session.commit()
    with db.session() as session:
        assert outbox.claim(session, "b", 10, timedelta(seconds=60)) != []


def test_a_row_left_sending_past_its_lease_becomes_unknown_and_is_not_resent(app, capsys):
    queue(app, 1)
    db = get_db(app)
    with db.session() as session:
        session.execute(
            update(Notification).values(
                status="sending",
                lease_owner="dead-worker",
                lease_expires_at=utcnow() - timedelta(seconds=1),
            )
        )
        session.commit()
    Worker(app).run_until_idle()
    with db.session() as session:
        row = session.scalars(select(Notification)).one()
        assert row.status == "unknown"
        assert row.error_code == "worker_lost"
    assert "--- SMS" not in capsys.readouterr().out


def test_mark_sending_refuses_a_row_whose_lease_was_taken_over(app):
    queue(app, 1)
    db = get_db(app)
    with db.session() as session:
        [nid] = outbox.claim(session, "a", 1, timedelta(seconds=60))
        session.execute(update(Notification).values(lease_owner="b"))
        session.commit()
        assert outbox.mark_sending(session, nid, "a", {}) is False


@pytest.mark.parametrize("db_backend", [pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_renewing_leases_skips_a_row_whose_outcome_is_being_recorded(app):
    # A worker records outcomes in batches, in the order its sends finished, while its
    # heartbeat renews the lease of every row it holds. Had the renewal waited for a locked
    # row, the two could each hold a row the other wanted next: PostgreSQL ends one of them
    # after `deadlock_timeout` (1 s), and every send of the worker waits meanwhile.
    db = get_db(app)
    first, second = claim_two(app, "w")
    renewed: list[int] = []

    def heartbeat() -> None:
        with db.session() as session:
            renewed.append(outbox.renew_leases(session, "w", [first, second], timedelta(hours=1)))

    with outcome_being_recorded(db, second, "w") as batch:
        assert returns_at_once(heartbeat), "the renewal waited for the batch's lock"
        assert outbox.write_outcome(batch, first, "w", {"status": "sent"})
    assert renewed == [1]  # `first`; `second` was being finished, so needed no renewal
    assert statuses(db) == [(first, "sent"), (second, "sent")]


@pytest.mark.parametrize("db_backend", [pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_the_sweep_leaves_a_late_send_to_its_owner_while_the_outcome_is_being_recorded(app):
    # After a database outage longer than the lease, a worker comes back and records the
    # outcomes of sends whose leases expired meanwhile, while another worker's sweep looks for
    # abandoned sends. The owner knows what happened; the sweep would only guess `unknown`.
    db = get_db(app)
    first, second = claim_two(app, "slow")
    with db.session() as session:
        session.execute(
            update(Notification).values(
                status="sending", lease_expires_at=utcnow() - timedelta(seconds=1)
            )
        )
        session.commit()
    swept: list[list[int]] = []

    def sweep() -> None:
        with db.session() as session:
            swept.append(outbox.sweep_abandoned(session))

    with outcome_being_recorded(db, second, "slow"):
        assert returns_at_once(sweep), "the sweep waited for the outcome's lock"
    assert swept == [[first]]
    assert statuses(db) == [(first, "unknown"), (second, "sent")]


def claim_two(app, owner: str) -> list[int]:  # type: ignore[no-untyped-def]
    queue(app, 2)
    with get_db(app).session() as session:
        return outbox.claim(session, owner, 2, timedelta(seconds=60))


@contextmanager
def outcome_being_recorded(db, notification_id: int, owner: str) -> Iterator[Connection]:  # type: ignore[no-untyped-def]
    """An outcome batch that has written `notification_id` (so holds its row lock) and has not
    committed yet; it commits when the block ends."""
    with db.engine.connect() as batch, batch.begin():
        assert outbox.write_outcome(batch, notification_id, owner, {"status": "sent"})
        yield batch


def returns_at_once(action: Callable[[], None]) -> bool:
    """Run `action` in a thread: False if it is still running 3 s later (waiting for a lock)."""
    thread = threading.Thread(target=action, daemon=True)
    thread.start()
    thread.join(3.0)
    return not thread.is_alive()


def statuses(db) -> list[tuple[int, str]]:  # type: ignore[no-untyped-def]
    with db.session() as session:
        return sorted(session.execute(select(Notification.id, Notification.status)).all())


def _captured_claim(db) -> tuple[list[str], str, object]:  # type: ignore[no-untyped-def]
    """One real claim as the driver received it: the session settings it made first, then the
    SQL and parameters of the claim itself."""
    settings: list[str] = []
    seen: list[tuple[str, object]] = []

    def capture(conn, cursor, statement, parameters, context, executemany):  # type: ignore[no-untyped-def]
        if statement.lstrip().startswith("SET "):
            settings.append(statement)
        if statement.lstrip().startswith("UPDATE notifications SET lease_owner"):
            seen.append((statement, parameters))

    event.listen(db.engine, "before_cursor_execute", capture)
    try:
        with db.session() as session:
            assert len(outbox.claim(session, "a", 32, timedelta(seconds=60))) == 32
    finally:
        event.remove(db.engine, "before_cursor_execute", capture)
    return settings, *seen[0]


def _claim_plan(db) -> str:  # type: ignore[no-untyped-def]
    """The plan of a real claim, in a transaction with the same settings."""
    settings, statement, parameters = _captured_claim(db)
    with db.engine.connect() as connection, connection.begin():
        for setting in settings:
            connection.exec_driver_sql(setting)
        if db.is_postgres:
            plan = connection.exec_driver_sql(f"EXPLAIN {statement}", parameters).scalars().all()
        else:
            explained = connection.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", parameters)
            plan = [row[-1] for row in explained]
    return "\n".join(plan)


def _add_rows(db, count: int, status: str, start: int = 0) -> None:  # type: ignore[no-untyped-def]
    with db.session() as session:
        source_id = session.scalar(select(Notification.source_id))
        now = utcnow() - timedelta(seconds=1)
        rows = [
            {
                **outbox.pending_row(
                    source_id,
                    None,
                    SAMPLE_EVENT.with_changes(order_id=f"9{i}", shipment_id="1"),
                    now,
                ),
                "status": status,
            }
            for i in range(start, start + count)
        ]
        session.execute(Notification.__table__.insert(), rows)
        session.commit()


def _analyze(db) -> None:  # type: ignore[no-untyped-def]
    with db.engine.begin() as connection:
        connection.exec_driver_sql("ANALYZE")


def test_a_claim_reads_the_due_rows_from_the_claimable_index_without_sorting_the_backlog(app):
    queue(app, 1)
    db = get_db(app)
    _add_rows(db, 3000, "pending")
    _analyze(db)
    text = _claim_plan(db)
    assert "ix_notifications_claimable" in text, text
    assert "Sort" not in text and "TEMP B-TREE" not in text, text


def test_a_burst_after_a_quiet_spell_is_still_claimed_in_index_order(app):
    # The statistics of the last ANALYZE say almost nothing is pending; then a backlog arrives.
    queue(app, 1)
    db = get_db(app)
    _add_rows(db, 2000, "sent")
    _analyze(db)
    _add_rows(db, 3000, "pending", start=2000)
    text = _claim_plan(db)
    assert "ix_notifications_claimable" in text, text
    assert "Sort" not in text and "TEMP B-TREE" not in text and "Bitmap" not in text, text


def test_the_sender_statements_run_as_driver_sql_refuse_what_sqlalchemy_would_have(app, db_backend):
    """On PostgreSQL the sender's two statements per SMS skip SQLAlchemy's per-call parameter
    processing; the checks it would have made are kept."""
    if db_backend != "postgresql":
        pytest.skip("only PostgreSQL runs the sender's statements as driver SQL")
    queue(app, 1)
    db = get_db(app)
    with db.session() as session:
        [nid] = outbox.claim(session, "w1", 1, timedelta(seconds=60))
    fields = {"phone": "+447911123456", "message": "hi"}
    naive = pytest.raises(ValueError, match="naive datetime given for updated_at")
    with naive, db.single_statement.begin() as connection:
        outbox._execute_compiled(
            connection,
            outbox._MARK_SENDING,
            {"_id": nid, "_owner": "w1", "updated_at": datetime(2026, 1, 1), **fields},
        )
    missing = pytest.raises(ValueError, match=r"no value given for \['_owner'\]")
    with missing, db.single_statement.begin() as connection:
        outbox._execute_compiled(
            connection, outbox._MARK_SENDING, {"_id": nid, "updated_at": utcnow(), **fields}
        )
    assert outbox.mark_sending_if_clear(db.single_statement, nid, "w1", fields)
    with db.session() as session:
        row = session.get(Notification, nid)
        assert (row.status, row.phone, row.message, row.attempts) == (
            "sending",
            "+447911123456",
            "hi",
            1,
        )
