"""`/healthz` (the process answers) and `/readyz` (database reachable, schema up to date).

Load balancers and orchestrators poll these; they never change anything.
"""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from dispatch_notifier import migrate
from dispatch_notifier.db import get_db

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz() -> Response:
    return jsonify({"status": "ok"})


@bp.get("/readyz")
def readyz() -> tuple[Response, int]:
    try:
        with get_db().read_engine.connect() as connection:
            current = migrate.current_revision(connection)
    except Exception as exc:  # any failure to reach the database means "not ready"
        return jsonify({"status": "unavailable", "database": type(exc).__name__}), 503
    head = migrate.head_revision()
    if current != head:
        return jsonify({"status": "migrations_pending", "current": current, "head": head}), 503
    return jsonify({"status": "ready", "revision": current}), 200
