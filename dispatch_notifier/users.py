"""Console accounts: `users create NAME`, password checks and login rate limiting in the database.

Failed logins are rows in `login_attempts`, so the limit holds across every web process.
"""

from __future__ import annotations

import functools
import re
import sys
from dataclasses import dataclass
from datetime import timedelta

import click
from flask.cli import with_appcontext
from sqlalchemy import delete, func, select, text
from sqlalchemy.orm import Session
from werkzeug.security import check_password_hash, generate_password_hash

from dispatch_notifier.db import Database, get_db
from dispatch_notifier.models import LoginAttempt, User, utcnow

USERNAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
MIN_PASSWORD = 8
WINDOW = timedelta(minutes=15)
MAX_FAILURES_PER_USER = 5
MAX_FAILURES_PER_ADDRESS = 20
# Compared against when the user does not exist, so a wrong name costs as long as a wrong password.


@functools.cache
def _dummy_hash() -> str:
    """A hash to check unknown names against, so that they take as long as known ones.

    Made on first use, not at import: scrypt costs every process ~100 ms and 32 MB at start-up.
    """
    return generate_password_hash("not-a-real-password")


class UserError(ValueError):
    """A username or password that cannot be used; the message says why."""


@dataclass(frozen=True)
class LoginResult:
    user: User | None
    limited: bool = False


def validate(username: str, password: str) -> None:
    if not USERNAME.match(username):
        raise UserError(
            "a username is 1-64 letters, digits, '.', '_', '@' or '-', starting with a letter "
            "or digit"
        )
    if len(password) < MIN_PASSWORD:
        raise UserError(f"the password must be at least {MIN_PASSWORD} characters")


def create_user(session: Session, username: str, password: str) -> User:
    """Add a user with a werkzeug (scrypt) password hash; the caller commits."""
    validate(username, password)
    password_hash = generate_password_hash(password)  # first: ~100 ms, before any lock is taken
    if session.scalar(select(User.id).where(User.username == username)):
        raise UserError(f"a user named {username!r} exists already")
    user = User(username=username, password_hash=password_hash)
    session.add(user)
    session.flush()
    return user


def set_password(session: Session, username: str, password: str) -> User:
    validate(username, password)
    password_hash = generate_password_hash(password)  # first: ~100 ms, before any lock is taken
    user = session.scalar(select(User).where(User.username == username))
    if user is None:
        raise UserError(f"no user named {username!r}")
    user.password_hash = password_hash
    return user


def _keys(username: str, address: str | None) -> tuple[str, str]:
    return f"user:{username.lower()[:120]}", f"addr:{(address or '-')[:120]}"


def is_limited(session: Session, username: str, address: str | None) -> bool:
    """True while this username or address has too many recent failures."""
    user_key, addr_key = _keys(username, address)
    since = utcnow() - WINDOW
    failures = dict(
        session.execute(
            select(LoginAttempt.key, func.count())
            .where(LoginAttempt.key.in_([user_key, addr_key]), LoginAttempt.attempted_at >= since)
            .group_by(LoginAttempt.key)
        ).all()
    )
    return (
        failures.get(user_key, 0) >= MAX_FAILURES_PER_USER
        or failures.get(addr_key, 0) >= MAX_FAILURES_PER_ADDRESS
    )


def _queue_behind_other_attempts(session: Session, keys: tuple[str, ...]) -> None:
    """Make concurrent attempts on the same name or address count one after another.

    Without it, under PostgreSQL's read committed two attempts can each read the count before
    either has added its own row, and both slip under the limit. SQLite needs nothing: its
    writing transactions already take turns. Taken in sorted order, so that two attempts never
    each hold a lock the other waits for.
    """
    for key in sorted(set(keys)):
        session.execute(text("SELECT pg_advisory_xact_lock(hashtext(:key))"), {"key": key})


def authenticate(db: Database, username: str, password: str, address: str | None) -> LoginResult:
    """Check a login; failures are recorded and rate limited.

    The password check (scrypt, about 100 ms of CPU) runs with no transaction open: on SQLite a
    writing one would hold every webhook up for it, at the bidding of anyone who can post a form.
    So the attempt is counted as a failure before the check, in the transaction that reads the
    limit (concurrent attempts queue there, so they cannot all slip under it), and forgiven if it
    succeeds.
    """
    now = utcnow()
    user_key, addr_key = _keys(username, address)
    with db.session() as session:
        if db.is_postgres:
            _queue_behind_other_attempts(session, (user_key, addr_key))
        if is_limited(session, username, address):
            return LoginResult(None, limited=True)
        by_address = LoginAttempt(key=addr_key, attempted_at=now)
        session.add_all([LoginAttempt(key=user_key, attempted_at=now), by_address])
        # Old rows are useless once outside the window; trimming here keeps the table small.
        session.execute(delete(LoginAttempt).where(LoginAttempt.attempted_at < now - WINDOW))
        found = session.execute(
            select(User.id, User.password_hash).where(User.username == username)
        ).first()
        session.commit()
    ok = check_password_hash(found.password_hash if found else _dummy_hash(), password)
    if not (found and ok):
        return LoginResult(None)
    with db.session() as session:
        session.execute(
            delete(LoginAttempt).where(
                (LoginAttempt.key == user_key) | (LoginAttempt.id == by_address.id)
            )
        )
        user = session.get(User, found.id)
        if user is None:  # removed in the meantime
            session.commit()
            return LoginResult(None)
        user.last_login_at = now
        session.commit()
        return LoginResult(user)


# --- command line --------------------------------------------------------------------------


def _read_password() -> str:
    if sys.stdin.isatty():
        return str(click.prompt("Password", hide_input=True, confirmation_prompt=True))
    line = sys.stdin.readline()
    return line.rstrip("\r\n")


@click.group("users")
def cli() -> None:
    """Console accounts (there is no self-registration)."""


@cli.command("create")
@click.argument("name")
@with_appcontext
def users_create(name: str) -> None:
    """Create a console user; the password is prompted twice, or read from stdin's first line."""
    password = _read_password()
    with get_db().session() as session:
        try:
            create_user(session, name, password)
        except UserError as exc:
            raise click.ClickException(str(exc)) from None
        session.commit()
    click.echo(f"user {name} created; log in at /admin/login")


@cli.command("set-password")
@click.argument("name")
@with_appcontext
def users_set_password(name: str) -> None:
    """Set a new password for a console user (prompted, or stdin's first line)."""
    password = _read_password()
    with get_db().session() as session:
        try:
            set_password(session, name, password)
        except UserError as exc:
            raise click.ClickException(str(exc)) from None
        session.commit()
    click.echo(f"password of {name} changed")


@cli.command("list")
@with_appcontext
def users_list() -> None:
    """List console users and when they last logged in."""
    with get_db().read_session() as session:
        rows = session.scalars(select(User).order_by(User.username)).all()
        if not rows:
            click.echo("no users: create one with `dispatch-notifier users create NAME`")
        for user in rows:
            last = (
                user.last_login_at.isoformat(timespec="seconds") if user.last_login_at else "never"
            )
            click.echo(f"{user.username}  last login: {last}")
