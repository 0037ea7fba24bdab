"""`dispatch-notifier sources update|disable|enable|rotate-secret`, and checks `sources add` shares.

Secrets are printed once when generated and otherwise only shown as fingerprints; every change is
written to the audit log.
"""

from __future__ import annotations

import click
from flask import current_app
from flask.cli import with_appcontext
from sqlalchemy import select
from sqlalchemy.orm import Session

from dispatch_notifier import platforms
from dispatch_notifier.config import platform_secrets
from dispatch_notifier.db import get_db
from dispatch_notifier.models import AuditEntry, Source
from dispatch_notifier.sources import fingerprint


def parse_credentials(pairs: tuple[str, ...]) -> dict[str, str]:
    """`("store_hash=abc", "access_token=")` -> `{"store_hash": "abc", "access_token": ""}`."""
    credentials: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise click.BadParameter(f"expected KEY=VALUE, got {pair!r}", param_hint="--credential")
        credentials[key] = value.strip()
    return credentials


def missing_credentials(platform: str, credentials: dict[str, str]) -> list[str]:
    """The API credentials this platform needs that `credentials` lacks."""
    return [k for k in platforms.get(platform).credential_keys if not credentials.get(k)]


def initial_secret(platform: str, secret: str | None) -> tuple[str, bool]:
    """The secret to store for a new source, and whether we generated it (ClickException if bad)."""
    handler = platforms.get(platform)
    if secret is None:
        if not handler.secret_is_generated:
            raise click.ClickException(
                f"{handler.title} signs webhooks with a secret it gives you: pass --secret"
            )
        return handler.new_secret(), True
    try:
        handler.check_secret(secret)
    except ValueError as exc:
        raise click.ClickException(f"--secret: {exc}") from None
    return secret, False


def check_country(country: str | None) -> str | None:
    if country is None:
        return None
    if not (len(country) == 2 and country.isalpha()):
        raise click.ClickException("--country must be a two-letter country code such as GB")
    return country.upper()


def _load(session: Session, name: str) -> Source:
    source = session.scalar(select(Source).where(Source.name == name))
    if source is None:
        raise click.ClickException(f"no source named {name!r} (see `sources list`)")
    return source


def _audit(session: Session, action: str, source: Source, detail: str | None = None) -> None:
    session.add(AuditEntry(actor="cli", action=action, target=source.name, detail=detail))


@click.command("update")
@click.argument("name")
@click.option("--shop-name", help="Shown in messages as {{ shop_name }}; '' clears it.")
@click.option("--country", "default_country", help="Default country for numbers, e.g. GB.")
@click.option("--locale", "default_locale", help="Default message language, e.g. en.")
@click.option(
    "--credential",
    "credentials",
    multiple=True,
    metavar="KEY=VALUE",
    help="Set an API credential (repeatable); KEY= removes it. BigCommerce: store_hash, "
    "access_token, api_url.",
)
@with_appcontext
def update(
    name: str,
    shop_name: str | None,
    default_country: str | None,
    default_locale: str | None,
    credentials: tuple[str, ...],
) -> None:
    """Change a source's shop name, defaults or API credentials."""
    changes = parse_credentials(credentials)
    country = check_country(default_country)
    with get_db().session() as session:
        source = _load(session, name)
        changed = []
        if shop_name is not None:
            source.shop_name = shop_name.strip() or None
            changed.append("shop name")
        if country is not None:
            source.default_country = country
            changed.append("country")
        if default_locale is not None:
            source.default_locale = default_locale.strip() or None
            changed.append("locale")
        if changes:
            merged = {**source.api_credentials, **changes}
            source.api_credentials = {k: v for k, v in merged.items() if v}
            changed.append("credentials " + ", ".join(sorted(changes)))
        if not changed:
            raise click.ClickException("nothing to change: pass an option (see --help)")
        _audit(session, "source.update", source, "; ".join(changed))
        session.commit()
        missing = missing_credentials(source.platform, source.api_credentials)
    click.echo(f"source {name} updated: {', '.join(changed)}")
    if missing:
        click.echo(f"warning: {name} still needs --credential {'=… --credential '.join(missing)}=…")


def _set_enabled(name: str, enabled: bool) -> None:
    with get_db().session() as session:
        source = _load(session, name)
        if source.enabled == enabled:
            click.echo(f"source {name} is already {'enabled' if enabled else 'disabled'}")
            return
        source.enabled = enabled
        _audit(session, "source.enable" if enabled else "source.disable", source)
        session.commit()
    if enabled:
        click.echo(f"source {name} enabled: /webhooks/{name} accepts webhooks again")
    else:
        click.echo(f"source {name} disabled: /webhooks/{name} now answers 404")


@click.command("disable")
@click.argument("name")
@with_appcontext
def disable(name: str) -> None:
    """Stop accepting webhooks for a source (they get 404); its history is kept."""
    _set_enabled(name, False)


@click.command("enable")
@click.argument("name")
@with_appcontext
def enable(name: str) -> None:
    """Accept webhooks for a disabled source again."""
    _set_enabled(name, True)


@click.command("rotate-secret")
@click.argument("name")
@click.option("--secret", help="The new secret (default: generate one, printed once).")
@click.option(
    "--drop-old",
    is_flag=True,
    help="Finish a rotation: stop accepting the previous secret (no new secret is made).",
)
@with_appcontext
def rotate_secret(name: str, secret: str | None, drop_old: bool) -> None:
    """Give a source a new webhook secret; the previous one stays valid until --drop-old."""
    if drop_old and secret:
        raise click.ClickException("--drop-old finishes a rotation; it takes no --secret")
    with get_db().session() as session:
        source = _load(session, name)
        current = source.secrets
        if drop_old:
            if len(current) <= 1:
                click.echo(f"source {name} has only one secret; nothing to drop")
                return
            source.secrets = current[:1]
            _audit(session, "source.drop_old_secret", source, f"kept {fingerprint(current[0])}")
            session.commit()
            click.echo(f"source {name}: only {fingerprint(current[0])} is accepted now")
            return
        new, generated = initial_secret(source.platform, secret)
        if current[:1] == [new]:
            raise click.ClickException("that is the current secret already")
        # Newest first; one previous secret is kept so deliveries signed with it still pass.
        source.secrets = [new, *current[:1]]
        previous = ", ".join(fingerprint(s) for s in current[:1]) or "none"
        _audit(session, "source.rotate_secret", source, f"new {fingerprint(new)}; kept {previous}")
        session.commit()
    click.echo(
        f"source {name}: new secret {fingerprint(new)} is current; {previous} is still accepted "
        f"until `dispatch-notifier sources rotate-secret {name} --drop-old`"
    )
    if generated:
        click.echo(f"new secret (shown once; paste it into the shop): {new}")
    if name in platform_secrets(current_app.config):
        click.echo(
            f"warning: DISPATCH_{name.upper()}_SECRET is set and makes its value the current "
            "secret again at the next start; change the variable instead"
        )


COMMANDS = (update, disable, enable, rotate_secret)
