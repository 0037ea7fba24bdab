"""Settings: DISPATCH_* environment variables, their types, and the instance folder."""

from __future__ import annotations

import pytest

from dispatch_notifier import create_app
from dispatch_notifier.config import ConfigError


@pytest.fixture
def env(monkeypatch, tmp_path):  # type: ignore[no-untyped-def]
    for name in list(__import__("os").environ):
        if name.startswith("DISPATCH_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("DISPATCH_INSTANCE_PATH", str(tmp_path / "instance"))
    return monkeypatch


def test_defaults_use_sqlite_in_the_instance_folder_and_the_console_backend(env, tmp_path):
    app = create_app()
    assert app.config["DATABASE_URL"] == (
        f"sqlite:///{tmp_path / 'instance' / 'dispatch-notifier.sqlite3'}"
    )
    assert app.config["SMS_BACKEND"] == "console"
    assert app.config["DEFAULT_COUNTRY"] == "GB"
    assert app.config["DOTDIGITAL_API_URL"] == "https://r1-api.dotdigital.com"
    assert app.config["MAX_CONTENT_LENGTH"] == 1048576
    assert app.config["SESSION_COOKIE_SECURE"] is True


def test_the_secret_key_is_generated_once_and_kept(env, tmp_path):
    first = create_app().config["SECRET_KEY"]
    second = create_app().config["SECRET_KEY"]
    assert first == second and len(first) > 40
    assert (tmp_path / "instance" / "secret_key").read_text() == first


def test_numeric_looking_secrets_and_passwords_stay_strings(env):
    env.setenv("DISPATCH_DOTDIGITAL_PASSWORD", "0123456")
    env.setenv("DISPATCH_DOTDIGITAL_USER", "12345")
    env.setenv("DISPATCH_SHOPIFY_SECRET", "1e5")
    app = create_app()
    assert app.config["DOTDIGITAL_PASSWORD"] == "0123456"
    assert app.config["DOTDIGITAL_USER"] == "12345"
    assert app.config["SHOPIFY_SECRET"] == "1e5"
    assert app.config["SMS_BACKEND"] == "dotdigital"


def test_typed_settings_are_converted(env):
    env.setenv("DISPATCH_SEND_CONCURRENCY", "16")
    env.setenv("DISPATCH_MAX_BODY_BYTES", "2048")
    env.setenv("DISPATCH_SECURE_COOKIES", "false")
    app = create_app()
    assert app.config["SEND_CONCURRENCY"] == 16
    assert app.config["MAX_CONTENT_LENGTH"] == 2048
    assert app.config["SESSION_COOKIE_SECURE"] is False


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("SEND_CONCURRENCY", "many"),
        ("SECURE_COOKIES", "perhaps"),
        ("SMS_BACKEND", "carrier-pigeon"),
    ],
)
def test_unusable_values_are_refused_with_the_variable_named(env, name, value):
    env.setenv(f"DISPATCH_{name}", value)
    with pytest.raises(ConfigError, match=f"DISPATCH_{name}"):
        create_app()


def test_a_platform_secret_creates_the_source_named_after_the_platform(app_factory, runner):
    app = app_factory(SHOPIFY_SECRET="s3cret")
    result = app.test_cli_runner().invoke(args=["sources", "list", "--json"])
    assert '"name": "shopify"' in result.output
    assert "s3cret" not in result.output


def test_changing_the_platform_secret_updates_the_source(app_factory):
    from dispatch_notifier.db import get_db
    from dispatch_notifier.models import Source

    app_factory(SHOPIFY_SECRET="old")
    app = app_factory(SHOPIFY_SECRET="new")
    with get_db(app).session() as session:
        source = session.query(Source).filter_by(name="shopify").one()
        assert source.secrets[0] == "new"
