"""The shop owner's console under `/admin`: login, dashboard, sources, templates, send log.

`init_app` also turns on what every page relies on: CSRF protection, security headers, login.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from flask import (
    Blueprint,
    Flask,
    Response,
    current_app,
    flash,
    g,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from flask.sessions import SecureCookieSessionInterface
from flask_wtf.csrf import CSRFError, CSRFProtect

from dispatch_notifier import users
from dispatch_notifier.db import get_db, get_read_session, get_session
from dispatch_notifier.models import AuditEntry, User

bp = Blueprint("admin", __name__, url_prefix="/admin")
csrf = CSRFProtect()

# No inline script or style anywhere: every script and style is a file under /static.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'; "
    "object-src 'none'"
)
PUBLIC_ENDPOINTS = {"admin.login"}
SECURITY_HEADERS = (
    ("Content-Security-Policy", CONTENT_SECURITY_POLICY),
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "same-origin"),
)


class ConsoleSessions(SecureCookieSessionInterface):
    """Login sessions exist only under /admin: webhooks and the API never read or set one.

    Why: a webhook has no cookie to read, and verifying a cookie it might carry, then deciding
    whether to set one, cost about a tenth of a webhook's CPU.
    """

    def open_session(self, app: Flask, request: Any) -> Any:
        if not request.path.startswith("/admin"):
            return self.make_null_session(app)
        return super().open_session(app, request)


def init_app(app: Flask) -> None:
    from dispatch_notifier import webhooks
    from dispatch_notifier.admin import views  # noqa: F401 - registers the pages on `bp`

    # A form is valid as long as the login session is (12 h), not Flask-WTF's default hour:
    # an owner may leave the editor open over lunch.
    app.config.setdefault("WTF_CSRF_TIME_LIMIT", None)
    csrf.init_app(app)
    # Webhooks are authenticated by their HMAC signature, the API by its bearer token.
    csrf.exempt(webhooks.bp)
    if "api" in app.blueprints:
        csrf.exempt(app.blueprints["api"])
    app.register_blueprint(bp)
    app.session_interface = ConsoleSessions()
    app.after_request(_security_headers)
    app.register_error_handler(CSRFError, _csrf_error)


def _security_headers(response: Response) -> Response:
    wanted = list(SECURITY_HEADERS)
    if current_app.config.get("SECURE_COOKIES"):
        wanted.append(("Strict-Transport-Security", "max-age=31536000"))
    if request.path.startswith("/admin"):
        # Pages show customer data: never keep them in shared caches or the back/forward cache.
        wanted.append(("Cache-Control", "no-store"))
    # A view may set its own. One pass over the names present: `name in headers` raises and
    # catches a KeyError per absent name, which cost a webhook more than the rest of this hook.
    headers = response.headers
    present = set(headers.keys(lower=True))
    for name, value in wanted:
        if name.lower() not in present:
            headers.add(name, value)
    return response


def _csrf_error(exc: CSRFError) -> Any:
    if request.path.startswith("/admin"):
        return (
            render_template(
                "admin/error.html",
                title="The form expired",
                message="This form was not accepted (missing or expired security token). "
                "Go back, reload the page and try again.",
            ),
            400,
        )
    from flask import jsonify

    return jsonify({"error": "csrf_failed", "message": exc.description}), 400


@bp.before_request
def _load_user() -> Any:
    user_id = session.get("user_id")
    # Only read: a page that reads nothing else must not take SQLite's write lock for it.
    reader = get_read_session()
    g.user = reader.get(User, user_id) if user_id else None
    # End that read here: its connection goes back to the pool for the page's own queries, and
    # on SQLite a page read after the request's write sees that write, not the snapshot
    # taken here.
    reader.commit()
    if g.user is None and request.endpoint not in PUBLIC_ENDPOINTS:
        if request.method == "GET":
            return redirect(url_for("admin.login", next=request.full_path.rstrip("?")))
        return redirect(url_for("admin.login"))
    return None


def audit(action: str, target: str | None, detail: str | None = None) -> None:
    """Record who did what (added to the request's session; the caller commits)."""
    get_session().add(
        AuditEntry(actor=g.user.username, action=action, target=target, detail=detail)
    )


def _safe_next(target: str | None) -> str:
    # Only a path inside the console: never an absolute URL (open redirect).
    if target and target.startswith("/admin") and not urlsplit(target).netloc:
        return target
    return url_for("admin.dashboard")


@bp.route("/login", methods=["GET", "POST"])
def login() -> Any:
    if request.method == "GET":
        return render_template("admin/login.html", next=request.args.get("next", ""))
    username = (request.form.get("username") or "").strip()
    password = request.form.get("password") or ""
    result = users.authenticate(get_db(), username, password, request.remote_addr)
    if result.limited:
        return (
            render_template(
                "admin/login.html",
                error="Too many failed attempts. Wait 15 minutes, then try again.",
                next=request.form.get("next", ""),
                username=username,
            ),
            429,
        )
    if result.user is None:
        current_app.logger.info("failed console login from %s", request.remote_addr)
        return (
            render_template(
                "admin/login.html",
                error="Invalid username or password.",
                next=request.form.get("next", ""),
                username=username,
            ),
            401,
        )
    # A fresh session at login: whatever an attacker planted before is gone (session fixation).
    session.clear()
    session["user_id"] = result.user.id
    session.permanent = True
    return redirect(_safe_next(request.form.get("next")))


@bp.post("/logout")
def logout() -> Any:
    session.clear()
    flash("You are logged out.", "info")
    return redirect(url_for("admin.login"))


@bp.errorhandler(404)
def _not_found(_exc: Exception) -> Any:
    return (
        render_template(
            "admin/error.html",
            title="Not found",
            message="There is nothing here: it may have been removed, or the link is mistyped.",
        ),
        404,
    )
