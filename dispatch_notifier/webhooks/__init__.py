"""`POST /webhooks/<source>`: verify the raw body, parse it, store it, answer in milliseconds.

No SMS is sent here; the worker does that from the outbox.
"""

from __future__ import annotations

import logging
import threading
import time

from flask import Blueprint, Response, current_app, jsonify, request
from sqlalchemy import select
from sqlalchemy.exc import DBAPIError, OperationalError
from werkzeug.exceptions import RequestEntityTooLarge

from dispatch_notifier import outbox, platforms
from dispatch_notifier.db import Database, get_db
from dispatch_notifier.models import Source

log = logging.getLogger(__name__)
bp = Blueprint("webhooks", __name__)


def error(status: int, code: str, message: str, problems: list[str] | None = None) -> Response:
    body: dict[str, object] = {"error": code, "message": message}
    if problems:
        body["problems"] = problems
    response = jsonify(body)
    response.status_code = status
    return response


@bp.post("/webhooks/<source_name>")
def receive(source_name: str) -> Response:
    try:
        body = request.get_data(cache=True)
    except RequestEntityTooLarge:
        return _too_large()
    db = get_db()
    try:
        source = _sources.get(db, source_name)
        if source is None or not source.enabled:
            return error(404, "unknown_source", f"no enabled source named {source_name!r}")
        platform = platforms.get(source.platform)
        parsed = platform.unsigned_ping(body, request.headers)
        if parsed is None:
            platform.verify(body, request.headers, source.secrets)
            parsed = platform.parse(body, request.headers, source)
            delivery_key = platform.delivery_id(body, request.headers)
        else:
            delivery_key = None
        result = outbox.ingest(db, source, delivery_key, parsed, body)
    except platforms.WebhookError as exc:
        log.warning("webhook %s refused: %s %s", source_name, exc.status, exc.message)
        return error(exc.status, exc.code, exc.message, exc.problems)
    except (OperationalError, DBAPIError) as exc:
        # 503 makes the platform retry: an event we could not store is never acknowledged.
        log.error("webhook %s: database unavailable: %s", source_name, type(exc).__name__)
        return error(503, "database_unavailable", "the database is unavailable; retry later")
    # Every delivery is a row in `deliveries` (console: Shops); the line is for debugging only.
    log.debug(
        "webhook %s topic=%s -> %s (new notifications: %d)",
        source_name,
        parsed.topic,
        result.status,
        len(result.created),
    )
    body_out: dict[str, object] = {"status": result.status, "notifications": result.created}
    if result.reason:
        body_out["reason"] = result.reason
    return jsonify(body_out)


class SourceCache:
    """Sources by name, kept for a moment so a burst of webhooks does not re-read the same row.

    Also keeps the lookup out of the ingest transaction: on SQLite a writing transaction holds
    the write lock, which verifying and parsing would otherwise hold too. The lookup itself only
    reads, so it takes no lock: a stream of posts to names that do not exist (no secret needed)
    cannot keep the lock from the real webhooks. Changes made elsewhere (a disabled source, a
    rotated secret) apply within `SOURCE_CACHE_SECONDS`.
    """

    def __init__(self) -> None:
        self._entries: dict[tuple[int, str], tuple[float, Source | None]] = {}
        self._lock = threading.Lock()

    def get(self, db: Database, name: str) -> Source | None:
        ttl = float(current_app.config["SOURCE_CACHE_SECONDS"])
        key = (id(current_app._get_current_object()), name)  # type: ignore[attr-defined]
        now = time.monotonic()
        with self._lock:
            cached = self._entries.get(key)
        if cached is not None and now - cached[0] < ttl:
            return cached[1]
        with db.read_session() as session:
            source = session.scalar(select(Source).where(Source.name == name))
            if source is not None:
                session.expunge(source)
        if ttl > 0:
            with self._lock:
                if len(self._entries) > 10_000:  # unknown names must not grow it forever
                    self._entries.clear()
                self._entries[key] = (now, source)
        return source


_sources = SourceCache()


def _too_large() -> Response:
    return error(413, "payload_too_large", "the body is larger than DISPATCH_MAX_BODY_BYTES")


@bp.app_errorhandler(RequestEntityTooLarge)
def _handle_too_large(_exc: RequestEntityTooLarge) -> Response:
    return _too_large()
