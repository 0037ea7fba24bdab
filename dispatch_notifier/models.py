"""The database schema as typed SQLAlchemy models; Alembic migrations in `migrations/` create it.

Unique keys here are what keep the service idempotent: the database, not Python, decides duplicates.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# The send log's statuses (DESIGN.md, "Send outcomes").
PENDING, SENDING, SENT, FAILED, UNKNOWN, SKIPPED, RETRYING = (
    "pending",
    "sending",
    "sent",
    "failed",
    "unknown",
    "skipped",
    "retrying",
)
STATUSES = (PENDING, SENDING, SENT, FAILED, UNKNOWN, SKIPPED, RETRYING)
TERMINAL_STATUSES = (SENT, FAILED, UNKNOWN, SKIPPED)
CLAIMABLE_STATUSES = (PENDING, RETRYING)
# The same, as SQL with the values written out: a partial index's WHERE, and the claim query's
# condition, which must read the same for a planner to prove that the index covers it (a bound
# parameter proves nothing; PostgreSQL's generic plans bind every value).
CLAIMABLE_SQL = f"status IN ({', '.join(repr(status) for status in CLAIMABLE_STATUSES)})"


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every database (SQLite would hand back naive ones)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map: ClassVar[dict[Any, Any]] = {datetime: UTCDateTime(), dict[str, Any]: JSON}


class Source(Base):
    """One connected shop: its platform, secrets and defaults, served at /webhooks/<name>."""

    __tablename__ = "sources"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    platform: Mapped[str] = mapped_column(String(32))
    # JSON list, newest first; several are accepted while a secret is being rotated.
    secrets_json: Mapped[str] = mapped_column("secrets", Text, default="[]")
    shop_name: Mapped[str | None] = mapped_column(String(200))
    default_country: Mapped[str | None] = mapped_column(String(2))
    default_locale: Mapped[str | None] = mapped_column(String(16))
    timezone: Mapped[str | None] = mapped_column(String(64))
    quiet_hours: Mapped[str | None] = mapped_column(String(16))  # "21:00-08:00"
    api_credentials_json: Mapped[str | None] = mapped_column("api_credentials", Text)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    last_event_at: Mapped[datetime | None]
    last_event_result: Mapped[str | None] = mapped_column(String(32))

    @property
    def secrets(self) -> list[str]:
        return list(json.loads(self.secrets_json or "[]"))

    @secrets.setter
    def secrets(self, values: list[str]) -> None:
        self.secrets_json = json.dumps(list(values))

    @property
    def api_credentials(self) -> dict[str, Any]:
        return dict(json.loads(self.api_credentials_json or "{}"))

    @api_credentials.setter
    def api_credentials(self, values: dict[str, Any] | None) -> None:
        self.api_credentials_json = json.dumps(values) if values else None


class Delivery(Base):
    """One webhook request as received; unique per platform delivery id."""

    __tablename__ = "deliveries"
    __table_args__ = (UniqueConstraint("source_id", "delivery_id"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    source_id: Mapped[int] = mapped_column(ForeignKey("sources.id"))
    # NULL where the platform's id is not stable across retries (WooCommerce).
    delivery_id: Mapped[str | None] = mapped_column(String(255))
    topic: Mapped[str | None] = mapped_column(String(128))
    result: Mapped[str] = mapped_column(String(32))  # accepted | duplicate | ignored | ping
    detail: Mapped[str | None] = mapped_column(Text)
    payload: Mapped[str | None] = mapped_column(Text)
    received_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    duplicates: Mapped[int] = mapped_column(default=0)
    last_duplicate_at: Mapped[datetime | None]


class Notification(Base):
    """One SMS to send for one shipment: the outbox row and the send log entry.

    Unique per (source, order, shipment, kind): however often a shipment is reported, one row.
    """

    __tablename__ = "notifications"
    __table_args__ = (
        UniqueConstraint("source_id", "order_id", "shipment_id", "kind"),
        # The claim's queue, in claim order, holding only the rows waiting to be sent: claiming
        # reads as many entries as it takes rows instead of sorting the whole backlog.
        Index(
            "ix_notifications_claimable",
            "next_attempt_at",
            "id",
            postgresql_where=text(CLAIMABLE_SQL),
            sqlite_where=text(CLAIMABLE_SQL),
        ),
        Index("ix_notifications_created", "created_at", "id"),
        Index("ix_notifications_status_created", "status", "created_at", "id"),
        Index("ix_notifications_source_created", "source_id", "created_at", "id"),
        Index("ix_notifications_order_number", "order_number"),
        Index("ix_notifications_phone_tail", "phone_tail"),
    )

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    source_id: Mapped[int] = mapped_column(ForeignKey("sources.id"))
    delivery_id: Mapped[int | None] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), ForeignKey("deliveries.id")
    )
    order_id: Mapped[str] = mapped_column(String(128))
    shipment_id: Mapped[str] = mapped_column(String(128))
    kind: Mapped[str] = mapped_column(String(32), default="dispatched")
    order_number: Mapped[str | None] = mapped_column(String(128))
    event_json: Mapped[str] = mapped_column("event", Text)
    status: Mapped[str] = mapped_column(String(16), default=PENDING)
    phone: Mapped[str | None] = mapped_column(String(32))  # E.164
    phone_tail: Mapped[str | None] = mapped_column(String(4))
    locale: Mapped[str | None] = mapped_column(String(16))
    message: Mapped[str | None] = mapped_column(Text)
    template_version_id: Mapped[int | None] = mapped_column(ForeignKey("template_versions.id"))
    backend: Mapped[str | None] = mapped_column(String(32))
    error: Mapped[str | None] = mapped_column(Text)
    error_code: Mapped[str | None] = mapped_column(String(64))
    attempts: Mapped[int] = mapped_column(default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(default=utcnow)
    lease_owner: Mapped[str | None] = mapped_column(String(128))
    lease_expires_at: Mapped[datetime | None]
    # Who last asked for a deliberate resend (None for the automatic first send).
    requested_by: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    sent_at: Mapped[datetime | None]

    source: Mapped[Source] = relationship(lazy="joined", innerjoin=True)
    attempt_rows: Mapped[list[Attempt]] = relationship(
        back_populates="notification", order_by="Attempt.id", cascade="all, delete-orphan"
    )

    @property
    def event(self) -> dict[str, Any]:
        return dict(json.loads(self.event_json))


class Attempt(Base):
    """One try at sending a notification: when, how long, and what the provider said."""

    __tablename__ = "attempts"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    notification_id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), ForeignKey("notifications.id"), index=True
    )
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    duration_ms: Mapped[int | None]
    backend: Mapped[str | None] = mapped_column(String(32))
    outcome: Mapped[str] = mapped_column(String(16))
    http_status: Mapped[int | None]
    provider_error: Mapped[str | None] = mapped_column(String(255))
    error_class: Mapped[str | None] = mapped_column(String(64))
    detail: Mapped[str | None] = mapped_column(Text)

    notification: Mapped[Notification] = relationship(back_populates="attempt_rows")


class MessageTemplate(Base):
    """The editable SMS template for one event kind and locale; its text lives in versions."""

    __tablename__ = "message_templates"
    __table_args__ = (UniqueConstraint("kind", "locale"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    locale: Mapped[str] = mapped_column(String(16))
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    current_version_id: Mapped[int | None] = mapped_column(
        ForeignKey("template_versions.id", use_alter=True)
    )
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    current_version: Mapped[TemplateVersion | None] = relationship(
        foreign_keys=[current_version_id], lazy="joined", post_update=True
    )


class TemplateVersion(Base):
    """An immutable saved text of a template: who saved it, when, and what it said."""

    __tablename__ = "template_versions"
    __table_args__ = (UniqueConstraint("template_id", "number"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    template_id: Mapped[int] = mapped_column(ForeignKey("message_templates.id"), index=True)
    number: Mapped[int]
    body: Mapped[str] = mapped_column(Text)
    author: Mapped[str] = mapped_column(String(64))
    note: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class User(Base):
    """A console user; created from the command line only."""

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_login_at: Mapped[datetime | None]


class LoginAttempt(Base):
    """A failed login, kept briefly so that guessing is rate limited across processes."""

    __tablename__ = "login_attempts"
    __table_args__ = (Index("ix_login_attempts_key_at", "key", "attempted_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    key: Mapped[str] = mapped_column(String(128))
    attempted_at: Mapped[datetime] = mapped_column(default=utcnow)


class AuditEntry(Base):
    """Who changed what, and when: template edits, resends, source changes."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(64))
    target: Mapped[str | None] = mapped_column(String(128))
    detail: Mapped[str | None] = mapped_column(Text)


class Suppression(Base):
    """A number that must never be texted."""

    __tablename__ = "suppressions"

    id: Mapped[int] = mapped_column(primary_key=True)
    phone: Mapped[str] = mapped_column(String(32), unique=True)
    reason: Mapped[str | None] = mapped_column(String(255))
    created_by: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class SendGate(Base):
    """Shared state of the provider gate: the rate-limit window and a pause after a 429.

    One row per name; every worker on every machine consults it, so limits hold globally.
    """

    __tablename__ = "send_gate"

    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    window_start: Mapped[datetime | None]
    window_count: Mapped[int] = mapped_column(default=0)
    paused_until: Mapped[datetime | None]
    pause_reason: Mapped[str | None] = mapped_column(String(255))
