"""Health endpoints: liveness always, readiness only with a reachable, migrated database."""

from __future__ import annotations

from dispatch_notifier import create_app


def test_healthz_answers_ok(client):
    assert client.get("/healthz").json == {"status": "ok"}


def test_readyz_is_ready_on_a_migrated_database(client):
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.json["status"] == "ready"


def test_readyz_is_503_when_the_database_is_unreachable(tmp_path):
    app = create_app(
        {
            "TESTING": True,
            "INSTANCE_PATH": str(tmp_path),
            "DATABASE_URL": "postgresql+psycopg://nobody@127.0.0.1:1/none",
        }
    )
    response = app.test_client().get("/readyz")
    assert response.status_code == 503
    assert response.json["status"] == "unavailable"


def test_webhook_answers_503_when_the_database_is_unreachable(tmp_path):
    app = create_app(
        {
            "TESTING": True,
            "INSTANCE_PATH": str(tmp_path),
            "DATABASE_URL": "postgresql+psycopg://nobody@127.0.0.1:1/none",
        }
    )
    response = app.test_client().post("/webhooks/shopify", json={})
    assert response.status_code == 503
    assert response.json["error"] == "database_unavailable"


def test_the_app_starts_with_platform_secrets_while_the_database_is_down(tmp_path):
    app = create_app(
        {
            "TESTING": True,
            "INSTANCE_PATH": str(tmp_path),
            "SHOPIFY_SECRET": "s",
            "DATABASE_URL": "postgresql+psycopg://nobody@127.0.0.1:1/none",
        }
    )
    assert app.test_client().get("/healthz").status_code == 200
    assert app.test_client().post("/webhooks/shopify", json={}).status_code == 503
