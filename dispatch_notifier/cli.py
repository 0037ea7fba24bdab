"""The `dispatch-notifier` command: serve, worker, db, log, resend, send-test, sources, templates.

Each command is a thin wrapper over the functions the web app and the tests use.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
from datetime import datetime
from typing import TYPE_CHECKING, Any

import click
from flask import Flask, current_app
from flask.cli import FlaskGroup, with_appcontext
from sqlalchemy import func, select

from dispatch_notifier import (
    message_templates,
    migrate,
    phones,
    rendering,
    source_commands,
    stop_signals,
)
from dispatch_notifier.db import get_db
from dispatch_notifier.events import TEMPLATE_VARIABLES
from dispatch_notifier.models import STATUSES, Attempt, Notification, Source

if TYPE_CHECKING:
    from dispatch_notifier.worker import Worker


def main() -> None:
    from dispatch_notifier import create_app

    cli = FlaskGroup(
        create_app=lambda: create_app(),
        add_version_option=False,
        help="Shop dispatch webhooks in, one SMS per shipment out.",
    )
    from dispatch_notifier.config import ConfigError

    try:
        cli.main(prog_name="dispatch-notifier")
    except ConfigError as exc:  # a bad DISPATCH_* setting: say which, no traceback
        click.echo(f"Error: {exc}", err=True)
        sys.exit(2)


def init_app(app: Flask) -> None:
    from dispatch_notifier import users

    for command in (serve, worker, db, log, resend, send_test, sources, templates, simulate):
        app.cli.add_command(command)
    for command in source_commands.COMMANDS:
        sources.add_command(command)
    app.cli.add_command(users.cli)
    from dispatch_notifier.ops_cli import COMMANDS as delivery_rule_commands

    for extra in [*_extra_commands, *delivery_rule_commands]:
        app.cli.add_command(extra)


# Other areas (admin users, suppressions, ...) add their commands here.
_extra_commands: list[click.Command] = []


def register(command: click.Command) -> click.Command:
    _extra_commands.append(command)
    return command


def fail(message: str) -> None:
    raise click.ClickException(message)


# --- serving -------------------------------------------------------------------------------


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.option(
    "--workers", default=2, show_default=True, type=click.IntRange(1, 64), help="Web processes."
)
@click.option("--no-worker", is_flag=True, help="Web only: run no sender worker here.")
@with_appcontext
def serve(host: str, port: int, workers: int, no_worker: bool) -> None:
    """Serve webhooks, the console and the API with gunicorn (plus a sender worker)."""
    from dispatch_notifier.serve import serve as run

    _require_schema()
    # The worker's own bound (STOP_TIMEOUT) plus a margin before it is killed.
    stop_timeout = float(current_app.config["STOP_TIMEOUT"]) + 5
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    # This very app is what the web workers and the sender, forks of this process, run.
    run(host, port, workers, with_worker=not no_worker, stop_timeout=stop_timeout, app=app)


@click.command()
@click.option("--once", is_flag=True, help="Send what is due now, then exit.")
@with_appcontext
def worker(once: bool) -> None:
    """Claim due notifications and send them until SIGTERM/SIGINT."""
    from dispatch_notifier.worker import Worker

    _require_schema()
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    if once:
        Worker(app).run_until_idle()
        return
    if not run_worker(app):
        # Bounded stop: sends still hanging after STOP_TIMEOUT are left to the lease sweep.
        sys.stderr.flush()
        os._exit(1)


def run_worker(app: Flask) -> bool:
    """Send until SIGTERM/SIGINT, then finish in-flight sends within STOP_TIMEOUT.

    `worker` runs this, and so does the sender process that `serve` forks. Returns False if some
    sends were still running when that time was up.
    """
    from dispatch_notifier.worker import Worker

    runner = Worker(app)
    if threading.current_thread() is threading.main_thread():
        stop_on_signals(runner)
    click.echo(
        f"worker {runner.owner} sending with the {runner.sender.backend.name} backend", err=True
    )
    return runner.run()


def stop_on_signals(runner: Worker) -> None:
    """Make SIGTERM and SIGINT stop `runner`, from a relay thread (`stop_signals`)."""

    def stop(signum: signal.Signals) -> None:
        click.echo(f"worker: {signum.name}, finishing in-flight sends", err=True)
        runner.stop()

    stop_signals.on_stop_signals(stop)


def _require_schema() -> None:
    with get_db().read_engine.connect() as connection:
        current = migrate.current_revision(connection)
    if current != migrate.head_revision():
        fail("the database schema is not up to date: run `dispatch-notifier db upgrade` first")


# --- database ------------------------------------------------------------------------------


@click.group()
def db() -> None:
    """Database schema (Alembic migrations)."""


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True)
@with_appcontext
def db_upgrade(revision: str) -> None:
    """Create or update the schema, then load default templates that are missing."""
    import logging

    from dispatch_notifier.sources import sync_env_sources

    logging.getLogger("alembic").setLevel(logging.INFO)
    migrate.upgrade(current_app.config["DATABASE_URL"], revision)
    with get_db().session() as session:
        added = message_templates.seed(session, current_app.config["TEMPLATES_DIR"])
        session.commit()
    sync_env_sources(current_app._get_current_object())  # type: ignore[attr-defined]
    click.echo(
        f"database at revision {revision}"
        + (f"; loaded templates {', '.join(added)}" if added else "")
    )


@db.command("current")
@with_appcontext
def db_current() -> None:
    """Print the schema revision of the database."""
    with get_db().read_engine.connect() as connection:
        click.echo(migrate.current_revision(connection) or "(empty database)")


# --- send log ------------------------------------------------------------------------------


def record(row: Notification, attempts: int) -> dict[str, Any]:
    """A send-log row as plain data: what `log --json` and the API print."""
    return {
        "id": row.id,
        "source": row.source.name,
        "order": row.order_number,
        "shipment": row.shipment_id,
        "kind": row.kind,
        "status": row.status,
        "phone": phones.mask(row.phone),
        "attempts": attempts,
        "error": row.error,
        "error_code": row.error_code,
        "message": row.message,
        "backend": row.backend,
        "created_at": _iso(row.created_at),
        "updated_at": _iso(row.updated_at),
        "sent_at": _iso(row.sent_at),
    }


def _iso(value: datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value else None


@click.command()
@click.option("--status", type=click.Choice(STATUSES), help="Only this status.")
@click.option("--source", "source_name", help="Only this source.")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 10_000))
@click.option("--json", "as_json", is_flag=True, help="One JSON array of records.")
@with_appcontext
def log(status: str | None, source_name: str | None, limit: int, as_json: bool) -> None:
    """The send log, newest first."""
    with get_db().read_session() as session:
        query = select(Notification).order_by(
            Notification.created_at.desc(), Notification.id.desc()
        )
        if status:
            query = query.where(Notification.status == status)
        if source_name:
            query = query.join(Source).where(Source.name == source_name)
        rows = session.scalars(query.limit(limit)).all()
        counts = (
            dict(
                session.execute(
                    select(Attempt.notification_id, func.count())
                    .where(Attempt.notification_id.in_([r.id for r in rows]))
                    .group_by(Attempt.notification_id)
                ).all()
            )
            if rows
            else {}
        )
        records = [record(r, max(counts.get(r.id, 0), r.attempts)) for r in rows]
    if as_json:
        click.echo(json.dumps(records, indent=2, ensure_ascii=False))
        return
    if not records:
        click.echo("no notifications yet")
        return
    click.echo(
        f"{'ID':>6}  {'CREATED (UTC)':19}  {'SOURCE':12} {'ORDER':10} {'STATUS':8} "
        f"{'PHONE':16} {'TRIES':>5}  DETAIL"
    )
    for r in records:
        if r["status"] == "sent":
            detail = r["message"] or ""
            if r["backend"] == "console":
                detail = "[console only, no phone received it] " + detail
        else:
            detail = r["error"] or r["message"] or ""
        click.echo(
            f"{r['id']:>6}  {r['created_at'][:19].replace('T', ' '):19}  {r['source'][:12]:12} "
            f"{(r['order'] or '')[:10]:10} {r['status']:8} {r['phone'] or '-':16} "
            f"{r['attempts']:>5}  {detail[:80]}"
        )


@click.command()
@click.argument("notification_id", type=int)
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.option("--actor", default="cli", show_default=True, help="Recorded as who asked.")
@with_appcontext
def resend(notification_id: int, yes: bool, actor: str) -> None:
    """Deliberately send a notification again (a new send-log row)."""
    from dispatch_notifier.resend import ResendError, resend_notification

    # Read, then ask, then write: no transaction stays open while the operator thinks (on
    # SQLite a writing one would hold every webhook up).
    with get_db().read_session() as session:
        status = session.scalar(
            select(Notification.status).where(Notification.id == notification_id)
        )
    if status is None:
        fail(f"no notification {notification_id}")
    if status in ("sent", "unknown") and not yes:
        warning = (
            "was already sent"
            if status == "sent"
            else "may already have been sent (status unknown)"
        )
        if not _interactive():
            fail(f"notification {notification_id} {warning}; pass --yes to send it again")
        click.confirm(f"Notification {notification_id} {warning}. Send again?", abort=True)
    with get_db().session() as session:
        try:
            new = resend_notification(session, notification_id, actor)
        except ResendError as exc:
            fail(str(exc))
    click.echo(f"queued notification {new.id} as a resend of {notification_id}")


def _interactive() -> bool:
    """True when a person can answer a question (stdin is a terminal)."""
    return sys.stdin.isatty()


@click.command("send-test")
@click.argument("number")
@click.option("--message", default="Test message from dispatch-notifier.", show_default=True)
@with_appcontext
def send_test(number: str, message: str) -> None:
    """Send one SMS now through the configured backend, to check the settings."""
    from dispatch_notifier.sms import backend_for

    e164, reason = phones.normalise(number, current_app.config["DEFAULT_COUNTRY"])
    if e164 is None:
        fail(f"{number!r}: {reason}")
    assert e164 is not None
    outcome = backend_for(current_app._get_current_object()).send(e164, message)  # type: ignore[attr-defined]
    click.echo(
        f"{phones.mask(e164)}: {outcome.status}"
        + (f" ({outcome.reason})" if outcome.reason else "")
    )
    if outcome.status != "sent":
        sys.exit(1)


# --- sources -------------------------------------------------------------------------------


@click.group()
def sources() -> None:
    """Connected shops and their webhook secrets."""


@sources.command("list")
@click.option("--json", "as_json", is_flag=True)
@with_appcontext
def sources_list(as_json: bool) -> None:
    """List sources with their webhook path and secret fingerprints (never the secrets)."""
    from dispatch_notifier.sources import fingerprint

    with get_db().read_session() as session:
        rows = session.scalars(select(Source).order_by(Source.name)).all()
        data = [
            {
                "name": s.name,
                "platform": s.platform,
                "enabled": s.enabled,
                "webhook_path": f"/webhooks/{s.name}",
                "secrets": [fingerprint(x) for x in s.secrets],
                "api_credentials": sorted(s.api_credentials),  # names only, never values
                "default_country": s.default_country,
                "default_locale": s.default_locale,
                "last_event_at": _iso(s.last_event_at),
                "last_event_result": s.last_event_result,
            }
            for s in rows
        ]
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    if not data:
        click.echo("no sources: add one with `dispatch-notifier sources add NAME --platform ...`")
    for s in data:
        state = "" if s["enabled"] else " (disabled)"
        click.echo(
            f"{s['name']}{state}: {s['platform']}, {s['webhook_path']}, secrets "
            f"{', '.join(s['secrets']) or 'none'}, last event {s['last_event_at'] or '-'}"
            f" {s['last_event_result'] or ''}"
        )


@sources.command("add")
@click.argument("name")
@click.option("--platform", required=True, help="shopify, woocommerce, ...")
@click.option("--secret", help="The webhook secret; generated and printed once if omitted.")
@click.option("--shop-name", help="Shown in messages as {{ shop_name }}.")
@click.option("--country", "default_country", help="Default country for numbers, e.g. GB.")
@click.option("--locale", "default_locale", help="Default message language, e.g. en.")
@click.option(
    "--credential",
    "credentials",
    multiple=True,
    metavar="KEY=VALUE",
    help="API credential for id-only platforms (BigCommerce: store_hash, access_token).",
)
@click.option("--if-missing", is_flag=True, help="Do nothing if the source exists already.")
@with_appcontext
def sources_add(
    name: str,
    platform: str,
    secret: str | None,
    shop_name: str | None,
    default_country: str | None,
    default_locale: str | None,
    credentials: tuple[str, ...],
    if_missing: bool,
) -> None:
    """Connect a shop: its webhook URL becomes /webhooks/NAME."""
    from dispatch_notifier import platforms
    from dispatch_notifier.sources import fingerprint, validate_name

    try:
        validate_name(name)
    except ValueError as exc:
        fail(str(exc))
    if platform not in platforms.names():
        fail(f"unknown platform {platform!r}; choose one of {', '.join(platforms.names())}")
    if default_country and not (len(default_country) == 2 and default_country.isalpha()):
        fail("--country must be a two-letter country code such as GB")
    api_credentials = source_commands.parse_credentials(credentials)
    missing = source_commands.missing_credentials(platform, api_credentials)
    if missing:
        fail(f"{platform} needs API credentials: --credential {'=… --credential '.join(missing)}=…")
    secret, generated = source_commands.initial_secret(platform, secret)
    with get_db().session() as session:
        if session.scalar(select(Source.id).where(Source.name == name)):
            if if_missing:
                click.echo(f"source {name} exists already")
                return
            fail(f"a source named {name!r} exists already")
        session.add(
            Source(
                name=name,
                platform=platform,
                secrets=[secret],
                shop_name=shop_name,
                default_country=(default_country or "").upper() or None,
                default_locale=default_locale,
                api_credentials=api_credentials or None,
            )
        )
        session.commit()
    click.echo(f"source {name} added: webhook path /webhooks/{name}, secret {fingerprint(secret)}")
    if generated:
        click.echo(f"generated secret (shown once; paste it into the shop): {secret}")


# --- templates -----------------------------------------------------------------------------


@click.group()
def templates() -> None:
    """SMS templates: list, preview, import from files, export to files."""


@templates.command("list")
@click.option("--variables", is_flag=True, help="List the variables a template may use.")
@with_appcontext
def templates_list(variables: bool) -> None:
    """List templates with their current version."""
    from dispatch_notifier.models import MessageTemplate

    if variables:
        for name, description in TEMPLATE_VARIABLES.items():
            click.echo(f"{{{{ {name} }}}}  {description}")
        return
    with get_db().read_session() as session:
        for t in session.scalars(
            select(MessageTemplate).order_by(MessageTemplate.kind, MessageTemplate.locale)
        ):
            version = t.current_version
            flag = "" if t.enabled else " (disabled)"
            click.echo(
                f"{t.kind}/{t.locale}{flag}: version {version.number if version else '-'}"
                f" by {version.author if version else '-'}"
            )


@templates.command("preview")
@click.argument("kind", default="dispatched")
@click.option("--locale", default="en", show_default=True)
@click.option(
    "--file",
    "path",
    type=click.Path(exists=True, dir_okay=False),
    help="Preview this file instead of the stored template.",
)
@with_appcontext
def templates_preview(kind: str, locale: str, path: str | None) -> None:
    """Render a template with sample data and show its SMS cost."""
    from dispatch_notifier import segments
    from dispatch_notifier.samples import sample_context

    if path:
        with open(path, encoding="utf-8") as fh:
            body = fh.read()
    else:
        with get_db().read_session() as session:
            template = message_templates.find(session, kind, locale, locale)
            if template is None or template.current_version is None:
                fail(f"no template {kind}/{locale}")
            assert template is not None and template.current_version is not None
            body = template.current_version.body
    try:
        text = rendering.render(body, sample_context(locale))
    except rendering.RenderError as exc:
        fail(str(exc))
    info = segments.count(text)
    click.echo(text)
    click.echo(
        f"-- {info.characters} characters, {info.encoding}, {info.segments} segment(s)"
        + (f"; UCS-2 because of {' '.join(info.unicode_chars)}" if info.unicode_chars else "")
    )


@templates.command("import")
@click.option(
    "--dir",
    "directory",
    type=click.Path(exists=True, file_okay=False),
    help="Folder of <kind>[.<locale>].txt.j2 files (default: templates/).",
)
@click.option("--force", is_flag=True, help="Add a new version where the file differs.")
@with_appcontext
def templates_import(directory: str | None, force: bool) -> None:
    """Load template files into the database."""
    directory = directory or current_app.config["TEMPLATES_DIR"]
    for tf in message_templates.read_files(directory):
        try:
            rendering.compile_check(tf.body)
            unknown = rendering.unknown_variables(tf.body)
        except rendering.RenderError as exc:
            fail(f"{tf.path.name}: {exc}")
        if unknown:
            fail(f"{tf.path.name}: unknown variables {', '.join(unknown)}")
    with get_db().session() as session:
        changed = message_templates.seed(session, directory, force=force)
        session.commit()
    click.echo(f"imported {', '.join(changed)}" if changed else "templates already up to date")


@templates.command("export")
@click.option("--dir", "directory", type=click.Path(file_okay=False), required=True)
@with_appcontext
def templates_export(directory: str) -> None:
    """Write each template's current version to <kind>[.<locale>].txt.j2 files."""
    from pathlib import Path

    from dispatch_notifier.models import MessageTemplate

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    with get_db().read_session() as session:
        for t in session.scalars(select(MessageTemplate)):
            if t.current_version is None:
                continue
            suffix = "" if t.locale == message_templates.DEFAULT_LOCALE else f".{t.locale}"
            path = out / f"{t.kind}{suffix}.txt.j2"
            path.write_text(t.current_version.body + "\n", encoding="utf-8")
            click.echo(f"wrote {path}")


