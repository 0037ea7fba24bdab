"""Sources as records: the `sources` commands, secret rotation, disabling, secrets kept secret."""

from __future__ import annotations

import base64
import json
import logging

import pytest
from sqlalchemy import select

from dispatch_notifier.db import get_db
from dispatch_notifier.models import AuditEntry, Source
from dispatch_notifier.sources import fingerprint
from tests.platform_helpers import b64_hmac, body_of

ORDER = {
    "id": 1,
    "number": "1",
    "status": "completed",
    "billing": {"phone": "+447911123456", "country": "GB"},
}


def cli(app, *args: str):  # type: ignore[no-untyped-def]
    return app.test_cli_runner().invoke(args=["sources", *args])


def source(app, name: str) -> Source:  # type: ignore[no-untyped-def]
    with get_db(app).session() as session:
        return session.scalars(select(Source).where(Source.name == name)).one()


def post_wc(app, secret: str, name: str = "shop"):  # type: ignore[no-untyped-def]
    body = body_of(ORDER)
    return app.test_client().post(
        f"/webhooks/{name}",
        data=body,
        headers={
            "X-WC-Webhook-Topic": "order.updated",
            "X-WC-Webhook-Signature": b64_hmac(secret, body),
        },
    )


# --- add and list --------------------------------------------------------------------------


def test_add_with_a_given_secret_prints_only_its_fingerprint(app):
    result = cli(app, "add", "shop", "--platform", "woocommerce", "--secret", "s3cret-value")
    assert result.exit_code == 0, result.output
    assert "s3cret-value" not in result.output
    assert fingerprint("s3cret-value") in result.output
    assert source(app, "shop").secrets == ["s3cret-value"]


def test_add_generates_a_whsec_secret_for_the_standard_platform_and_prints_it_once(app):
    result = cli(app, "add", "wh", "--platform", "standard")
    assert result.exit_code == 0, result.output
    [secret] = source(app, "wh").secrets
    assert secret.startswith("whsec_")
    assert result.output.count(secret) == 1


def test_add_refuses_a_standard_secret_that_is_not_whsec(app):
    result = cli(app, "add", "wh", "--platform", "standard", "--secret", "plain")
    assert result.exit_code != 0
    assert "whsec_" in result.output


def test_bigcommerce_needs_the_client_secret_and_api_credentials(app):
    result = cli(app, "add", "bc", "--platform", "bigcommerce", "--secret", "client-secret")
    assert result.exit_code != 0
    assert "--credential store_hash=… --credential access_token=…" in result.output
    result = cli(
        app,
        *("add", "bc", "--platform", "bigcommerce"),
        *("--credential", "store_hash=abc123", "--credential", "access_token=tok"),
    )
    assert result.exit_code != 0
    assert "pass --secret" in result.output
    result = cli(
        app,
        *("add", "bc", "--platform", "bigcommerce", "--secret", "client-secret"),
        *("--credential", "store_hash=abc123", "--credential", "access_token=tok"),
    )
    assert result.exit_code == 0, result.output
    assert source(app, "bc").api_credentials == {"store_hash": "abc123", "access_token": "tok"}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("add", "Bad Name", "--platform", "shopify"), "URL-safe"),
        (("add", "x", "--platform", "magento"), "unknown platform"),
        (("add", "x", "--platform", "shopify", "--credential", "novalue"), "KEY=VALUE"),
        (("add", "shopify", "--platform", "shopify"), "exists already"),
    ],
)
def test_add_explains_what_is_wrong(app, args, message):
    result = cli(app, *args)
    assert result.exit_code != 0
    assert message in result.output


def test_list_shows_fingerprints_and_credential_names_never_values(app):
    cli(
        app,
        *("add", "bc", "--platform", "bigcommerce", "--secret", "client-secret-xyz"),
        *("--credential", "store_hash=abc123", "--credential", "access_token=token-xyz"),
    )
    for args in (("list",), ("list", "--json")):
        result = cli(app, *args)
        assert result.exit_code == 0
        assert "client-secret-xyz" not in result.output
        assert "token-xyz" not in result.output
        assert "test-shopify-secret" not in result.output
        assert fingerprint("client-secret-xyz") in result.output
    data = {s["name"]: s for s in json.loads(cli(app, "list", "--json").output)}
    assert data["bc"]["api_credentials"] == ["access_token", "store_hash"]
    assert data["bc"]["webhook_path"] == "/webhooks/bc"


# --- update --------------------------------------------------------------------------------


def test_update_changes_defaults_and_merges_credentials(app):
    cli(
        app,
        *("add", "bc", "--platform", "bigcommerce", "--secret", "cs"),
        *("--credential", "store_hash=abc123", "--credential", "access_token=old"),
    )
    result = cli(
        app,
        *("update", "bc", "--shop-name", "Example Shop", "--country", "ie", "--locale", "en"),
        *("--credential", "access_token=new", "--credential", "api_url=http://127.0.0.1:1"),
    )
    assert result.exit_code == 0, result.output
    assert "new" not in result.output.replace("updated", "")
    row = source(app, "bc")
    assert (row.shop_name, row.default_country, row.default_locale) == ("Example Shop", "IE", "en")
    assert row.api_credentials == {
        "store_hash": "abc123",
        "access_token": "new",
        "api_url": "http://127.0.0.1:1",
    }


