"""Settings: defaults, `DISPATCH_*` environment variables and the instance folder.

Every setting has one name, one default and one type here; the rest of the code reads `app.config`.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any

from flask import Flask

PROJECT_ROOT = Path(__file__).resolve().parent.parent

# name -> (default, type). Types: str, int, float, bool. A default of None means "unset".
SETTINGS: dict[str, tuple[Any, type]] = {
    "DATABASE_URL": (None, str),
    "SECRET_KEY": (None, str),
    "SMS_BACKEND": (None, str),
    "DOTDIGITAL_API_URL": ("https://r1-api.dotdigital.com", str),
    "DOTDIGITAL_USER": (None, str),
    "DOTDIGITAL_PASSWORD": (None, str),
    "DOTDIGITAL_CONNECT_TIMEOUT": (3.05, float),
    "DOTDIGITAL_READ_TIMEOUT": (15.0, float),
    "DEFAULT_COUNTRY": ("GB", str),
    "DEFAULT_LOCALE": ("en", str),
    "API_TOKEN": (None, str),
    "PUBLIC_URL": (None, str),
    "SECURE_COOKIES": (True, bool),
    "SMS_RATE_LIMIT": (None, str),
    "SEND_CONCURRENCY": (8, int),
    "MAX_BODY_BYTES": (1048576, int),
    "SOURCE_CACHE_SECONDS": (1.0, float),
    "TEMPLATE_CACHE_SECONDS": (1.0, float),
    "MAX_ATTEMPTS": (8, int),
    "MAX_AGE_HOURS": (24.0, float),
    "RETRY_BASE_SECONDS": (2.0, float),
    "RETRY_CAP_SECONDS": (600.0, float),
    "LEASE_SECONDS": (60.0, float),
    "POLL_INTERVAL": (0.5, float),
    "STOP_TIMEOUT": (25.0, float),
    "TEMPLATES_DIR": (str(PROJECT_ROOT / "templates"), str),
    "MAX_TEMPLATE_SEGMENTS": (3, int),
    "LOG_LEVEL": ("INFO", str),
}

# Platforms whose DISPATCH_<PLATFORM>_SECRET creates or updates the source named after them.
PLATFORM_SECRET_SETTINGS = ("SHOPIFY", "WOOCOMMERCE", "BIGCOMMERCE", "SHOPWARE", "STANDARD")

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


class ConfigError(ValueError):
    """A setting has a value that cannot be used."""


def coerce(name: str, value: Any, kind: type) -> Any:
    """Turn a raw setting (usually a string from the environment) into its declared type."""
    if value is None or (isinstance(value, kind) and not (kind is int and isinstance(value, bool))):
        return value
    text = str(value).strip()
    try:
        if kind is bool:
            if text.lower() in _TRUE:
                return True
            if text.lower() in _FALSE:
                return False
            raise ValueError(text)
        return kind(text)
    except ValueError:
        raise ConfigError(f"DISPATCH_{name} must be {kind.__name__}, got {text!r}") from None


def load(app: Flask, test_config: dict[str, Any] | None) -> None:
    """Fill `app.config` from defaults, the environment and `test_config`, in that order."""
    app.config.from_mapping({name: default for name, (default, _) in SETTINGS.items()})
    # Values stay strings (loads=str): from_prefixed_env would otherwise JSON-parse a
    # numeric-looking secret or password into an int.
    app.config.from_prefixed_env("DISPATCH", loads=str)
    if test_config:
        app.config.update(test_config)
    for name, (_, kind) in SETTINGS.items():
        app.config[name] = coerce(name, app.config.get(name), kind)

    instance = Path(app.instance_path)
    instance.mkdir(parents=True, exist_ok=True)
    if not app.config["DATABASE_URL"]:
        app.config["DATABASE_URL"] = f"sqlite:///{instance / 'dispatch-notifier.sqlite3'}"
    if not app.config["SECRET_KEY"]:
        app.config["SECRET_KEY"] = _instance_secret_key(instance)
    if not app.config["SMS_BACKEND"]:
        has_credentials = app.config["DOTDIGITAL_USER"] and app.config["DOTDIGITAL_PASSWORD"]
        app.config["SMS_BACKEND"] = "dotdigital" if has_credentials else "console"
    if app.config["SMS_BACKEND"] not in ("dotdigital", "console"):
        raise ConfigError("DISPATCH_SMS_BACKEND must be 'dotdigital' or 'console'")

    from dispatch_notifier.gate import parse_rate_limit

    try:
        parse_rate_limit(app.config["SMS_RATE_LIMIT"])
    except ValueError as exc:
        raise ConfigError(str(exc)) from None

    app.config["MAX_CONTENT_LENGTH"] = app.config["MAX_BODY_BYTES"]
    secure = app.config["SECURE_COOKIES"]
    app.config.update(
        SESSION_COOKIE_SECURE=secure,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        REMEMBER_COOKIE_SECURE=secure,
        PERMANENT_SESSION_LIFETIME=12 * 3600,
    )


def _instance_secret_key(instance: Path) -> str:
    """Read the session key generated for this instance, creating it on first use."""
    path = instance / "secret_key"
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        key = secrets.token_urlsafe(48)
        # O_EXCL: two processes starting together must agree on one key.
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return path.read_text().strip()
        with os.fdopen(fd, "w") as fh:
            fh.write(key)
        return key


def platform_secrets(config: dict[str, Any]) -> dict[str, str]:
    """The `DISPATCH_<PLATFORM>_SECRET` values that are set, keyed by lower-case platform name."""
    found = {}
    for platform in PLATFORM_SECRET_SETTINGS:
        value = config.get(f"{platform}_SECRET")
        if value not in (None, ""):
            found[platform.lower()] = str(value)
    return found
