"""Deliberate resends: a person asks for a notification to be sent again, and it is recorded.

Automatic retries never re-send an `unknown` or `sent` row; only this does.
"""

from __future__ import annotations

import json

from sqlalchemy import text
from sqlalchemy.orm import Session

from dispatch_notifier.models import (
    CLAIMABLE_STATUSES,
    PENDING,
    SENDING,
    AuditEntry,
    Notification,
    utcnow,
)
from dispatch_notifier.wake_ups import NOTIFY


class ResendError(Exception):
    """The notification cannot be resent now; the message says why."""


def resend_notification(session: Session, notification_id: int, actor: str) -> Notification:
    """Queue the notification again (same row, attempts kept) and audit who asked."""
    # OF notifications: the joined source is on the nullable side of an outer join (PostgreSQL).
    row = session.get(Notification, notification_id, with_for_update={"of": Notification})
    if row is None:
        raise ResendError(f"no notification {notification_id}")
    if row.status == SENDING:
        raise ResendError(f"notification {notification_id} is being sent right now")
    if row.status in CLAIMABLE_STATUSES and row.requested_by is None and row.attempts == 0:
        raise ResendError(f"notification {notification_id} is already waiting to be sent")
    previous = row.status
    now = utcnow()
    row.status = PENDING
    row.next_attempt_at = now
    row.lease_owner = None
    row.lease_expires_at = None
    row.error = None
    row.error_code = None
    row.requested_by = actor
    # A resend starts a fresh retry budget but keeps the age bound from the original event.
    row.attempts = 0
    row.updated_at = now
    session.add(
        AuditEntry(
            actor=actor,
            action="resend",
            target=f"notification:{row.id}",
            detail=json.dumps({"previous_status": previous}),
        )
    )
    if session.get_bind().dialect.name == "postgresql":
        # Wake idle workers now rather than at their next poll (delivered on commit).
        session.execute(text(NOTIFY))
    session.commit()
    return row
