"""The provider gate: one rate limit and one 429 pause shared by every worker on every machine.

State lives in a `send_gate` row, changed only under its row lock, so the limit holds globally.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import cast

from sqlalchemy import select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from dispatch_notifier.models import SendGate, utcnow

GATE_NAME = "sms"
_UNITS = {"second": 1.0, "minute": 60.0, "hour": 3600.0, "day": 86400.0}
_RATE = re.compile(r"^\s*(\d+)\s*/\s*(\d*)\s*(second|minute|hour|day)s?\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class RateLimit:
    """At most `count` provider calls per `window` (a fixed window shared by all workers)."""

    count: int
    window: timedelta

    def __str__(self) -> str:
        return f"{self.count}/{self.window.total_seconds():g}s"


def parse_rate_limit(text: str | None) -> RateLimit | None:
    """'35/minute', '2/second', '1000/hour', '10/5minutes' -> RateLimit; '' or None -> no limit."""
    if text is None or not str(text).strip() or str(text).strip().lower() in ("none", "off"):
        return None
    match = _RATE.match(str(text))
    if not match or int(match.group(1)) < 1 or match.group(2) in ("0",):
        raise ValueError(
            f"DISPATCH_SMS_RATE_LIMIT must look like 35/minute, 2/second or 1000/hour, got {text!r}"
        )
    multiple = int(match.group(2) or 1)
    seconds = _UNITS[match.group(3).lower()] * multiple
    return RateLimit(int(match.group(1)), timedelta(seconds=seconds))


def _locked_row(session: Session) -> SendGate:
    """The gate row, created on first use and locked until the caller's transaction ends.

    PostgreSQL: SELECT ... FOR UPDATE. SQLite: every transaction here is BEGIN IMMEDIATE
    (see db.py), which already serialises writers.
    """
    _ensure_row(session)
    row = session.scalars(
        select(SendGate)
        .where(SendGate.name == GATE_NAME)
        .with_for_update()
        .execution_options(populate_existing=True)
    ).one()
    return row


def _ensure_row(session: Session) -> None:
    # The key is a name, not an id: insert it once, whoever comes first wins.
    if session.scalar(select(SendGate.name).where(SendGate.name == GATE_NAME)) is None:
        dialect = session.get_bind().dialect.name
        insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
        session.execute(
            insert(SendGate.__table__)
            .values(name=GATE_NAME, window_count=0)
            .on_conflict_do_nothing()
        )


_GATE = SendGate.__table__.c
# The provider pause as a scalar subquery: a sender reads it with the row it is about to send.
PAUSED_UNTIL = select(_GATE.paused_until).where(_GATE.name == GATE_NAME).scalar_subquery()
_READ_PAUSED = select(PAUSED_UNTIL)
_UNREAD: object = object()


def acquire(
    session: Session,
    limit: RateLimit | None,
    now: datetime | None = None,
    paused_until: datetime | object | None = _UNREAD,
) -> datetime | None:
    """Take one send slot inside the caller's transaction; None means "go ahead".

    Otherwise returns when to try again: the end of a provider pause or of a full window.
    The caller commits (ideally together with marking the row `sending`).
    `paused_until`: the pause as the caller already read it in this transaction (PAUSED_UNTIL),
    used only without a limit; with a limit the row is read under its lock.
    """
    if limit is None:
        # Without a limit there is nothing to count, only a provider pause to respect: a plain
        # read, so that parallel sends do not queue on the gate row's lock.
        now = now or utcnow()
        if paused_until is _UNREAD:
            paused_until = session.connection().execute(_READ_PAUSED).scalar()
        paused = cast("datetime | None", paused_until)
        return paused if paused is not None and paused > now else None
    row = _locked_row(session)
    now = now or utcnow()  # read after the lock wait, or a late waiter would restart the window
    if row.paused_until is not None and row.paused_until > now:
        return row.paused_until
    # Windows are aligned to the clock (a `/second` window starts on the second, `/minute` on
    # the minute, `/day` at midnight UTC), so the limit holds in every calendar window as an
    # observer counts them; a window opened by the first send after a pause drifted against
    # those, and one second could see the tail of one window and the head of the next.
    # A clock slightly behind the window's start (another machine) counts as inside it.
    start = window_start(now, limit.window)
    if row.window_start is None or start >= row.window_start + limit.window:
        row.window_start, row.window_count = start, 0
    end = row.window_start + limit.window
    if row.window_count >= limit.count or now >= end - closing_time(limit.window):
        return end
    row.window_count += 1
    session.flush()
    return None


# The longest a window's last moments last (see `closing_time`).
MAX_CLOSING_TIME = timedelta(milliseconds=250)


def closing_time(window: timedelta) -> timedelta:
    """How long before its end a window hands out no more slots: 1/20 of it, at most 250 ms.

    A slot is counted when it is taken, but the provider counts the request when it arrives: a
    commit and an HTTP call later, or more if the disk stalls, or on another machine's clock. A
    slot taken in a window's last moments would arrive in the next one, which may be full already.
    """
    return min(window / 20, MAX_CLOSING_TIME)


def window_start(now: datetime, window: timedelta) -> datetime:
    """The start of the clock-aligned window that `now` falls in (multiples of `window` since
    the Unix epoch)."""
    seconds = window.total_seconds()
    stamp = now.timestamp()
    return datetime.fromtimestamp(stamp - stamp % seconds, UTC)


def pause(session: Session, until: datetime, reason: str) -> None:
    """Stop every worker from calling the provider until `until` (after a 429); commits."""
    row = _locked_row(session)
    if row.paused_until is None or row.paused_until < until:
        session.execute(
            update(SendGate)
            .where(SendGate.name == GATE_NAME)
            .values(paused_until=until, pause_reason=reason[:255])
        )
    session.commit()


def wait_until(
    session: Session, limit: RateLimit | None, now: datetime | None = None
) -> datetime | None:
    """A cheap read for the worker loop: when the gate opens, or None if it is open now."""
    now = now or utcnow()
    row = session.get(SendGate, GATE_NAME, populate_existing=True)
    session.rollback()
    if row is not None and row.paused_until is not None and row.paused_until > now:
        return row.paused_until
    if limit is None:
        return None
    end = window_start(now, limit.window) + limit.window
    if now >= end - closing_time(limit.window):
        return end  # `acquire` would refuse every slot until then
    if (
        row is not None
        and row.window_start is not None
        and row.window_start <= now < row.window_start + limit.window
        and row.window_count >= limit.count
    ):
        return row.window_start + limit.window
    return None
