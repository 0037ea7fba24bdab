"""Delivery-rule commands: `suppress add|remove|list` and `sources quiet-hours`.

Numbers are normalised with phonenumbers and only ever printed masked.
"""

from __future__ import annotations

import json

import click
from flask import current_app
from flask.cli import with_appcontext
from sqlalchemy import delete, select

from dispatch_notifier import phones, quiet
from dispatch_notifier.cli import sources
from dispatch_notifier.db import get_db
from dispatch_notifier.models import AuditEntry, Source, Suppression


def _e164(number: str, country: str | None) -> str:
    region = country or current_app.config["DEFAULT_COUNTRY"]
    e164, reason = phones.normalise(number, region)
    if e164 is None:
        # Not a mobile, or not a number at all: say so without echoing the full number back.
        raise click.ClickException(f"{reason}: {phones.mask(number) or 'empty'}")
    return e164


@click.group()
def suppress() -> None:
    """Numbers that must never be texted (opt-outs, complaints)."""


@suppress.command("add")
@click.argument("number")
@click.option("--reason", help="Why, e.g. 'customer asked to stop'.")
@click.option("--country", help="Region for a number without +country code (default: GB).")
@click.option("--actor", default="cli", show_default=True, help="Recorded as who added it.")
@with_appcontext
def suppress_add(number: str, reason: str | None, country: str | None, actor: str) -> None:
    """Never text NUMBER again; dispatches to it are `skipped` "suppressed"."""
    e164 = _e164(number, country)
    with get_db().session() as session:
        if session.scalar(select(Suppression.id).where(Suppression.phone == e164)):
            click.echo(f"{phones.mask(e164)} is already suppressed")
            return
        session.add(Suppression(phone=e164, reason=reason, created_by=actor))
        session.add(AuditEntry(actor=actor, action="suppress_add", target=f"phone:…{e164[-4:]}"))
        session.commit()
    click.echo(f"suppressed {phones.mask(e164)}")


@suppress.command("remove")
@click.argument("number")
@click.option("--country", help="Region for a number without +country code (default: GB).")
@click.option("--actor", default="cli", show_default=True, help="Recorded as who removed it.")
@with_appcontext
def suppress_remove(number: str, country: str | None, actor: str) -> None:
    """Allow NUMBER to be texted again."""
    e164 = _e164(number, country)
    with get_db().session() as session:
        removed = session.execute(delete(Suppression).where(Suppression.phone == e164)).rowcount
        if not removed:
            raise click.ClickException(f"{phones.mask(e164)} is not on the suppression list")
        session.add(AuditEntry(actor=actor, action="suppress_remove", target=f"phone:…{e164[-4:]}"))
        session.commit()
    click.echo(f"removed {phones.mask(e164)} from the suppression list")


@suppress.command("list")
@click.option("--json", "as_json", is_flag=True, help="One JSON array.")
@with_appcontext
def suppress_list(as_json: bool) -> None:
    """The suppressed numbers (masked), newest first."""
    with get_db().read_session() as session:
        rows = session.scalars(
            select(Suppression).order_by(Suppression.created_at.desc(), Suppression.id.desc())
        ).all()
        data = [
            {
                "phone": phones.mask(r.phone),
                "reason": r.reason,
                "created_by": r.created_by,
                "created_at": r.created_at.isoformat().replace("+00:00", "Z"),
            }
            for r in rows
        ]
    if as_json:
        click.echo(json.dumps(data, indent=2, ensure_ascii=False))
        return
    if not data:
        click.echo("no suppressed numbers")
    for r in data:
        click.echo(
            f"{r['phone']:18} {r['created_at'][:19].replace('T', ' ')}  "
            f"{r['created_by'] or '-':10} {r['reason'] or ''}"
        )


@sources.command("quiet-hours")
@click.argument("name")
@click.argument("window", required=False)
@click.option("--timezone", "zone", help="IANA zone used when the number's zone is unknown.")
@with_appcontext
def sources_quiet_hours(name: str, window: str | None, zone: str | None) -> None:
    """Show or set a source's quiet hours, e.g. `21:00-08:00`, or `off`.

    Times are in the recipient's time zone (from the number, else --timezone).
    """
    try:
        parsed = quiet.parse_quiet_hours(window) if window is not None else None
        if zone:
            quiet.check_timezone(zone)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    with get_db().session() as session:
        source = session.scalar(select(Source).where(Source.name == name))
        if source is None:
            raise click.ClickException(f"no source named {name!r}")
        if window is not None:
            source.quiet_hours = str(parsed) if parsed else None
        if zone:
            source.timezone = zone
        session.commit()
        state = source.quiet_hours or "off"
        zone_text = source.timezone or "none (UTC when the number's zone is unknown)"
    click.echo(f"source {name}: quiet hours {state}, fallback time zone {zone_text}")


COMMANDS = (suppress,)
