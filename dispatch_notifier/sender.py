"""Sending one claimed notification: enrich, choose the number, render, send, record.

The steps are separate functions so each rule is testable; `send_one` strings them together.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

from flask import Flask
from sqlalchemy import Connection, Row, bindparam, select
from sqlalchemy.exc import DBAPIError

from dispatch_notifier import gate, message_templates, phones, platforms, quiet, rendering
from dispatch_notifier.db import Database
from dispatch_notifier.events import DispatchEvent, template_context
from dispatch_notifier.group_commit import GroupCommit
from dispatch_notifier.models import (
    CLAIMABLE_STATUSES,
    FAILED,
    RETRYING,
    SENT,
    SKIPPED,
    UNKNOWN,
    Notification,
    Source,
    Suppression,
    utcnow,
)
from dispatch_notifier.outbox import (
    defer,
    finish,
    mark_sending,
    mark_sending_if_clear,
    write_outcome,
)
from dispatch_notifier.retry import RetryPolicy
from dispatch_notifier.sms import SendOutcome, SmsBackend

log = logging.getLogger(__name__)

_N, _S = Notification.__table__.c, Source.__table__.c
# The claimed row and what the send needs of its source, in one Core query (no ORM objects).
_LOAD_ANY = select(
    _N.id,
    _N.status,
    _N.lease_owner,
    _N.attempts,
    _N.kind,
    _N.event.label("event_json"),
    _N.requested_by,
    _N.created_at,
    _N.updated_at,
    _N.source_id,
    _S.name.label("source_name"),
    _S.shop_name.label("source_shop_name"),
    _S.default_country.label("source_default_country"),
    _S.default_locale.label("source_default_locale"),
    _S.timezone.label("source_timezone"),
    _S.quiet_hours.label("source_quiet_hours"),
    # Saves the round trip `gate.acquire` would make for it when no rate limit is set.
    gate.PAUSED_UNTIL.label("gate_paused_until"),
).join_from(Notification.__table__, Source.__table__, _S.id == _N.source_id)
_LOAD_MANY = _LOAD_ANY.where(_N.id.in_(bindparam("ids", expanding=True)))
_LOAD = _LOAD_ANY.where(_N.id == bindparam("id"))
_SUPPRESSED = (
    select(Suppression.__table__.c.id)
    .where(Suppression.__table__.c.phone == bindparam("phone"))
    .limit(1)
)

# A notification id, its new column values and its attempt row.
_Outcome = tuple[int, dict[str, object], dict[str, object]]


@dataclass(frozen=True)
class Prepared:
    """A notification ready to send, or the terminal outcome that makes sending pointless."""

    e164: str | None = None
    message: str | None = None
    template_version_id: int | None = None
    locale: str | None = None
    event: DispatchEvent | None = None
    outcome: str | None = None  # skipped | failed | retrying, when there is nothing to send
    reason: str | None = None
    error_code: str | None = None


@dataclass(frozen=True)
class _Started:
    """A row committed as `sending`: what to send, and what recording the outcome needs."""

    prepared: Prepared
    attempts: int
    created_at: datetime


class Sender:
    """Sends claimed notifications for one worker; safe to call from several threads."""

    def __init__(self, app: Flask, db: Database, backend: SmsBackend, owner: str) -> None:
        self.app = app
        self.db = db
        self.backend = backend
        self.owner = owner
        self.policy = RetryPolicy.from_config(app.config)
        self.default_country = app.config["DEFAULT_COUNTRY"]
        self.default_locale = app.config["DEFAULT_LOCALE"]
        self.rate_limit = gate.parse_rate_limit(app.config["SMS_RATE_LIMIT"])
        self.templates = message_templates.Lookup(float(app.config["TEMPLATE_CACHE_SECONDS"]))
        # Sends that finish together record their outcomes in one transaction: one pool
        # checkout and one commit for several. On PostgreSQL an outcome is one statement, so
        # one with nobody to share a transaction with commits by itself: one round trip.
        self.outcomes: GroupCommit[_Outcome, bool] = GroupCommit(
            db.engine,
            self._write_one,
            guard=db.writers,
            alone=db.single_statement if db.is_postgres else None,
        )

    def load(self, ids: list[int]) -> dict[int, Row]:
        """The claimed rows and their sources, in one query for a whole claim."""
        if not ids:
            return {}
        with self.db.read_engine.connect() as connection:  # only reads: no lock on SQLite
            return {row.id: row for row in connection.execute(_LOAD_MANY, {"ids": list(ids)})}

    def send_one(self, notification_id: int, row: Row | None = None) -> str | None:
        """Take one claimed row to its next state; returns that state (None if not ours).

        `row`: the notification as `load` read it at claim time, if the caller has it.
        """
        started = self._start_quickly(row) if row is not None else None
        if started is None:
            started = self._start(notification_id, row)
        if not isinstance(started, _Started):
            return started
        prepared = started.prepared
        started_at, clock = utcnow(), time.monotonic()
        try:
            outcome = self.backend.send(prepared.e164 or "", prepared.message or "")
        except Exception as exc:  # a bug in a backend must not leave the row in `sending`
            log.exception("SMS backend raised for notification %s", notification_id)
            outcome = SendOutcome(
                UNKNOWN, f"the SMS backend failed: {type(exc).__name__}", type(exc).__name__
            )
        duration_ms = int((time.monotonic() - clock) * 1000)
        return self._record(
            notification_id, outcome, started.attempts, started.created_at, started_at, duration_ms
        )

    def _start_quickly(self, row: Row) -> _Started | None:
        """The common case in one statement: nothing to hold, skip or decide, only to send.

        Returns None whenever anything is out of the ordinary (a rate limit to count, a pause,
        quiet hours, an outcome without sending, or the guarded update refused): `_start` then
        reads the row afresh and decides in a transaction, as if this had not been tried.
        """
        if self.rate_limit is not None or not self._ours(row):
            return None
        now = utcnow()
        if row.gate_paused_until is not None and row.gate_paused_until > now:
            return None
        if self._expired(row, now):
            return None
        event = DispatchEvent.from_json(row.event_json)
        if event.needs_enrichment:  # a call to the platform, to be made once, in `_start`
            return None
        with self.db.read_session() as session:  # used only on a template cache miss
            prepared = self.prepare(session, row, check_suppression=False, event=event)
        if prepared.outcome is not None or not self._quiet_hours_clear(row, prepared, now):
            return None
        fields = self._sending_fields(row, prepared, enriched=False)
        with self.db.writing():
            marked = mark_sending_if_clear(self.db.single_statement, row.id, self.owner, fields)
        return self._started(row, prepared) if marked else None

    def _start(self, notification_id: int, claimed: Row | None = None) -> _Started | str | None:
        """Everything before the HTTP call: returns what to send, or the state the row was taken
        to instead (None if it is not ours). `claimed`: the row as `load` read it, if known.

        A call to the shop's platform comes first, outside any transaction: it can take seconds,
        and on SQLite a writing transaction would hold every webhook up for that long.
        """
        fetched = self._fetch_details(notification_id, claimed)
        if fetched is None:
            return None
        with self.db.writing(), self.db.session() as session:
            row = session.connection().execute(_LOAD, {"id": notification_id}).first()
            if row is None or not self._ours(row):
                return None
            if self._expired(row):
                return self._finish(
                    session, row.id, FAILED, "expired: too old to be worth sending", "expired"
                )
            prepared = (
                fetched
                if isinstance(fetched, Prepared)
                else self.prepare(session, row, event=fetched)
            )
            if prepared.outcome is not None:
                return self._finish_prepared(session, row, prepared)
            fields = self._sending_fields(row, prepared)
            held = self._hold(session, row, prepared)
            if held is not None:
                return held
            if not mark_sending(session, row.id, self.owner, fields):
                return None
            return self._started(row, prepared)

    def _fetch_details(
        self, notification_id: int, claimed: Row | None
    ) -> DispatchEvent | Prepared | None:
        """The row's event, with what its platform's API adds when the webhook lacked it, or the
        outcome of a failed fetch; None if the row is not ours. Holds no transaction open.

        Only the lease holder writes a leased row's event, so this is still the row's event when
        `_start` takes its transaction.
        """
        row = claimed or self.load([notification_id]).get(notification_id)
        if row is None or not self._ours(row):
            return None
        event = DispatchEvent.from_json(row.event_json)
        if not event.needs_enrichment or self._expired(row):
            return event  # an expired row is failed in `_start`, not fetched for first
        with self.db.read_session() as session:
            source = session.get(Source, row.source_id)
        try:
            return platforms.get(source.platform).enrich(event, source)
        except platforms.EnrichmentError as exc:
            return Prepared(
                outcome=RETRYING if exc.retryable else FAILED,
                reason=str(exc),
                error_code="enrichment",
            )

    def _ours(self, row: Row) -> bool:
        return row.lease_owner == self.owner and row.status in CLAIMABLE_STATUSES

    def _expired(self, row: Row, now: datetime | None = None) -> bool:
        # A deliberate resend is not held to the age bound of the original event.
        return row.requested_by is None and self.policy.expired(row.created_at, now or utcnow())

    def _sending_fields(
        self, row: Row, prepared: Prepared, enriched: bool = True
    ) -> dict[str, object]:
        """The row's columns as of its send. `enriched=False`: the event is as stored."""
        fields: dict[str, object] = {
            "phone": prepared.e164,
            "phone_tail": prepared.e164[-4:] if prepared.e164 else None,
            "message": prepared.message,
            "template_version_id": prepared.template_version_id,
            "locale": prepared.locale,
            "backend": self.backend.name,
            "error": None,
            "error_code": None,
        }
        if enriched and prepared.event is not None and prepared.event.to_json() != row.event_json:
            fields["event_json"] = prepared.event.to_json()
        return fields

    @staticmethod
    def _started(row: Row, prepared: Prepared) -> _Started:
        created_at = row.created_at if row.requested_by is None else row.updated_at
        return _Started(prepared, row.attempts + 1, created_at)

    @staticmethod
    def _quiet_hours_clear(row: Row, prepared: Prepared, now: datetime) -> bool:
        """True if quiet hours do not hold this send. Unreadable ones are not clear here:
        `_start` then says so in the log once, and sends."""
        try:
            window = quiet.parse_quiet_hours(row.source_quiet_hours)
        except ValueError:
            return False
        return quiet.hold_until(window, prepared.e164, row.source_timezone, now) is None

    @staticmethod
    def _quiet_hours(row: Row) -> quiet.QuietHours | None:
        try:
            return quiet.parse_quiet_hours(row.source_quiet_hours)
        except ValueError:
            log.warning("source %s: ignoring unreadable quiet hours", row.source_name)
            return None

    def _hold(self, session, row: Row, prepared: Prepared) -> str | None:  # type: ignore[no-untyped-def]
        """Quiet hours, then the shared gate; a held row waits without using an attempt.

        Taking a gate slot stays in the transaction that marks the row `sending`.
        """
        now = utcnow()
        window = self._quiet_hours(row)
        until = quiet.hold_until(window, prepared.e164, row.source_timezone, now)
        if until is not None:
            reason = f"quiet hours ({window}): waiting until {until:%Y-%m-%d %H:%M} UTC"
            return self._defer(session, row, until, reason, "quiet_hours")
        until = gate.acquire(session, self.rate_limit, paused_until=row.gate_paused_until)
        if until is not None:
            return self._defer(session, row, None, None, None)
        return None

    def _defer(self, session, row: Row, until, reason, code) -> str:  # type: ignore[no-untyped-def]
        status, notification_id = row.status, row.id
        session.rollback()  # gives back any gate lock taken in this transaction
        defer(session, notification_id, self.owner, until, reason, code)
        log.debug("notification %s held until %s (%s)", notification_id, until, code or "gate")
        return status

    def prepare(  # type: ignore[no-untyped-def]
        self,
        session,
        row: Row,
        check_suppression: bool = True,
        event: DispatchEvent | None = None,
    ) -> Prepared:
        """Everything short of sending: number, suppression, template, text.

        `row` is a `_LOAD` row: the notification's columns and its source's, read in one query;
        `event`, its event if already parsed (and enriched: see `_fetch_details`).
        `check_suppression=False` leaves the suppression list to the caller's guarded update.
        """
        event = event or DispatchEvent.from_json(row.event_json)
        region = event.country or row.source_default_country or self.default_country
        choice = phones.choose(event.phones, region)
        if choice.e164 is None:
            return Prepared(
                outcome=SKIPPED, reason=choice.reason, error_code="no_phone", event=event
            )
        # Read fresh for every send: a number suppressed a moment ago must not be texted.
        if check_suppression and session.execute(_SUPPRESSED, {"phone": choice.e164}).first():
            return Prepared(
                outcome=SKIPPED,
                reason="suppressed",
                error_code="suppressed",
                e164=choice.e164,
                event=event,
            )
        fallback = row.source_default_locale or self.default_locale
        locale = event.locale or fallback
        template = self.templates.find(session, row.kind, locale, fallback)
        if template is None or template.version_id is None:
            return Prepared(
                outcome=FAILED,
                reason=f"no template for '{row.kind}'",
                error_code="template_missing",
                e164=choice.e164,
                event=event,
            )
        if not template.enabled:
            return Prepared(
                outcome=SKIPPED,
                reason="template disabled",
                error_code="template_disabled",
                e164=choice.e164,
                event=event,
            )
        context = template_context(event, shop_name=row.source_shop_name, locale=template.locale)
        try:
            message = rendering.render(template.body or "", context)
        except rendering.RenderError as exc:
            return Prepared(
                outcome=FAILED,
                reason=str(exc),
                error_code="template_error",
                e164=choice.e164,
                template_version_id=template.version_id,
                event=event,
            )
        return Prepared(choice.e164, message, template.version_id, template.locale, event)

    def _finish_prepared(self, session, row: Row, prepared: Prepared) -> str:  # type: ignore[no-untyped-def]
        values: dict[str, object] = {
            "phone": prepared.e164,
            "phone_tail": prepared.e164[-4:] if prepared.e164 else None,
            "template_version_id": prepared.template_version_id,
        }
        if prepared.event is not None:
            values["event_json"] = prepared.event.to_json()
        status = prepared.outcome or FAILED
        if status == RETRYING:
            when = self.policy.next_attempt(
                attempts=row.attempts + 1, created_at=row.created_at, now=utcnow()
            )
            values["attempts"] = row.attempts + 1
            if when is None:
                status = FAILED
                prepared = Prepared(
                    reason=f"gave up: {prepared.reason}", error_code=prepared.error_code
                )
            else:
                values["next_attempt_at"] = when
        return self._finish(session, row.id, status, prepared.reason, prepared.error_code, values)

    def _finish(
        self,
        session,
        notification_id: int,
        status: str,
        reason: str | None,  # type: ignore[no-untyped-def]
        code: str | None,
        values: dict[str, object] | None = None,
    ) -> str:
        finish(
            session,
            notification_id,
            self.owner,
            {"status": status, "error": reason, "error_code": code, **(values or {})},
        )
        log.info("notification %s: %s (%s)", notification_id, status, reason)
        return status

    def _record(
        self,
        notification_id: int,
        outcome: SendOutcome,
        attempts: int,
        created_at,
        started_at,
        duration_ms: int,
    ) -> str:  # type: ignore[no-untyped-def]
        now = utcnow()
        status, reason = outcome.status, outcome.reason
        values: dict[str, object] = {}
        if status == SENT:
            values["sent_at"] = now
            reason = outcome.reason if self.backend.name == "console" else None
        elif status == RETRYING:
            when = self.policy.next_attempt(
                attempts=attempts, created_at=created_at, now=now, not_before=outcome.retry_at
            )
            if when is None:
                status = FAILED
                reason = f"gave up after {attempts} attempts: {outcome.reason}"
            else:
                values["next_attempt_at"] = when
        attempt = {
            "started_at": started_at,
            "duration_ms": duration_ms,
            "backend": self.backend.name,
            "outcome": outcome.status,
            "http_status": outcome.http_status,
            "provider_error": outcome.error_code,
            "error_class": outcome.error_code,
            "detail": outcome.detail,
        }
        values.update(
            status=status, error=reason, error_code=None if status == SENT else outcome.error_code
        )
        if outcome.http_status == 429 or outcome.error_code == "ERROR_APIUSAGE_EXCEEDED":
            until = outcome.retry_at or now + self.policy.pause_without_reset
            try:
                with self.db.writing(), self.db.session() as session:
                    # Every worker, not only this one, waits until the provider's reset time.
                    gate.pause(session, until, f"provider rate limit ({outcome.error_code})")
                log.warning("provider rate limit: all workers paused until %s", until)
            except DBAPIError as exc:
                log.warning("could not record the provider pause: %s", type(exc).__name__)
        recorded = self._write_outcome(notification_id, values, attempt)
        if not recorded:
            log.warning("notification %s: lease lost before recording %s", notification_id, status)
        log.info("notification %s: %s%s", notification_id, status, f" ({reason})" if reason else "")
        return status

    def _write_outcome(
        self, notification_id: int, values: dict[str, object], attempt: dict[str, object]
    ) -> bool:
        """Record what the provider said, waiting out a database outage (bounded).

        The SMS has gone out (or may have): losing this write would turn `sent` into `unknown`.
        """
        deadline = time.monotonic() + RECORD_PATIENCE_SECONDS
        delay = 0.2
        while True:
            try:
                # Committed (with other threads' outcomes) before `run` returns.
                return self.outcomes.run((notification_id, values, attempt))
            except DBAPIError as exc:
                if time.monotonic() + delay > deadline:
                    raise
                log.warning(
                    "notification %s: database unavailable (%s); retrying the outcome write",
                    notification_id,
                    type(exc).__name__,
                )
                time.sleep(delay)
                delay = min(delay * 2, 5.0)

    def _write_one(self, connection: Connection, job: _Outcome) -> bool:
        """`sending` -> outcome, with its attempt row; guarded by the owner, so a row another
        worker or a person has taken over is not overwritten (a sweep's `unknown`, a guess, is).
        False if the lease was lost (and nothing was written)."""
        notification_id, values, attempt = job
        return write_outcome(connection, notification_id, self.owner, values, attempt)


# How long a worker keeps trying to record an outcome while the database is down.
RECORD_PATIENCE_SECONDS = 120.0


def lease_for(app: Flask) -> timedelta:
    return timedelta(seconds=float(app.config["LEASE_SECONDS"]))