def test_update_removes_a_credential_with_an_empty_value_and_warns_when_one_is_needed(app):
    cli(
        app,
        *("add", "bc", "--platform", "bigcommerce", "--secret", "cs"),
        *("--credential", "store_hash=abc123", "--credential", "access_token=tok"),
    )
    result = cli(app, "update", "bc", "--credential", "access_token=")
    assert result.exit_code == 0
    assert "still needs --credential access_token=…" in result.output
    assert source(app, "bc").api_credentials == {"store_hash": "abc123"}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("update", "nope", "--locale", "en"), "no source named 'nope'"),
        (("update", "shopify"), "nothing to change"),
        (("update", "shopify", "--country", "GBR"), "two-letter"),
        (("disable", "nope"), "no source named"),
        (("rotate-secret", "nope"), "no source named"),
    ],
)
def test_commands_on_bad_input_exit_non_zero_with_a_message(app, args, message):
    result = cli(app, *args)
    assert result.exit_code != 0
    assert message in result.output


# --- disable / enable ----------------------------------------------------------------------


def test_a_disabled_source_answers_404_and_enabling_restores_it(app):
    cli(app, "add", "shop", "--platform", "woocommerce", "--secret", "s1")
    assert cli(app, "disable", "shop").exit_code == 0
    response = post_wc(app, "s1")
    assert response.status_code == 404
    assert response.json["error"] == "unknown_source"
    assert cli(app, "enable", "shop").exit_code == 0
    assert post_wc(app, "s1").status_code == 200


def test_an_unknown_source_answers_404_json(app):
    response = post_wc(app, "s1", name="never-added")
    assert response.status_code == 404
    assert response.json == {
        "error": "unknown_source",
        "message": "no enabled source named 'never-added'",
    }


# --- rotation ------------------------------------------------------------------------------


def test_rotation_keeps_the_previous_secret_until_drop_old(app):
    cli(app, "add", "shop", "--platform", "woocommerce", "--secret", "old-secret")
    result = cli(app, "rotate-secret", "shop")
    assert result.exit_code == 0, result.output
    new = source(app, "shop").secrets[0]
    assert result.output.count(new) == 1  # printed once
    assert "old-secret" not in result.output
    assert post_wc(app, "old-secret").status_code == 200
    assert post_wc(app, new).status_code == 200
    result = cli(app, "rotate-secret", "shop", "--drop-old")
    assert result.exit_code == 0
    assert source(app, "shop").secrets == [new]
    assert post_wc(app, "old-secret").status_code == 401


def test_a_second_rotation_retires_the_oldest_secret(app):
    cli(app, "add", "shop", "--platform", "woocommerce", "--secret", "first")
    cli(app, "rotate-secret", "shop", "--secret", "second")
    cli(app, "rotate-secret", "shop", "--secret", "third")
    assert source(app, "shop").secrets == ["third", "second"]
    assert post_wc(app, "first").status_code == 401


def test_rotating_a_bigcommerce_source_needs_the_new_client_secret(app):
    cli(
        app,
        *("add", "bc", "--platform", "bigcommerce", "--secret", "cs"),
        *("--credential", "store_hash=abc123", "--credential", "access_token=tok"),
    )
    result = cli(app, "rotate-secret", "bc")
    assert result.exit_code != 0
    assert "pass --secret" in result.output


def test_rotating_an_env_managed_source_warns_that_the_variable_wins(app):
    result = cli(app, "rotate-secret", "shopify")
    assert result.exit_code == 0
    assert "DISPATCH_SHOPIFY_SECRET is set" in result.output


def test_source_changes_are_audited_without_secrets(app):
    cli(app, "add", "shop", "--platform", "woocommerce", "--secret", "audit-secret")
    cli(app, "rotate-secret", "shop", "--secret", "audit-secret-2")
    cli(app, "disable", "shop")
    with get_db(app).session() as session:
        entries = session.scalars(select(AuditEntry).order_by(AuditEntry.id)).all()
        assert [e.action for e in entries] == ["source.rotate_secret", "source.disable"]
        assert all("audit-secret" not in (e.detail or "") for e in entries)


# --- environment variables -----------------------------------------------------------------


def test_platform_secret_variables_create_and_update_their_source(app_factory):
    app = app_factory(WOOCOMMERCE_SECRET="env-1", SHOPWARE_SECRET="sw-1")
    assert source(app, "woocommerce").platform == "woocommerce"
    assert source(app, "shopware").secrets == ["sw-1"]
    app = app_factory(WOOCOMMERCE_SECRET="env-2")
    assert source(app, "woocommerce").secrets == ["env-2", "env-1"]


def test_secrets_never_reach_the_logs(app, caplog):
    caplog.set_level(logging.DEBUG)
    cli(app, "add", "shop", "--platform", "woocommerce", "--secret", "log-secret-1")
    cli(app, "rotate-secret", "shop", "--secret", "log-secret-2")
    post_wc(app, "log-secret-1")
    post_wc(app, "wrong-secret")
    standard = "whsec_" + base64.b64encode(b"k" * 32).decode()
    cli(app, "add", "wh", "--platform", "standard", "--secret", standard)
    app.test_client().post("/webhooks/wh", json={"type": "x"})
    for secret in ("log-secret-1", "log-secret-2", standard, "test-shopify-secret"):
        assert secret not in caplog.text
