"""The send log as a query: validated filters, keyset pages and streamed CSV rows.

Shared by the admin console, the JSON API and the CSV export so that they all list the same rows.
"""

from __future__ import annotations

import base64
import binascii
import csv
import io
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlalchemy import Select, and_, func, or_, select
from sqlalchemy.orm import Session

from dispatch_notifier.models import STATUSES, Attempt, Notification, Source

DEFAULT_LIMIT = 50
MAX_LIMIT = 500
CSV_BATCH = 1000
PHONE_TAIL = re.compile(r"^\d{4}$")
CSV_COLUMNS = (
    "id",
    "created_at",
    "source",
    "order",
    "status",
    "phone",
    "attempts",
    "error",
    "error_code",
    "backend",
    "message",
    "sent_at",
)


class FilterError(ValueError):
    """A filter value that cannot be used; `field` names it, the message says why."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class Filters:
    """What the send log is narrowed to; every field is backed by an index on notifications."""

    status: str | None = None
    source: str | None = None
    since: datetime | None = None
    until: datetime | None = None  # exclusive
    order: str | None = None
    phone: str | None = None  # the last 4 digits of the number

    def as_query(self) -> dict[str, str]:
        """The filters as URL query parameters (for links and the CSV export)."""
        out = {
            "status": self.status,
            "source": self.source,
            "since": _iso(self.since),
            "until": _iso(self.until),
            "order": self.order,
            "phone": self.phone,
        }
        return {k: v for k, v in out.items() if v}


def parse_filters(args: Mapping[str, str]) -> Filters:
    """Filters from query parameters; raises FilterError naming the bad one."""

    def value(name: str) -> str | None:
        raw = (args.get(name) or "").strip()
        return raw or None

    status = value("status")
    if status and status not in STATUSES:
        raise FilterError("status", f"status must be one of {', '.join(STATUSES)}")
    phone = value("phone")
    if phone:
        phone = phone.replace(" ", "")
        if not PHONE_TAIL.match(phone):
            raise FilterError("phone", "phone must be the last 4 digits of the number")
    since = _parse_time(value("since"), "since", end=False)
    until = _parse_time(value("until"), "until", end=True)
    if since and until and since >= until:
        raise FilterError("until", "until must be later than since")
    order = value("order")
    if order:
        order = order.lstrip("#")
    return Filters(status, value("source"), since, until, order, phone)


def _parse_time(raw: str | None, name: str, *, end: bool) -> datetime | None:
    """ISO date or datetime, UTC unless it says otherwise; a bare `until` date includes that day."""
    if raw is None:
        return None
    try:
        if len(raw) == 10:
            day = date.fromisoformat(raw)
            start = datetime(day.year, day.month, day.day, tzinfo=UTC)
            return start + timedelta(days=1) if end else start
        parsed = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise FilterError(name, f"{name} must be a date (2024-05-31) or an ISO 8601 time") from None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def encode_cursor(row: Notification) -> str:
    """An opaque token for "the rows after this one" in the log's order."""
    raw = json.dumps([row.created_at.isoformat(), row.id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(token: str) -> tuple[datetime, int]:
    try:
        padded = token + "=" * (-len(token) % 4)
        created, row_id = json.loads(base64.urlsafe_b64decode(padded.encode()))
        when = datetime.fromisoformat(created)
        if when.tzinfo is None or not isinstance(row_id, int):
            raise ValueError(token)
    except (ValueError, TypeError, binascii.Error, json.JSONDecodeError):
        raise FilterError("cursor", "cursor is not one this service handed out") from None
    return when.astimezone(UTC), row_id


def parse_limit(raw: str | None, default: int = DEFAULT_LIMIT) -> int:
    if raw in (None, ""):
        return default
    try:
        limit = int(raw)
    except ValueError:
        raise FilterError("limit", f"limit must be a whole number from 1 to {MAX_LIMIT}") from None
    if not 1 <= limit <= MAX_LIMIT:
        raise FilterError("limit", f"limit must be a whole number from 1 to {MAX_LIMIT}")
    return limit


def query(session: Session, filters: Filters) -> Select[tuple[Notification]]:
    """Notifications matching `filters`, newest first (created_at desc, id desc)."""
    stmt = select(Notification).order_by(Notification.created_at.desc(), Notification.id.desc())
    if filters.status:
        stmt = stmt.where(Notification.status == filters.status)
    if filters.source:
        source_id = session.scalar(select(Source.id).where(Source.name == filters.source))
        # An unknown source simply matches nothing (id -1 never exists).
        stmt = stmt.where(Notification.source_id == (source_id if source_id is not None else -1))
    if filters.since:
        stmt = stmt.where(Notification.created_at >= filters.since)
    if filters.until:
        stmt = stmt.where(Notification.created_at < filters.until)
    if filters.order:
        stmt = stmt.where(Notification.order_number == filters.order)
    if filters.phone:
        stmt = stmt.where(Notification.phone_tail == filters.phone)
    return stmt


def after(stmt: Select[tuple[Notification]], cursor: tuple[datetime, int]) -> Select[Any]:
    """Narrow `stmt` to the rows after `cursor` in the log's order (newest first)."""
    created, row_id = cursor
    # `created_at <= c` gives both databases an index range; the OR only trims the tie.
    return stmt.where(
        and_(
            Notification.created_at <= created,
            or_(Notification.created_at < created, Notification.id < row_id),
        )
    )


@dataclass
class Page:
    rows: list[Notification]
    attempts: dict[int, int]
    next_cursor: str | None


def page(
    session: Session, filters: Filters, limit: int = DEFAULT_LIMIT, cursor: str | None = None
) -> Page:
    """One page of the log: up to `limit` rows after `cursor`, and the cursor for the next."""
    stmt = query(session, filters)
    if cursor:
        stmt = after(stmt, decode_cursor(cursor))
    rows = list(session.scalars(stmt.limit(limit + 1)).unique())
    more = len(rows) > limit
    rows = rows[:limit]
    return Page(rows, attempt_counts(session, rows), encode_cursor(rows[-1]) if more else None)


def attempt_counts(session: Session, rows: list[Notification]) -> dict[int, int]:
    """Attempts per notification: the attempt rows, or the counter if it is higher."""
    if not rows:
        return {}
    counted = dict(
        session.execute(
            select(Attempt.notification_id, func.count())
            .where(Attempt.notification_id.in_([r.id for r in rows]))
            .group_by(Attempt.notification_id)
        ).all()
    )
    return {r.id: max(counted.get(r.id, 0), r.attempts) for r in rows}


def iter_records(session: Session, filters: Filters) -> Iterator[dict[str, Any]]:
    """Every matching row as a `record`, fetched in keyset batches (memory stays flat)."""
    from dispatch_notifier.cli import record

    cursor: str | None = None
    while True:
        batch = page(session, filters, CSV_BATCH, cursor)
        for row in batch.rows:
            yield record(row, batch.attempts[row.id])
        session.expunge_all()
        if batch.next_cursor is None:
            return
        cursor = batch.next_cursor


def csv_lines(session: Session, filters: Filters) -> Iterator[str]:
    """The filtered log as CSV text, one line at a time, header first."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, CSV_COLUMNS, extrasaction="ignore")

    def flush() -> str:
        text = buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()
        return text

    writer.writeheader()
    yield flush()
    for item in iter_records(session, filters):
        # The masked phone is our own format; everything else may come from a shop or a user.
        writer.writerow(
            {k: item.get(k) if k == "phone" else _csv_safe(item.get(k)) for k in CSV_COLUMNS}
        )
        yield flush()


def _csv_safe(value: Any) -> Any:
    # A cell starting with = + - @ is a formula to spreadsheet programs: neutralise it.
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def _iso(value: datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value else None
