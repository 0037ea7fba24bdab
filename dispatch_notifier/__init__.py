"""dispatch-notifier: shop "order dispatched" webhooks in, exactly one SMS per shipment out.

`create_app` builds the Flask application; see the README for running and configuring it.
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException

__all__ = ["create_app"]


def create_app(test_config: dict[str, Any] | None = None) -> Flask:
    """Build the app: settings, database, blueprints, CLI commands."""
    import os

    instance_path = (test_config or {}).get("INSTANCE_PATH") or os.environ.get(
        "DISPATCH_INSTANCE_PATH"
    )
    app = Flask(__name__, instance_relative_config=True, instance_path=instance_path or None)
    from dispatch_notifier import config, db, health, sources, webhooks

    config.load(app, test_config)
    _configure_logging(app)
    db.init_app(app)
    app.register_blueprint(health.bp)
    app.register_blueprint(webhooks.bp)
    _register_optional_blueprints(app)
    app.register_error_handler(HTTPException, _json_errors_outside_admin)

    from dispatch_notifier import cli

    cli.init_app(app)
    sources.sync_env_sources(app)
    return app


def _register_optional_blueprints(app: Flask) -> None:
    """Areas that plug in without the core knowing their internals."""
    import importlib

    for module_name in ("dispatch_notifier.api", "dispatch_notifier.admin"):
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            continue
        module.init_app(app)


def _json_errors_outside_admin(exc: HTTPException) -> Response | HTTPException:
    if request.path.startswith("/admin"):
        return exc
    response = jsonify(
        {"error": (exc.name or "error").lower().replace(" ", "_"), "message": exc.description}
    )
    response.status_code = exc.code or 500
    return response


def _configure_logging(app: Flask) -> None:
    level = getattr(logging, str(app.config["LOG_LEVEL"]).upper(), logging.INFO)
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("dispatch_notifier").setLevel(level)
    # Alembic announces its context on every migration run; only `db upgrade` wants that.
    logging.getLogger("alembic").setLevel(logging.WARNING)
