"""The JSON API under `/api/v1`: send log, notification detail, deliberate resend, SMS counter.

Bearer token `DISPATCH_API_TOKEN`; errors are JSON with a stable `error` code (docs/openapi.yaml).
"""

from __future__ import annotations

import hmac
from typing import Any

from flask import Blueprint, Flask, Response, current_app, jsonify, request
from sqlalchemy import select
from sqlalchemy.orm import Session

from dispatch_notifier import sendlog, template_editor
from dispatch_notifier.cli import record
from dispatch_notifier.db import get_read_session, get_session
from dispatch_notifier.models import Delivery, MessageTemplate, Notification, TemplateVersion

bp = Blueprint("api", __name__, url_prefix="/api/v1")
MAX_COUNT_TEXT = 10_000


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)


def api_error(http_status: int, code: str, message: str, **extra: Any) -> Response:
    response = jsonify({"error": code, "message": message, **extra})
    response.status_code = http_status
    if http_status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="dispatch-notifier"'
    return response


@bp.before_request
def _require_token() -> Response | None:
    expected = current_app.config.get("API_TOKEN")
    if not expected:
        return api_error(
            404, "api_disabled", "the JSON API is off: set DISPATCH_API_TOKEN to turn it on"
        )
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not given:
        return api_error(401, "unauthorized", "send the header 'Authorization: Bearer <token>'")
    if not hmac.compare_digest(given.strip().encode(), str(expected).encode()):
        return api_error(401, "unauthorized", "the bearer token is not valid")
    return None


@bp.get("/notifications")
def list_notifications() -> Response:
    session = get_read_session()
    try:
        filters = sendlog.parse_filters(request.args)
        limit = sendlog.parse_limit(request.args.get("limit"))
        result = sendlog.page(session, filters, limit, request.args.get("cursor") or None)
    except sendlog.FilterError as exc:
        return api_error(400, "invalid_parameter", str(exc), parameter=exc.field)
    return jsonify(
        {
            "items": [record(row, result.attempts[row.id]) for row in result.rows],
            "next_cursor": result.next_cursor,
        }
    )


def detail(session: Session, row: Notification) -> dict[str, Any]:
    """A notification with its attempts, template version, parsed event and raw webhook body."""
    counts = sendlog.attempt_counts(session, [row])
    data = record(row, counts[row.id])
    data["attempt_details"] = [
        {
            "started_at": _iso(a.started_at),
            "duration_ms": a.duration_ms,
            "backend": a.backend,
            "outcome": a.outcome,
            "http_status": a.http_status,
            "provider_error": a.provider_error,
            "detail": a.detail,
        }
        for a in row.attempt_rows
    ]
    version = (
        session.get(TemplateVersion, row.template_version_id) if row.template_version_id else None
    )
    template = session.get(MessageTemplate, version.template_id) if version else None
    data["template_version"] = (
        {
            "id": version.id,
            "template": f"{template.kind}/{template.locale}" if template else None,
            "number": version.number,
            "author": version.author,
            "created_at": _iso(version.created_at),
        }
        if version
        else None
    )
    data["requested_by"] = row.requested_by
    data["locale"] = row.locale
    event = row.event
    event["phones"] = ["(hidden)" for _ in event.get("phones") or []]
    data["event"] = event
    delivery = session.get(Delivery, row.delivery_id) if row.delivery_id else None
    data["delivery"] = (
        {"id": delivery.id, "topic": delivery.topic, "received_at": _iso(delivery.received_at)}
        if delivery
        else None
    )
    return data


@bp.get("/notifications/<int:notification_id>")
def get_notification(notification_id: int) -> Response:
    session = get_read_session()
    row = session.get(Notification, notification_id)
    if row is None:
        return api_error(404, "not_found", f"no notification {notification_id}")
    return jsonify(detail(session, row))


@bp.post("/notifications/<int:notification_id>/resend")
def resend(notification_id: int) -> Response:
    from dispatch_notifier.resend import ResendError, resend_notification

    session = get_session()
    row = session.get(Notification, notification_id)
    if row is None:
        return api_error(404, "not_found", f"no notification {notification_id}")
    payload = request.get_json(silent=True) or {}
    confirmed = payload.get("confirm") is True or request.args.get("confirm") == "true"
    if row.status in ("sent", "unknown") and not confirmed:
        warning = (
            "was already sent" if row.status == "sent" else "may already have been sent (unknown)"
        )
        return api_error(
            409,
            "confirmation_required",
            f'notification {notification_id} {warning}; send {{"confirm": true}} to resend',
            current_status=row.status,
        )
    try:
        queued = resend_notification(session, notification_id, "api")
    except ResendError as exc:
        return api_error(409, "not_resendable", str(exc))
    response = jsonify(record(queued, sendlog.attempt_counts(session, [queued])[queued.id]))
    response.status_code = 202
    return response


@bp.post("/sms/count")
def count_sms() -> Response:
    """Characters, encoding and segments of a text: the counter the template editor shows."""
    payload = request.get_json(silent=True)
    if not isinstance(payload, dict) or not isinstance(payload.get("text"), str):
        return api_error(400, "invalid_body", 'send a JSON object {"text": "..."}')
    text = payload["text"]
    if len(text) > MAX_COUNT_TEXT:
        return api_error(413, "text_too_long", f"text is over {MAX_COUNT_TEXT} characters")
    from dispatch_notifier import segments

    data = template_editor.counter(text)
    data["gsm_safe"] = segments.gsm_safe(text)
    return jsonify(data)


@bp.post("/templates/preview")
def preview_template() -> Response:
    """Render a template body with a platform's sample data, in the real sandbox."""
    payload = request.get_json(silent=True)
    if not isinstance(payload, dict) or not isinstance(payload.get("body"), str):
        return api_error(400, "invalid_body", 'send a JSON object {"body": "...", ...}')
    result = template_editor.preview(
        payload["body"],
        str(payload.get("platform") or "shopify"),
        str(payload.get("locale") or "en"),
        current_app.config["MAX_TEMPLATE_SEGMENTS"],
    )
    return jsonify(result.to_dict())


@bp.get("/sources")
def list_sources() -> Response:
    from dispatch_notifier.models import Source
    from dispatch_notifier.sources import fingerprint

    rows = get_read_session().scalars(select(Source).order_by(Source.name)).all()
    return jsonify(
        {
            "items": [
                {
                    "name": s.name,
                    "platform": s.platform,
                    "enabled": s.enabled,
                    "webhook_path": f"/webhooks/{s.name}",
                    "secret_fingerprints": [fingerprint(x) for x in s.secrets],
                    "last_event_at": _iso(s.last_event_at),
                    "last_event_result": s.last_event_result,
                }
                for s in rows
            ]
        }
    )


def _iso(value: Any) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value else None
