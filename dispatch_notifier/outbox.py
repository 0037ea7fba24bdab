"""The outbox: webhook events become notification rows; workers claim, send and record them.

Every state change is one short transaction; none is held open across a call to the SMS API.
"""

from __future__ import annotations

import functools
import threading
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from weakref import WeakKeyDictionary

from sqlalchemy import (
    Boolean,
    Connection,
    CursorResult,
    Engine,
    Executable,
    Insert,
    and_,
    bindparam,
    case,
    exists,
    func,
    insert,
    literal,
    literal_column,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import Session

from dispatch_notifier.db import Database, insert_ignoring_conflicts, writer_queue
from dispatch_notifier.events import DispatchEvent
from dispatch_notifier.gate import GATE_NAME
from dispatch_notifier.group_commit import GroupCommit
from dispatch_notifier.models import (
    CLAIMABLE_SQL,
    CLAIMABLE_STATUSES,
    SENDING,
    UNKNOWN,
    Attempt,
    Delivery,
    Notification,
    SendGate,
    Source,
    Suppression,
    utcnow,
)
from dispatch_notifier.platforms import Parsed
from dispatch_notifier.wake_ups import NOTIFY, NOTIFY_CHANNEL

# The unique key that makes one notification per shipment, however often it is reported.
NOTIFICATION_KEY = ("source_id", "order_id", "shipment_id", "kind")

# A delivery row and its notification rows, as `ingest` builds them.
_IngestJob = tuple[dict[str, Any], list[dict[str, Any]]]


@dataclass
class IngestResult:
    """What a webhook delivery came to, for the HTTP answer."""

    status: str  # accepted | duplicate | ignored | ping
    delivery_id: int | None = None
    created: list[int] = field(default_factory=list)  # new notification ids
    existing: int = 0  # dispatches that already had a notification
    reason: str | None = None


def ingest(
    db: Database,
    source: Source,
    delivery_key: str | None,
    parsed: Parsed,
    body: bytes,
) -> IngestResult:
    """Record a verified delivery and its dispatches; returns once they are committed.

    Unique keys decide duplicates: (source, delivery id) and (source, order, shipment, kind).
    This is the webhook's hot path: it runs on Core statements and every row is built before the
    transaction starts.
    """
    now = utcnow()
    result_kind = "ping" if parsed.ping else "ignored" if parsed.ignored else "accepted"
    delivery = {
        "source_id": source.id,
        "delivery_id": delivery_key,
        "topic": parsed.topic,
        "result": result_kind,
        "detail": parsed.ignored,
        "payload": body.decode("utf-8", "replace"),
        "received_at": now,
        "duplicates": 0,
    }
    notifications = [pending_row(source.id, None, event, now) for event in parsed.events]
    job = (delivery, notifications)
    if not db.is_postgres:
        # One write lock for the whole database: deliveries arriving together in this process
        # share its transaction and its commit.
        return _committer(db.engine).run(job)
    return _write_alone(db, job)


def _write_alone(db: Database, job: _IngestJob) -> IngestResult:
    """One delivery on PostgreSQL, side by side with the process's other deliveries.

    The usual delivery, with one dispatch, is one statement (`_insert_pair_postgres`), run in
    autocommit: one round trip instead of three (BEGIN, the statement, COMMIT), about a tenth
    of a webhook's CPU in the web process and in PostgreSQL; the workers' wake-up is part of
    it. What may follow it (a duplicate's count, the source's last event) needs nothing from
    its transaction, but for one rare label: a delivery whose shipment another delivery, still
    in flight, notified is labelled a duplicate by a second statement, and a crash between the
    two would leave it labelled accepted (it created nothing, and its platform, never answered,
    sends it again). A delivery with several dispatches stores them in one transaction.

    Why not the group commit here: PostgreSQL takes concurrent writers, and one transaction at a
    time per process left the CPUs waiting on commits (80 % busy under load against 92 %) and
    let one delivery blocked on a row lock hold up every other one behind it.
    """
    engine = db.single_statement if len(job[1]) == 1 else db.engine
    wake_ups = db.wake_ups
    assert wake_ups is not None  # every PostgreSQL database has them
    claim = wake_ups.claim()
    created = False
    try:
        with engine.connect() as connection, connection.begin():
            result = _record(connection, job, wake=claim is not None)
        created = bool(result.created)  # committed
    finally:
        wake_ups.settled(claim, created)
    return result


_committers: WeakKeyDictionary[Engine, GroupCommit[_IngestJob, IngestResult]] = WeakKeyDictionary()
_committers_lock = threading.Lock()


def _committer(engine: Engine) -> GroupCommit[_IngestJob, IngestResult]:
    with _committers_lock:
        committer = _committers.get(engine)
        if committer is None:
            committer = GroupCommit(engine, _record, guard=writer_queue(engine))
            _committers[engine] = committer
        return committer


def _record(connection: Connection, job: _IngestJob, wake: bool = False) -> IngestResult:
    """Store one delivery and its dispatches; with `wake`, NOTIFY the workers of what it created.

    The NOTIFY is in the rows' own transaction: workers woken by it must see them.
    """
    delivery, notifications = job
    source_id, now = delivery["source_id"], delivery["received_at"]
    labelled = False  # whether the delivery row was stored already labelled a duplicate
    woken = False  # whether the statement that stored the rows woke the workers itself
    if connection.dialect.name == "postgresql" and len(notifications) == 1:
        delivery_pk, notification_pks, labelled = _insert_pair_postgres(
            connection, delivery, notifications[0], wake
        )
        woken = wake
    else:
        delivery_pk = insert_ignoring_conflicts(connection, Delivery.__table__, delivery)
        notification_pks = [
            insert_ignoring_conflicts(
                connection, Notification.__table__, {**row, "delivery_id": delivery_pk}
            )
            for row in notifications
            if delivery_pk is not None
        ]
    if delivery_pk is None:
        connection.execute(
            update(Delivery)
            .where(
                Delivery.source_id == source_id,
                Delivery.delivery_id == delivery["delivery_id"],
            )
            .values(duplicates=Delivery.duplicates + 1, last_duplicate_at=now)
        )
        _touch_source(connection, source_id, now, "duplicate")
        return IngestResult("duplicate", reason="this delivery was already received")

    result = IngestResult(delivery["result"], delivery_pk, reason=delivery["detail"])
    result.created = [pk for pk in notification_pks if pk is not None]
    result.existing = len(notification_pks) - len(result.created)
    if notifications and not result.created:
        result.status = "duplicate"
        result.reason = "this shipment was already notified"
        if not labelled:
            connection.execute(
                update(Delivery).where(Delivery.id == delivery_pk).values(result="duplicate")
            )
    if wake and result.created and not woken:
        connection.execute(text(NOTIFY))
    _touch_source(connection, source_id, now, result.status)
    return result


def _insert_pair_postgres(
    connection: Connection, delivery: dict[str, Any], notification: dict[str, Any], wake: bool
) -> tuple[int | None, list[int | None], bool]:
    """The usual webhook on PostgreSQL, one dispatch: both rows in one statement.

    One round trip instead of two (each costs the web process about as much CPU as the rest of
    storing the delivery). The notification is inserted only if the delivery was new; with
    `wake`, the statement NOTIFYs the workers if it inserted one, rather than a round trip of
    its own. Returns both new ids, None where a unique key already held the row, and whether
    the delivery was stored labelled a duplicate: it is when another delivery had already
    notified its shipment, so the label is right from the moment the row is, even in autocommit.
    """
    params: dict[str, Any] = {f"d_{key}": value for key, value in delivery.items()}
    params.update({f"n_{key}": value for key, value in notification.items()})
    params["wake"] = wake
    notification_keys = tuple(key for key in notification if key != "delivery_id")
    sql = _pair_insert_sql(connection.dialect, tuple(delivery), notification_keys)
    delivery_pk, notification_pk, stored_result, _ = connection.exec_driver_sql(sql, params).one()
    if delivery_pk is None:
        return None, [], False
    return delivery_pk, [notification_pk], stored_result == "duplicate"


@functools.lru_cache(maxsize=32)
def _pair_insert_sql(
    dialect: Dialect, delivery_keys: tuple[str, ...], notification_keys: tuple[str, ...]
) -> str:
    """The pair insert compiled once, run as the driver's own SQL.

    Why: executing the construct made SQLAlchemy look up its compiled form and process each of
    its 20 parameters on every webhook, at more CPU than the driver's own work (~6 % of a
    webhook). The parameters need no conversion: `ingest` builds them as strings, integers and
    aware UTC datetimes, which is what the columns' types would have passed on.
    """
    compiled = _pair_insert(delivery_keys, notification_keys).compile(dialect=dialect)
    # A column default SQLAlchemy would have filled in at execution must not go missing here.
    given = {f"d_{key}" for key in delivery_keys} | {f"n_{key}" for key in notification_keys}
    given.add("wake")
    if missing := set(compiled.params) - given:
        raise ValueError(f"the pair insert needs values for {sorted(missing)}")
    return str(compiled)


def _pair_insert(delivery_keys: tuple[str, ...], notification_keys: tuple[str, ...]) -> Any:
    deliveries, notifications = Delivery.__table__, Notification.__table__
    delivery_values = {c: bindparam(f"d_{c}", type_=deliveries.c[c].type) for c in delivery_keys}
    # Its shipment already notified by another delivery (committed before this statement
    # began): the label is set here. One notified by a delivery still in flight is found only
    # when the notification's insert waits for it and does nothing; `_record` labels that one.
    already_notified = exists().where(
        *(notifications.c[c] == bindparam(f"n_{c}") for c in NOTIFICATION_KEY)
    )
    if "result" in delivery_values:
        delivery_values["result"] = case(
            (already_notified, literal_column("'duplicate'")), else_=delivery_values["result"]
        )
    new_delivery = (
        postgresql.insert(deliveries)
        .values(delivery_values)
        .on_conflict_do_nothing()
        .returning(deliveries.c.id, deliveries.c.result)
        .cte("new_delivery")
    )
    values = (bindparam(f"n_{c}", type_=notifications.c[c].type) for c in notification_keys)
    new_notification = (
        postgresql.insert(notifications)
        .from_select(["delivery_id", *notification_keys], select(new_delivery.c.id, *values))
        .on_conflict_do_nothing()
        .returning(notifications.c.id)
        .cte("new_notification")
    )
    # Only the row this statement inserted, not a conflict, is news to the workers.
    wake_workers = (
        select(
            func.count(func.pg_notify(literal_column(f"'{NOTIFY_CHANNEL}'"), literal_column("''")))
        )
        .select_from(new_notification)
        .where(bindparam("wake", type_=Boolean))
    )
    return select(
        select(new_delivery.c.id).scalar_subquery(),
        select(new_notification.c.id).scalar_subquery(),
        select(new_delivery.c.result).scalar_subquery(),
        wake_workers.scalar_subquery(),
    )


SOURCE_TOUCH_INTERVAL = timedelta(seconds=1)
_last_touch: dict[tuple[int, int], tuple[datetime, str]] = {}
_touch_lock = threading.Lock()


def pending_row(
    source_id: int, delivery_pk: int | None, event: DispatchEvent, now: datetime
) -> dict[str, object]:
    """The outbox row of a new dispatch, waiting for a worker (also used to fill benchmarks)."""
    return {
        "source_id": source_id,
        "delivery_id": delivery_pk,
        "order_id": event.order_id,
        "shipment_id": event.shipment_id,
        "kind": event.kind,
        "order_number": event.order_number,
        "event": event.to_json(),
        "status": "pending",
        "attempts": 0,
        "next_attempt_at": now,
        "created_at": now,
        "updated_at": now,
    }


def _touch_source(connection: Connection, source_id: int, now: datetime, result: str) -> None:
    """Record the source's last event, at most once a second per process and result.

    Every webhook updating its source's one row made concurrent deliveries queue on that row's
    lock until commit; "last event" only needs to be right to the second.
    """
    # Keyed on the pool, which the autocommit engine shares with the plain one: one database.
    key = (id(connection.engine.pool), source_id)
    with _touch_lock:
        last = _last_touch.get(key)
        if (
            last is not None
            and last[1] == result
            and timedelta(0) <= now - last[0] < (SOURCE_TOUCH_INTERVAL)
        ):
            return
        _last_touch[key] = (now, result)
    connection.execute(
        update(Source)
        .where(Source.id == source_id)
        .values(last_event_at=now, last_event_result=result)
    )


# Word for word the WHERE of the partial index `ix_notifications_claimable`, so that both
# databases read the due rows from it, already in claim order.
_CLAIMABLE = text(CLAIMABLE_SQL)
# For the claim's transaction on PostgreSQL. A backlog comes in a burst, while the planner's
# statistics still describe the quiet outbox of the last ANALYZE, with almost nothing pending:
# it then fetched every due row with a bitmap scan and sorted them all, on every claim (9-14 ms
# at 2,500 rows waiting, growing with the backlog). With sorting ruled out, the plan left is the
# claimable index read in order, which stops after `limit` rows.
_NO_SORT = text("SET LOCAL enable_sort = off")


def claim(session: Session, owner: str, limit: int, lease: timedelta) -> list[int]:
    """Lease up to `limit` due notifications to `owner`; commit and return their ids.

    One statement serves both databases: PostgreSQL skips rows other workers hold
    (FOR UPDATE SKIP LOCKED); SQLite drops that clause and relies on BEGIN IMMEDIATE.
    """
    now = utcnow()
    if session.connection().dialect.name == "postgresql":
        session.execute(_NO_SORT)
    due = (
        select(Notification.id)
        .where(
            _CLAIMABLE,
            Notification.next_attempt_at <= now,
            or_(Notification.lease_expires_at.is_(None), Notification.lease_expires_at < now),
        )
        .order_by(Notification.next_attempt_at, Notification.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    ids = list(
        session.scalars(
            update(Notification)
            .where(Notification.id.in_(due.scalar_subquery()))
            .values(lease_owner=owner, lease_expires_at=now + lease)
            .returning(Notification.id)
            .execution_options(synchronize_session=False)
        )
    )
    session.commit()
    return sorted(ids)


# The statements of a send, built once: workers run them for every notification, and building
# an UPDATE with `.values(...)` per call cost more CPU than executing it. SET columns beyond those
# given here come from the execution parameters (named as the table's columns); the bound values
# of the guards are prefixed with `_` so they cannot be taken for columns.
_N = Notification.__table__
_GUARD_OWNER = _N.c.lease_owner == bindparam("_owner")
# IN over bound constants: a plain list would be an "expanding" parameter, re-rendered into the
# SQL on every execution (~4 % of a sender's CPU).
_GUARD_CLAIMABLE = _N.c.status.in_([literal(status) for status in CLAIMABLE_STATUSES])
# A held row another transaction has locked is skipped, not waited for: that is the worker's
# own outcome batch finishing it (no renewal needed), and waiting for a batch that wants a row
# the renewal has locked already would deadlock (PostgreSQL ends one of them after a second).
_RENEW = update(_N).where(
    _N.c.id.in_(
        select(_N.c.id)
        .where(_N.c.id.in_(bindparam("_ids", expanding=True)), _GUARD_OWNER)
        .with_for_update(skip_locked=True)
        .scalar_subquery()
    )
)
_MARK_SENDING = (
    update(_N)
    .where(_N.c.id == bindparam("_id"), _GUARD_OWNER, _GUARD_CLAIMABLE)
    .values(status=SENDING, attempts=_N.c.attempts + 1)
)
# `_MARK_SENDING`, also refused while the number is suppressed or the provider pause is on: the
# checks a send makes in its transaction, folded into the statement that commits its intent.
_G = SendGate.__table__.c
_MARK_SENDING_IF_CLEAR = _MARK_SENDING.where(
    ~exists().where(Suppression.__table__.c.phone == bindparam("_phone")),
    ~exists().where(_G.name == GATE_NAME, _G.paused_until > bindparam("_now")),
)
_RELEASE = (
    update(_N)
    .where(_N.c.id == bindparam("_id"), _GUARD_OWNER, _GUARD_CLAIMABLE)
    .values(lease_owner=None, lease_expires_at=None)
)
_FINISH = (
    update(_N).where(_N.c.id == bindparam("_id")).values(lease_owner=None, lease_expires_at=None)
)
# What the sweep writes when a lease runs out mid-send: a guess that the worker was lost.
WORKER_LOST = "worker_lost"
# An outcome is written while the row is still ours, or when the sweep has only guessed
# `unknown` because our lease ran out (we stalled, or lost the database for longer than the
# lease): the provider's answer is the truth, and a person reading `unknown` might resend an SMS
# that went out. Once anything else has touched the row (a resend, a new claim), it is not ours.
_GUARD_OWNER_OR_SWEPT = or_(
    _GUARD_OWNER,
    and_(
        _N.c.lease_owner.is_(None),
        _N.c.status == literal(UNKNOWN),
        _N.c.error_code == literal(WORKER_LOST),
    ),
)
_FINISH_OWNED = _FINISH.where(_GUARD_OWNER_OR_SWEPT)
_INSERT_ATTEMPT = insert(Attempt.__table__)
# ORM attribute names that differ from their column's name.
_COLUMN_NAMES = {"event_json": "event"}


def _columns(values: dict[str, object]) -> dict[str, object]:
    return {_COLUMN_NAMES.get(key, key): value for key, value in values.items()}


def renew_leases(session: Session, owner: str, ids: list[int], lease: timedelta) -> int:
    """Extend the leases `owner` still holds on `ids`; return how many were extended."""
    if not ids:
        return 0
    result = session.connection().execute(
        _RENEW, {"_ids": list(ids), "_owner": owner, "lease_expires_at": utcnow() + lease}
    )
    session.commit()
    return result.rowcount or 0


def mark_sending(
    session: Session, notification_id: int, owner: str, values: dict[str, object]
) -> bool:
    """Commit the intent to send (status `sending`, the text, the number) before the HTTP call.

    Fails (returns False) if the lease was lost: another worker may own the row now.
    """
    result = session.connection().execute(
        _MARK_SENDING,
        {"_id": notification_id, "_owner": owner, "updated_at": utcnow(), **_columns(values)},
    )
    session.commit()
    return result.rowcount == 1


def mark_sending_if_clear(
    engine: Engine, notification_id: int, owner: str, values: dict[str, object]
) -> bool:
    """`mark_sending` as one statement in a transaction of its own, refused (False) if the row is
    not ours and claimable, its number (`values["phone"]`) is suppressed, or sends are paused.

    A refusal changes nothing: the caller finds out which it was the careful way. Pass
    `Database.single_statement` for one round trip on PostgreSQL.
    """
    now = utcnow()
    params = {
        "_id": notification_id,
        "_owner": owner,
        "_now": now,
        "_phone": values["phone"],
        "updated_at": now,
    }
    params.update(_columns(values))
    with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            result = _execute_compiled(connection, _MARK_SENDING_IF_CLEAR, params)
        else:
            result = connection.execute(_MARK_SENDING_IF_CLEAR, params)
    return result.rowcount == 1


def finish(
    session: Session,
    notification_id: int,
    owner: str | None,
    values: dict[str, object],
    attempt: dict[str, object] | None = None,
) -> bool:
    """Record an outcome (and the attempt that led to it) and release the lease."""
    recorded = write_outcome(session.connection(), notification_id, owner, values, attempt)
    session.commit()
    return recorded


def write_outcome(
    connection: Connection,
    notification_id: int,
    owner: str | None,
    values: dict[str, object],
    attempt: dict[str, object] | None = None,
) -> bool:
    """`finish` inside the caller's transaction (e.g. one shared by several outcomes).

    On PostgreSQL the outcome and its attempt row are one statement: in autocommit, one round
    trip for the sender's usual write.
    """
    params = {"_id": notification_id, "updated_at": utcnow(), **_columns(values)}
    if owner is not None:
        params["_owner"] = owner
    if attempt is not None and connection.dialect.name == "postgresql":
        keys = frozenset(params) - {"_id", "_owner"}
        statement = _finish_with_attempt(keys, owned=owner is not None)
        params.update({f"_attempt_{key}": value for key, value in attempt.items()})
        return _execute_compiled(connection, statement, params).rowcount == 1
    result = connection.execute(_FINISH if owner is None else _FINISH_OWNED, params)
    if result.rowcount == 1 and attempt is not None:
        connection.execute(_INSERT_ATTEMPT, {"notification_id": notification_id, **attempt})
    return result.rowcount == 1


_ATTEMPT_FIELDS = [c for c in Attempt.__table__.c if c.name not in ("id", "notification_id")]


@functools.lru_cache(maxsize=64)
def _finish_with_attempt(keys: frozenset[str], owned: bool) -> Insert:
    """`_FINISH(_OWNED)` setting `keys`, and the attempt row inserted only if it updated a row:
    `WITH finished AS (UPDATE ... RETURNING id) INSERT INTO attempts SELECT ... FROM finished`.

    Built once per set of columns an outcome sets (a sent row sets `sent_at`, a retried one
    `next_attempt_at`).
    """
    finished = (
        (_FINISH_OWNED if owned else _FINISH)
        .values({key: bindparam(key, type_=_N.c[key].type) for key in sorted(keys)})
        .returning(_N.c.id)
        .cte("finished")
    )
    attempt = select(
        finished.c.id,
        *(bindparam(f"_attempt_{c.name}", type_=c.type) for c in _ATTEMPT_FIELDS),
    )
    return insert(Attempt.__table__).from_select(
        ["notification_id", *(c.name for c in _ATTEMPT_FIELDS)], attempt
    )


def _execute_compiled(
    connection: Connection, statement: Executable, params: dict[str, Any]
) -> CursorResult[Any]:
    """Run `statement` as the driver's own SQL, compiled once per set of parameter names.

    Why: the sender runs two statements per SMS (marking the row `sending`, then its outcome),
    and executing a construct made SQLAlchemy look up its compiled form and process every
    parameter each time, at more CPU than the driver's own work. The values go to the driver
    as given, so they must be what the columns' types would have passed on: strings, numbers,
    None and aware UTC datetimes (a naive one is refused, as `UTCDateTime` would).
    """
    for key, value in params.items():
        if isinstance(value, datetime) and value.tzinfo is None:
            raise ValueError(f"naive datetime given for {key}")
    sql, fixed = _compiled(statement, connection.dialect, frozenset(params))
    # An INSERT's rowcount is kept only when asked: without it, -1, and an outcome that was
    # written would read as a lost lease.
    return connection.exec_driver_sql(
        sql, {**fixed, **params}, execution_options={"preserve_rowcount": True}
    )


@functools.lru_cache(maxsize=64)
def _compiled(
    statement: Executable, dialect: Dialect, keys: frozenset[str]
) -> tuple[str, dict[str, Any]]:
    """`statement`'s SQL as executing it with parameters `keys` would compile it, and the
    values of the parameters the statement fixes itself (its literals)."""
    compiled = statement.compile(
        dialect=dialect, column_keys=sorted(keys), compile_kwargs={"render_postcompile": True}
    )
    required = (name for name, bind in compiled.binds.items() if bind.required)
    if missing := sorted(name for name in required if name not in keys):
        raise ValueError(f"no value given for {missing}")
    fixed = {name: value for name, value in compiled.params.items() if name not in keys}
    return str(compiled), fixed


def release(session: Session, notification_id: int, owner: str) -> None:
    """Give a claimed row back untouched (e.g. on shutdown before it was sent)."""
    session.connection().execute(_RELEASE, {"_id": notification_id, "_owner": owner})
    session.commit()


def defer(
    session: Session,
    notification_id: int,
    owner: str,
    until: datetime | None,
    reason: str | None,
    code: str | None,
) -> bool:
    """Put a claimed row back, to wait until `until` (quiet hours); not an attempt.

    `until=None` (the shared gate is closed) keeps its place in the queue: workers do not claim
    while the gate is closed, and the oldest rows go first when it opens.
    """
    params: dict[str, object] = {"_id": notification_id, "_owner": owner, "updated_at": utcnow()}
    if until is not None:
        params["next_attempt_at"] = until
    if code is not None:
        # A gate hold keeps the previous error (why it is `retrying`); quiet hours say so.
        params.update(error=reason, error_code=code)
    result = session.connection().execute(_RELEASE, params)
    session.commit()
    return result.rowcount == 1


def sweep_abandoned(session: Session, spare: list[int] | None = None) -> list[int]:
    """Rows left `sending` past their lease (the worker died mid-send) become `unknown`.

    They are never sent again automatically: the SMS may have gone out. Should the worker turn
    up after all with the provider's answer, that replaces the guess. `spare` are the calling
    worker's own sends still in progress: it knows it is alive and will record their outcomes,
    e.g. after a database outage during which it could not renew its leases.
    """
    now = utcnow()
    conditions = [Notification.status == SENDING, Notification.lease_expires_at < now]
    if spare:
        conditions.append(Notification.id.not_in(spare))
    # A locked row is skipped, not waited for: its owner is recording the outcome right now
    # (after an outage it outlived its lease), and that outcome is the truth. Waiting could also
    # deadlock with the owner's outcome batch, which locks its rows in another order.
    expired = select(Notification.id).where(*conditions).with_for_update(skip_locked=True)
    ids = list(
        session.scalars(
            update(Notification)
            .where(Notification.id.in_(expired.scalar_subquery()))
            .values(
                status=UNKNOWN,
                error="the worker stopped while sending; the SMS may have been sent",
                error_code=WORKER_LOST,
                lease_owner=None,
                lease_expires_at=None,
                updated_at=now,
            )
            .returning(Notification.id)
            .execution_options(synchronize_session=False)
        )
    )
    for notification_id in ids:
        session.add(
            Attempt(
                notification_id=notification_id,
                started_at=now,
                outcome=UNKNOWN,
                error_class=WORKER_LOST,
                detail="lease expired while sending",
            )
        )
    session.commit()
    return ids
