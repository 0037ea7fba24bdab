"""`POST /webhooks/<source>`: verify the raw body, parse it, store it, answer in milliseconds.

No SMS is sent here; the worker does that from the outbox.
"""

from __future__ import annotations

import logging

from flask import Blueprint, Response, jsonify, request
from sqlalchemy import select
from sqlalchemy.exc import DBAPIError, OperationalError
from werkzeug.exceptions import RequestEntityTooLarge

from dispatch_notifier import outbox, platforms
from dispatch_notifier.db import get_session
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
    session = get_session()
    try:
        source = session.scalar(select(Source).where(Source.name == source_name))
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
        result = outbox.ingest(session, source, delivery_key, parsed, body)
    except platforms.WebhookError as exc:
        session.rollback()
        log.warning("webhook %s refused: %s %s", source_name, exc.status, exc.message)
        return error(exc.status, exc.code, exc.message, exc.problems)
    except (OperationalError, DBAPIError) as exc:
        session.rollback()
        # 503 makes the platform retry: an event we could not store is never acknowledged.
        log.error("webhook %s: database unavailable: %s", source_name, type(exc).__name__)
        return error(503, "database_unavailable", "the database is unavailable; retry later")
    log.info(
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


def _too_large() -> Response:
    return error(413, "payload_too_large", "the body is larger than DISPATCH_MAX_BODY_BYTES")


@bp.app_errorhandler(RequestEntityTooLarge)
def _handle_too_large(_exc: RequestEntityTooLarge) -> Response:
    return _too_large()
