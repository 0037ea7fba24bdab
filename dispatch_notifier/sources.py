"""Sources (connected shops): creating them, and keeping `DISPATCH_<PLATFORM>_SECRET` in effect.

A platform secret in the environment creates or updates the source named after the platform.
"""

from __future__ import annotations

import hashlib
import logging
import re

from flask import Flask
from sqlalchemy import inspect, select
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session

from dispatch_notifier import platforms
from dispatch_notifier.config import platform_secrets
from dispatch_notifier.db import get_db
from dispatch_notifier.models import Source

log = logging.getLogger(__name__)
NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")


def fingerprint(secret: str) -> str:
    """A short, non-reversible tag that tells secrets apart without revealing them."""
    return "sha256:" + hashlib.sha256(secret.encode()).hexdigest()[:12]


def validate_name(name: str) -> str:
    if not NAME_PATTERN.match(name):
        raise ValueError(
            "a source name must be 1-64 lower-case letters, digits, '-' or '_' (URL-safe)"
        )
    return name


def upsert_from_env(session: Session, platform: str, secret: str) -> str:
    """Create or update the source named `platform` so that `secret` is its current secret."""
    source = session.scalar(select(Source).where(Source.name == platform))
    if source is None:
        session.add(Source(name=platform, platform=platform, secrets=[secret]))
        return "created"
    if source.secrets[:1] != [secret]:
        source.secrets = [secret, *[s for s in source.secrets if s != secret][:1]]
        return "updated"
    return "unchanged"


def sync_env_sources(app: Flask) -> None:
    """Apply the DISPATCH_<PLATFORM>_SECRET settings, if the schema exists yet."""
    wanted = {p: s for p, s in platform_secrets(app.config).items() if p in platforms.names()}
    if not wanted:
        return
    try:
        _apply_env_secrets(app, wanted)
    except OperationalError as exc:
        # A process starting during a database outage must still come up: webhooks then answer
        # 503 and /readyz says why. The secrets are applied by the next start or `db upgrade`.
        log.warning(
            "could not apply DISPATCH_*_SECRET settings: database unavailable (%s)",
            type(exc).__name__,
        )


def _apply_env_secrets(app: Flask, wanted: dict[str, str]) -> None:
    db = get_db(app)
    with db.engine.connect() as connection:
        if not inspect(connection).has_table("sources"):
            return
    for platform, secret in wanted.items():
        with db.session() as session:
            change = upsert_from_env(session, platform, secret)
            try:
                session.commit()
            except IntegrityError:
                # Another process starting at the same moment created it first.
                continue
        if change != "unchanged":
            log.info("source %s %s from DISPATCH_%s_SECRET", platform, change, platform.upper())
