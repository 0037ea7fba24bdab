"""Starting a send from the row read at claim time: one guarded statement in the common case, and
the careful path (read afresh, decide in a transaction) whenever something changed since."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

from sqlalchemy import Engine, event, select, update

from dispatch_notifier import gate
from dispatch_notifier.db import get_db
from dispatch_notifier.models import Notification, Source, Suppression, utcnow
from dispatch_notifier.sender import Sender
from dispatch_notifier.sms import SendOutcome
from tests.test_sender_outcomes import queue_and_claim


class CountingBackend:
    """Answers `sent`, and notes how many statements had run when each send began."""

    name = "counting"

    def __init__(self, statements: list[str]) -> None:
        self.statements = statements
        self.sent: list[tuple[str, int]] = []

    def send(self, e164: str, message: str) -> SendOutcome:
        self.sent.append((e164, len(self.statements)))
        return SendOutcome("sent", http_status=204)


@contextmanager
def recorded_statements(engine: Engine) -> Iterator[list[str]]:
    """The statements this thread runs on `engine`.

    Only this thread's: the webhooks that queued the rows may still NOTIFY the workers from a
    thread of their own (a wake-up held back is sent up to 40 ms later), in the middle of a send.
    """
    statements: list[str] = []
    this_thread = threading.get_ident()

    def record(_conn, _cursor, statement, _params, _context, _many) -> None:  # type: ignore[no-untyped-def]
        if threading.get_ident() == this_thread:
            statements.append(" ".join(statement.split()).upper())

    event.listen(engine, "before_cursor_execute", record)
    try:
        yield statements
    finally:
        event.remove(engine, "before_cursor_execute", record)


def row_of(app, notification_id: int) -> Notification:  # type: ignore[no-untyped-def]
    with get_db(app).session() as session:
        return session.get(Notification, notification_id)


def one_claimed_row(app):  # type: ignore[no-untyped-def]
    """A notification claimed by "w1", a sender for "w1", and the row as read at claim time."""
    [nid] = queue_and_claim(app, 1, "w1")
    db = get_db(app)
    backend = CountingBackend([])
    sender = Sender(app, db, backend, "w1")
    return db, backend, sender, nid, sender.load([nid])[nid]


def test_a_send_from_the_claimed_row_commits_its_intent_in_one_statement(app):
    first, second = queue_and_claim(app, 2, "w1")
    db = get_db(app)
    with recorded_statements(db.engine) as statements:
        backend = CountingBackend(statements)
        sender = Sender(app, db, backend, "w1")
        sender.templates.ttl = 60.0  # as in production (the tests' default reads it every time)
        rows = sender.load([first, second])
        assert sender.send_one(first, rows[first]) == "sent"  # reads the template once
        before = len(statements)
        assert sender.send_one(second, rows[second]) == "sent"
    _, at_send = backend.sent[1]
    # SQLite's BEGIN IMMEDIATE is a statement here too; PostgreSQL runs in autocommit.
    [mark] = [s for s in statements[before:at_send] if s.split()[0] not in ("BEGIN", "COMMIT")]
    assert mark.startswith("UPDATE NOTIFICATIONS")
    assert "SUPPRESSIONS" in mark and "SEND_GATE" in mark
    assert row_of(app, second).status == "sent"


def test_a_number_suppressed_after_the_claim_is_skipped_not_texted(app):
    db, backend, sender, nid, row = one_claimed_row(app)
    with db.session() as session:
        session.add(Suppression(phone="+447911200000", reason="asked to stop"))
        session.commit()
    assert sender.send_one(nid, row) == "skipped"
    assert backend.sent == []
    stored = row_of(app, nid)
    assert (stored.status, stored.error_code, stored.lease_owner) == ("skipped", "suppressed", None)


def test_a_provider_pause_begun_after_the_claim_holds_the_send(app):
    db, backend, sender, nid, row = one_claimed_row(app)
    assert row.gate_paused_until is None
    with db.session() as session:
        gate.pause(session, utcnow() + timedelta(minutes=5), "provider rate limit (test)")
    assert sender.send_one(nid, row) == "pending"
    assert backend.sent == []
    stored = row_of(app, nid)
    assert (stored.status, stored.attempts, stored.lease_owner) == ("pending", 0, None)


def test_a_row_taken_over_after_the_claim_is_left_alone(app):
    db, backend, sender, nid, row = one_claimed_row(app)
    with db.session() as session:
        session.execute(update(Notification).where(Notification.id == nid).values(lease_owner="w2"))
        session.commit()
    assert sender.send_one(nid, row) is None
    assert backend.sent == []
    stored = row_of(app, nid)
    assert (stored.status, stored.lease_owner, stored.attempts) == ("pending", "w2", 0)


def test_a_claimed_row_is_read_with_its_source_in_one_query_per_claim(app):
    ids = queue_and_claim(app, 3, "w1")
    db = get_db(app)
    sender = Sender(app, db, CountingBackend([]), "w1")
    with recorded_statements(db.engine) as statements:
        rows = sender.load(ids)
    assert sorted(rows) == sorted(ids)
    assert len([s for s in statements if s.startswith("SELECT")]) == 1
    with db.session() as session:
        phones = session.scalars(select(Notification.phone).where(Notification.id.in_(ids)))
        assert list(phones) == [None, None, None]  # the number is chosen at send time
    assert {row.source_name for row in rows.values()} == {rows[ids[0]].source_name}


def test_unreadable_quiet_hours_are_logged_once_when_the_careful_path_takes_over(app, caplog):
    with get_db(app).session() as session:  # only a hand edit stores such a window
        session.execute(update(Source).values(quiet_hours="9pm-8am"))
        session.commit()
    db, backend, sender, nid, row = one_claimed_row(app)
    with db.session() as session:
        gate.pause(session, utcnow() + timedelta(minutes=5), "provider rate limit (test)")
    with caplog.at_level("WARNING", logger="dispatch_notifier.sender"):
        assert sender.send_one(nid, row) == "pending"
    assert backend.sent == []
    assert caplog.text.count("ignoring unreadable quiet hours") == 1
