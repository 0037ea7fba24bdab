"""The console's pages: dashboard, sources, template editor with versions, send log with resend.

GET never changes anything; every change is a CSRF-checked POST and is written to the audit log.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import re
import secrets as secrets_module
from datetime import UTC, datetime, timedelta
from typing import Any

from flask import (
    Response,
    abort,
    current_app,
    flash,
    g,
    jsonify,
    redirect,
    render_template,
    request,
    stream_with_context,
    url_for,
)
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from dispatch_notifier import message_templates, phones, platforms, rendering, sendlog
from dispatch_notifier.admin import audit, bp
from dispatch_notifier.config import platform_secrets
from dispatch_notifier.db import get_db, get_read_session, get_session
from dispatch_notifier.events import TEMPLATE_VARIABLES
from dispatch_notifier.models import (
    FAILED,
    STATUSES,
    UNKNOWN,
    AuditEntry,
    Delivery,
    MessageTemplate,
    Notification,
    Source,
    TemplateVersion,
    utcnow,
)
from dispatch_notifier.samples import sample_context, sample_for
from dispatch_notifier.sources import fingerprint
from dispatch_notifier.template_editor import counter, preview, save_problems

# Failures a shop owner must act on: no message goes out until they do.
ATTENTION_CODES = {
    "ERROR_SMS_SENDNOTPERMITTED": "No SMS credit left: top up the Dotdigital account.",
    "ERROR_INVALID_LOGIN": "Dotdigital refused the API user's credentials.",
    "ERROR_APIUSER_INVALID": "The Dotdigital API user is invalid.",
    "ERROR_ACCOUNT_INVALID": "The Dotdigital account is invalid.",
    "ERROR_FEATURENOTACTIVE": "SMS is not enabled on the Dotdigital account.",
    "ERROR_SEND_LIMITEXCEEDED": "The Dotdigital send allowance is used up.",
    "HTTP_401": "Dotdigital refused the credentials (HTTP 401).",
    "HTTP_403": "Dotdigital refused access (HTTP 403): wrong region or credentials.",
    "template_error": "The message template fails to render.",
    "template_missing": "No message template for an event.",
}
KIND_PATTERN = re.compile(r"^[a-z_]{1,32}$")
LOCALE_PATTERN = re.compile(r"^[A-Za-z]{2,3}([_-][A-Za-z0-9]{2,8})?$")


# --- dashboard -----------------------------------------------------------------------------


@bp.get("/")
def dashboard() -> str:
    db = get_read_session()  # the day's counts, however many rows, hold no webhook up
    now = utcnow()
    today = now.replace(hour=0, minute=0, second=0, microsecond=0)
    by_status = dict(
        db.execute(
            select(Notification.status, func.count())
            .where(Notification.created_at >= today)
            .group_by(Notification.status)
        ).all()
    )
    week = now - timedelta(days=7)
    attention = []
    for code, count, last_at in db.execute(
        select(Notification.error_code, func.count(), func.max(Notification.updated_at))
        .where(
            Notification.status == FAILED,
            Notification.error_code.in_(list(ATTENTION_CODES)),
            Notification.created_at >= week,
        )
        .group_by(Notification.error_code)
    ).all():
        attention.append({"code": code, "count": count, "last_at": last_at, **_advice(code)})
    unknown = db.scalar(
        select(func.count())
        .select_from(Notification)
        .where(Notification.status == UNKNOWN, Notification.created_at >= week)
    )
    sources = db.scalars(select(Source).order_by(Source.name)).all()
    return render_template(
        "admin/dashboard.html",
        by_status={s: by_status.get(s, 0) for s in STATUSES},
        total_today=sum(by_status.values()),
        attention=sorted(attention, key=lambda a: -a["count"]),
        unknown=unknown,
        sources=sources,
        backend=current_app.config["SMS_BACKEND"],
    )


def _advice(code: str) -> dict[str, str]:
    return {"advice": ATTENTION_CODES.get(code, code)}


# --- sources -------------------------------------------------------------------------------


def webhook_url(source: Source) -> str:
    base = current_app.config.get("PUBLIC_URL") or request.url_root
    return f"{base.rstrip('/')}/webhooks/{source.name}"


def _env_managed() -> set[str]:
    return set(platform_secrets(current_app.config))


@bp.get("/sources")
def sources_page(revealed: dict[int, str] | None = None, status: int = 200) -> Any:
    db = get_read_session()
    rows = db.scalars(select(Source).order_by(Source.name)).all()
    since = utcnow() - timedelta(hours=24)
    counts: dict[int, dict[str, int]] = {}
    for source_id, status_name, count in db.execute(
        select(Notification.source_id, Notification.status, func.count())
        .where(Notification.created_at >= since)
        .group_by(Notification.source_id, Notification.status)
    ).all():
        counts.setdefault(source_id, {})[status_name] = count
    last_deliveries = {}
    for source in rows:
        last_deliveries[source.id] = db.scalar(
            select(Delivery)
            .where(Delivery.source_id == source.id)
            .order_by(Delivery.received_at.desc(), Delivery.id.desc())
            .limit(1)
        )
    body = render_template(
        "admin/sources.html",
        sources=rows,
        counts=counts,
        last_deliveries=last_deliveries,
        webhook_url=webhook_url,
        fingerprint=fingerprint,
        revealed=revealed or {},
        env_managed=_env_managed(),
        platform_titles={name: platforms.get(name).title for name in platforms.names()},
    )
    return body, status


def _source_or_404(source_id: int) -> Source:
    source = get_session().get(Source, source_id)
    if source is None:
        abort(404)
    return source


@bp.post("/sources/<int:source_id>/reveal")
def reveal_secret(source_id: int) -> Any:
    source = _source_or_404(source_id)
    if not source.secrets:
        flash(f"{source.name} has no secret yet: rotate to create one.", "error")
        return redirect(url_for("admin.sources_page"))
    audit("reveal_secret", f"source:{source.name}", fingerprint(source.secrets[0]))
    get_session().commit()
    return sources_page(revealed={source.id: source.secrets[0]})


@bp.post("/sources/<int:source_id>/rotate")
def rotate_secret(source_id: int) -> Any:
    source = _source_or_404(source_id)
    if source.name in _env_managed():
        flash(
            f"The secret of {source.name} comes from DISPATCH_{source.name.upper()}_SECRET: "
            "change it there.",
            "error",
        )
        return redirect(url_for("admin.sources_page"))
    new = secrets_module.token_urlsafe(32)
    # The previous secret stays valid until retired, so the shop can be updated calmly.
    source.secrets = [new, *source.secrets[:1]]
    audit("rotate_secret", f"source:{source.name}", fingerprint(new))
    get_session().commit()
    flash(
        f"New secret for {source.name}: paste it into the shop now. The previous secret still "
        "works until you retire it.",
        "success",
    )
    return sources_page(revealed={source.id: new})


@bp.post("/sources/<int:source_id>/retire")
def retire_secret(source_id: int) -> Any:
    source = _source_or_404(source_id)
    if len(source.secrets) > 1 and source.name not in _env_managed():
        retired = source.secrets[1:]
        source.secrets = source.secrets[:1]
        audit("retire_secret", f"source:{source.name}", ", ".join(map(fingerprint, retired)))
        get_session().commit()
        flash(f"Only the newest secret of {source.name} is accepted now.", "success")
    return redirect(url_for("admin.sources_page"))


# --- templates -----------------------------------------------------------------------------


def _connected_platforms() -> list[str]:
    found = get_read_session().scalars(select(Source.platform).distinct().order_by(Source.platform))
    return list(found) or ["shopify"]


def _template(kind: str, locale: str, db: Session | None = None) -> MessageTemplate | None:
    """The template, read without a lock unless `db` (the writing session) is given."""
    if not KIND_PATTERN.match(kind) or not LOCALE_PATTERN.match(locale):
        abort(404)
    return (db or get_read_session()).scalar(
        select(MessageTemplate).where(
            MessageTemplate.kind == kind, MessageTemplate.locale == locale
        )
    )


@bp.get("/templates")
def templates_page() -> str:
    rows = (
        get_read_session()
        .scalars(select(MessageTemplate).order_by(MessageTemplate.kind, MessageTemplate.locale))
        .all()
    )
    return render_template("admin/templates.html", templates=rows)


@bp.post("/templates/new")
def new_template() -> Any:
    kind = (request.form.get("kind") or "dispatched").strip()
    locale = (request.form.get("locale") or "").strip()
    if not KIND_PATTERN.match(kind) or not LOCALE_PATTERN.match(locale):
        flash("A language is a code such as de, fr or pt-BR.", "error")
        return redirect(url_for("admin.templates_page"))
    return redirect(url_for("admin.edit_template", kind=kind, locale=locale))


def _versions(template: MessageTemplate | None) -> list[TemplateVersion]:
    if template is None:
        return []
    return list(
        get_read_session().scalars(
            select(TemplateVersion)
            .where(TemplateVersion.template_id == template.id)
            .order_by(TemplateVersion.number.desc())
        )
    )


def _render_editor(
    kind: str, locale: str, body: str, problems: list[str] | None = None, status: int = 200
) -> Any:
    template = _template(kind, locale)
    connected = _connected_platforms()
    platform = request.values.get("platform") or connected[0]
    max_segments = current_app.config["MAX_TEMPLATE_SEGMENTS"]
    initial = preview(body, platform, locale, max_segments)
    return (
        render_template(
            "admin/template_edit.html",
            kind=kind,
            locale=locale,
            template=template,
            body=body,
            versions=_versions(template),
            problems=problems or [],
            preview=initial,
            platforms=connected,
            platform=platform,
            platform_titles={name: platforms.get(name).title for name in platforms.names()},
            variables=TEMPLATE_VARIABLES,
            max_segments=max_segments,
        ),
        status,
    )


@bp.get("/templates/<kind>/<locale>")
def edit_template(kind: str, locale: str) -> Any:
    template = _template(kind, locale)
    if template is not None and template.current_version is not None:
        body = template.current_version.body
    else:
        # A new language starts from the default text, to be translated.
        fallback = message_templates.find(
            get_read_session(), kind, None, message_templates.DEFAULT_LOCALE
        )
        body = fallback.current_version.body if fallback and fallback.current_version else ""
    return _render_editor(kind, locale, body)


@bp.post("/templates/<kind>/<locale>")
def save_template(kind: str, locale: str) -> Any:
    template = _template(kind, locale)
    body = (request.form.get("body") or "").replace("\r\n", "\n").strip()
    note = (request.form.get("note") or "").strip()[:255] or None
    problems = save_problems(
        body, _connected_platforms(), locale, current_app.config["MAX_TEMPLATE_SEGMENTS"]
    )
    if problems:
        return _render_editor(kind, locale, body, problems, status=422)
    if template is not None and template.current_version and template.current_version.body == body:
        flash("No changes to save.", "info")
        return redirect(url_for("admin.edit_template", kind=kind, locale=locale))
    db = get_session()
    version = message_templates.save_version(db, kind, locale, body, g.user.username, note)
    audit("template_save", f"template:{kind}/{locale}", f"version {version.number}")
    db.commit()
    flash(f"Saved as version {version.number}.", "success")
    return redirect(url_for("admin.edit_template", kind=kind, locale=locale))


@bp.post("/templates/<kind>/<locale>/enabled")
def set_template_enabled(kind: str, locale: str) -> Any:
    """Pause or resume a template: while paused, its messages are skipped with that reason."""
    template = _template(kind, locale, get_session())
    if template is None:
        abort(404)
    template.enabled = request.form.get("enabled") == "yes"
    audit(
        "template_enable" if template.enabled else "template_disable",
        f"template:{kind}/{locale}",
    )
    get_session().commit()
    flash(
        "Messages are sent with this template again."
        if template.enabled
        else "Paused: new messages for this template are skipped, not sent.",
        "success" if template.enabled else "info",
    )
    return redirect(url_for("admin.edit_template", kind=kind, locale=locale))


@bp.post("/templates/preview")
def preview_json() -> Response:
    """The live preview and counter of the editor (called as the user types)."""
    data = request.get_json(silent=True) or {}
    body = data.get("body")
    if not isinstance(body, str):
        return jsonify({"error": "invalid_body", "message": 'send {"body": "..."}'}), 400  # type: ignore[return-value]
    result = preview(
        body.replace("\r\n", "\n")[: rendering.MAX_SOURCE_CHARS + 1],
        str(data.get("platform") or "shopify"),
        str(data.get("locale") or "en"),
        current_app.config["MAX_TEMPLATE_SEGMENTS"],
    )
    return jsonify(result.to_dict())


def _version_or_404(template: MessageTemplate | None, number: int) -> TemplateVersion:
    if template is None:
        abort(404)
    version = get_read_session().scalar(
        select(TemplateVersion).where(
            TemplateVersion.template_id == template.id, TemplateVersion.number == number
        )
    )
    if version is None:
        abort(404)
    return version


def word_diff(old: str, new: str) -> list[tuple[str, str]]:
    """(op, text) runs turning `old` into `new`, word by word: op is equal, delete or insert."""
    a, b = re.split(r"(\s+)", old), re.split(r"(\s+)", new)
    runs: list[tuple[str, str]] = []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        if op == "equal":
            runs.append(("equal", "".join(a[i1:i2])))
            continue
        if op in ("delete", "replace"):
            runs.append(("delete", "".join(a[i1:i2])))
        if op in ("insert", "replace"):
            runs.append(("insert", "".join(b[j1:j2])))
    return runs


@bp.get("/templates/<kind>/<locale>/versions/<int:number>")
def template_version(kind: str, locale: str, number: int) -> str:
    template = _template(kind, locale)
    version = _version_or_404(template, number)
    previous = get_read_session().scalar(
        select(TemplateVersion)
        .where(TemplateVersion.template_id == version.template_id, TemplateVersion.number < number)
        .order_by(TemplateVersion.number.desc())
        .limit(1)
    )
    return render_template(
        "admin/template_version.html",
        kind=kind,
        locale=locale,
        template=template,
        version=version,
        previous=previous,
        diff=word_diff(previous.body, version.body) if previous else None,
        count=counter(rendering.render(version.body, sample_context(locale)))
        if _renders(version.body, locale)
        else None,
    )


def _renders(body: str, locale: str) -> bool:
    try:
        rendering.render(body, sample_context(locale))
    except rendering.RenderError:
        return False
    return True


@bp.post("/templates/<kind>/<locale>/versions/<int:number>/restore")
def restore_version(kind: str, locale: str, number: int) -> Any:
    template = _template(kind, locale)
    version = _version_or_404(template, number)
    assert template is not None
    if template.current_version_id == version.id:
        flash(f"Version {number} is already the current one.", "info")
        return redirect(url_for("admin.edit_template", kind=kind, locale=locale))
    db = get_session()
    new = message_templates.save_version(
        db, kind, locale, version.body, g.user.username, note=f"restored version {number}"
    )
    audit("template_restore", f"template:{kind}/{locale}", f"version {number} -> {new.number}")
    db.commit()
    flash(f"Version {number} restored as version {new.number}.", "success")
    return redirect(url_for("admin.edit_template", kind=kind, locale=locale))


@bp.post("/templates/<kind>/<locale>/test")
def test_send(kind: str, locale: str) -> Any:
    """Send the saved template, filled with sample data, to one number now."""
    from dispatch_notifier.sms import backend_for

    template = _template(kind, locale)
    back = url_for("admin.edit_template", kind=kind, locale=locale)
    if template is None or template.current_version is None:
        flash("Save the template before sending a test.", "error")
        return redirect(back)
    number = (request.form.get("number") or "").strip()
    e164, reason = phones.normalise(number, current_app.config["DEFAULT_COUNTRY"])
    if e164 is None:
        flash(f"Cannot send a test to that number: {reason}.", "error")
        return redirect(back)
    platform = request.form.get("platform") or _connected_platforms()[0]
    try:
        text = rendering.render(
            template.current_version.body, sample_context(locale, sample_for(platform))
        )
    except rendering.RenderError as exc:
        flash(f"The template does not render: {exc}", "error")
        return redirect(back)
    backend = backend_for(current_app._get_current_object())  # type: ignore[attr-defined]
    outcome = backend.send(e164, text)
    audit(
        "test_send",
        f"template:{kind}/{locale}",
        json.dumps({"to": phones.mask(e164), "status": outcome.status, "backend": backend.name}),
    )
    get_session().commit()
    if outcome.status == "sent":
        extra = (
            " (console backend: printed, no phone received it)" if backend.name == "console" else ""
        )
        flash(f"Test SMS sent to {phones.mask(e164)}{extra}.", "success")
    else:
        flash(f"Test SMS to {phones.mask(e164)} {outcome.status}: {outcome.reason}", "error")
    return redirect(back)


# --- send log ------------------------------------------------------------------------------


@bp.get("/log")
def log_page() -> Any:
    db = get_read_session()
    error = None
    try:
        filters = sendlog.parse_filters(request.args)
        result = sendlog.page(
            db, filters, sendlog.DEFAULT_LIMIT, request.args.get("cursor") or None
        )
    except sendlog.FilterError as exc:
        error = str(exc)
        filters = sendlog.Filters()
        result = sendlog.Page([], {}, None)
    return (
        render_template(
            "admin/log.html",
            rows=result.rows,
            attempts=result.attempts,
            next_cursor=result.next_cursor,
            filters=filters,
            args=request.args,
            error=error,
            statuses=STATUSES,
            sources=db.scalars(select(Source.name).order_by(Source.name)).all(),
            mask=phones.mask,
            is_first_page=not request.args.get("cursor"),
        ),
        400 if error else 200,
    )


@bp.get("/log.csv")
def log_csv() -> Any:
    try:
        filters = sendlog.parse_filters(request.args)
    except sendlog.FilterError as exc:
        flash(str(exc), "error")
        return redirect(url_for("admin.log_page"))
    app = current_app._get_current_object()  # type: ignore[attr-defined]

    def generate() -> Any:
        # Its own session: the response streams after the request's session is closed.
        with get_db(app).read_session() as db:
            yield from sendlog.csv_lines(db, filters)

    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    return Response(
        stream_with_context(generate()),
        mimetype="text/csv",
        headers={"Content-Disposition": f'attachment; filename="send-log-{stamp}.csv"'},
    )


def _notification_or_404(notification_id: int, db: Session | None = None) -> Notification:
    row = (db or get_read_session()).get(Notification, notification_id)
    if row is None:
        abort(404)
    return row


@bp.get("/log/<int:notification_id>")
def log_detail(notification_id: int) -> str:
    db = get_read_session()
    row = _notification_or_404(notification_id, db)
    version = db.get(TemplateVersion, row.template_version_id) if row.template_version_id else None
    template = db.get(MessageTemplate, version.template_id) if version else None
    delivery = db.get(Delivery, row.delivery_id) if row.delivery_id else None
    raw = delivery.payload if delivery else None
    if raw:
        with contextlib.suppress(ValueError):
            raw = json.dumps(json.loads(raw), indent=2, ensure_ascii=False)
    history = db.scalars(
        select(AuditEntry)
        .where(AuditEntry.target == f"notification:{row.id}")
        .order_by(AuditEntry.at.desc())
    ).all()
    return render_template(
        "admin/log_detail.html",
        row=row,
        version=version,
        template=template,
        delivery=delivery,
        raw=raw,
        event=json.dumps(row.event, indent=2, ensure_ascii=False),
        count=counter(row.message) if row.message else None,
        mask=phones.mask,
        history=history,
    )


@bp.get("/log/<int:notification_id>/resend")
def resend_confirm(notification_id: int) -> str:
    row = _notification_or_404(notification_id)
    return render_template("admin/resend_confirm.html", row=row, mask=phones.mask)


@bp.post("/log/<int:notification_id>/resend")
def resend(notification_id: int) -> Any:
    from dispatch_notifier.resend import ResendError, resend_notification

    row = _notification_or_404(notification_id)
    if request.form.get("confirm") != "yes":
        return render_template("admin/resend_confirm.html", row=row, mask=phones.mask), 400
    try:
        resend_notification(get_session(), notification_id, g.user.username)
    except ResendError as exc:
        flash(f"Not resent: {exc}.", "error")
    else:
        flash(f"Notification {notification_id} is queued to be sent again.", "success")
    return redirect(url_for("admin.log_detail", notification_id=notification_id))