# --- trying it out -------------------------------------------------------------------------


@click.command()
@click.argument("source_name", default="shopify")
@click.option(
    "--url",
    default="http://127.0.0.1:8000",
    show_default=True,
    help="Where the service is running.",
)
@click.option(
    "--phone",
    default="+447911123456",
    show_default=True,
    help="The customer's number in the sample.",
)
@click.option("--order", "order_number", default="1001", show_default=True)
@with_appcontext
def simulate(source_name: str, url: str, phone: str, order_number: str) -> None:
    """Post a correctly signed sample dispatch for the source's platform to a running service."""
    import requests

    from dispatch_notifier.platform_samples import signed_sample

    with get_db().read_session() as session:
        source = session.scalar(select(Source).where(Source.name == source_name))
        if source is None or not source.secrets:
            fail(
                f"no source {source_name!r} with a secret: set DISPATCH_SHOPIFY_SECRET or run "
                f"`dispatch-notifier sources add {source_name} --platform shopify`"
            )
        assert source is not None
        try:
            body, headers = signed_sample(source.platform, source.secrets[0], phone, order_number)
        except ValueError as exc:
            fail(str(exc))
    try:
        response = requests.post(
            f"{url.rstrip('/')}/webhooks/{source_name}", data=body, headers=headers, timeout=10
        )
    except requests.RequestException as exc:
        fail(f"could not reach {url}: {exc}")
    click.echo(f"HTTP {response.status_code} {response.text.strip()}")
    if response.status_code != 200:
        sys.exit(1)
