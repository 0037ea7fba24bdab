"""The JSON API: bearer token, send log with filters and cursor, detail, resend, SMS counter."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dispatch_notifier import segments, template_editor
from dispatch_notifier.db import get_db
from dispatch_notifier.models import AuditEntry, Notification, utcnow
from tests.console_helpers import add_many, add_notification

TOKEN = "api-t0ken-123"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def api(app_factory):  # type: ignore[no-untyped-def]
    return app_factory(API_TOKEN=TOKEN)


def test_the_api_is_off_without_a_token_setting(client):
    response = client.get("/api/v1/notifications", headers=AUTH)
    assert response.status_code == 404
    assert response.json["error"] == "api_disabled"


def test_a_missing_or_wrong_token_is_401_with_a_json_error(api):
    client = api.test_client()
    missing = client.get("/api/v1/notifications")
    wrong = client.get("/api/v1/notifications", headers={"Authorization": "Bearer nope"})
    assert missing.status_code == wrong.status_code == 401
    assert missing.json["error"] == wrong.json["error"] == "unauthorized"
    assert missing.headers["WWW-Authenticate"].startswith("Bearer")


def test_list_filters_and_pages_with_next_cursor(api):
    add_many(api, 5, status="sent")
    add_notification(api, status="failed", order="77", error="no SMS credit")
    client = api.test_client()
    failed = client.get("/api/v1/notifications?status=failed", headers=AUTH).json
    assert [item["order"] for item in failed["items"]] == ["77"]
    assert failed["items"][0]["phone"] == "+44 •••• ••3456"
    first = client.get("/api/v1/notifications?limit=4", headers=AUTH).json
    assert len(first["items"]) == 4 and first["next_cursor"]
    rest = client.get(
        f"/api/v1/notifications?limit=4&cursor={first['next_cursor']}", headers=AUTH
    ).json
    assert len(rest["items"]) == 2 and rest["next_cursor"] is None
    ids = [i["id"] for i in first["items"] + rest["items"]]
    assert len(set(ids)) == 6


def test_since_and_until_filter_by_creation_time(api):
    add_notification(api, order="old", created_at=utcnow() - timedelta(days=3))
    add_notification(api, order="new")
    since = (utcnow() - timedelta(days=1)).date().isoformat()
    items = api.test_client().get(f"/api/v1/notifications?since={since}", headers=AUTH).json
    assert [i["order"] for i in items["items"]] == ["new"]


@pytest.mark.parametrize(
    ("query", "parameter"),
    [
        ("status=nope", "status"),
        ("limit=0", "limit"),
        ("cursor=garbage", "cursor"),
        ("since=yesterday", "since"),
        ("phone=12", "phone"),
    ],
)
def test_bad_parameters_get_a_stable_error_code(api, query, parameter):
    response = api.test_client().get(f"/api/v1/notifications?{query}", headers=AUTH)
    assert response.status_code == 400
    assert response.json["error"] == "invalid_parameter"
    assert response.json["parameter"] == parameter


def test_detail_has_attempts_and_unknown_id_is_404(api):
    nid = add_notification(
        api,
        status="failed",
        attempts=[{"started_at": utcnow(), "outcome": "failed", "http_status": 400}],
    )
    client = api.test_client()
    data = client.get(f"/api/v1/notifications/{nid}", headers=AUTH).json
    assert data["attempts"] == 1
    assert data["attempt_details"][0]["http_status"] == 400
    assert "+447911123456" not in str(data)
    missing = client.get("/api/v1/notifications/999999", headers=AUTH)
    assert missing.status_code == 404 and missing.json["error"] == "not_found"


def test_resend_of_a_sent_message_needs_confirmation(api):
    nid = add_notification(api, status="sent")
    client = api.test_client()
    refused = client.post(f"/api/v1/notifications/{nid}/resend", headers=AUTH)
    assert refused.status_code == 409
    assert refused.json["error"] == "confirmation_required"
    done = client.post(f"/api/v1/notifications/{nid}/resend", json={"confirm": True}, headers=AUTH)
    assert done.status_code == 202 and done.json["status"] == "pending"
    with get_db(api).session() as session:
        assert session.get(Notification, nid).requested_by == "api"
        assert session.query(AuditEntry).filter_by(actor="api", action="resend").count() == 1


def test_resend_of_a_failed_message_needs_no_confirmation(api):
    nid = add_notification(api, status="failed")
    response = api.test_client().post(f"/api/v1/notifications/{nid}/resend", headers=AUTH)
    assert response.status_code == 202


def test_unknown_api_route_is_a_json_404(api):
    response = api.test_client().get("/api/v1/nothing", headers=AUTH)
    assert response.status_code == 404 and response.json["error"] == "not_found"


def test_count_endpoint_matches_the_segments_module(api):
    text = "Your order’s on its way – track it: https://t.example/1"
    data = api.test_client().post("/api/v1/sms/count", json={"text": text}, headers=AUTH).json
    info = segments.count(text)
    assert (data["encoding"], data["characters"], data["segments"]) == (
        info.encoding,
        info.characters,
        info.segments,
    )
    assert data["gsm_safe"] == segments.gsm_safe(text)
    bad = api.test_client().post("/api/v1/sms/count", json={"txt": 1}, headers=AUTH)
    assert bad.status_code == 400 and bad.json["error"] == "invalid_body"


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=400))
def test_the_editor_counter_is_exactly_the_segments_module(text):
    shown = template_editor.counter(text)
    info = segments.count(text)
    assert {k: shown[k] for k in info.to_dict()} == info.to_dict()
    # The highlighted runs put the text back together, and only UCS-2 forcers are marked.
    assert "".join(run for run, _ in shown["runs"]) == text
    marked = "".join(run for run, bad in shown["runs"] if bad)
    assert set(marked) == set(info.unicode_chars)


OPENAPI = Path(__file__).resolve().parent.parent / "dispatch_notifier" / "static" / "openapi.json"


def _schema(name: str) -> dict:
    spec = json.loads(OPENAPI.read_text())
    return {"$ref": f"#/components/schemas/{name}", "components": spec["components"]}


def test_every_api_route_is_in_the_openapi_file(api):
    spec = json.loads(OPENAPI.read_text())
    assert spec["openapi"].startswith("3.1")
    documented = {
        (method.upper(), "/api/v1" + path.replace("{id}", "<int:notification_id>"))
        for path, ops in spec["paths"].items()
        for method in ops
    }
    served = {
        (method, rule.rule)
        for rule in api.url_map.iter_rules()
        if rule.endpoint.startswith("api.")
        for method in rule.methods - {"HEAD", "OPTIONS"}
    }
    assert served == documented


def test_api_answers_match_the_openapi_schemas(api):
    nid = add_notification(
        api, attempts=[{"started_at": utcnow(), "outcome": "sent", "http_status": 204}]
    )
    client = api.test_client()
    listing = client.get("/api/v1/notifications", headers=AUTH).json
    jsonschema.validate(listing["items"][0], _schema("Notification"))
    detail = client.get(f"/api/v1/notifications/{nid}", headers=AUTH).json
    jsonschema.validate(detail, _schema("NotificationDetail"))
    count = client.post("/api/v1/sms/count", json={"text": "hi"}, headers=AUTH).json
    jsonschema.validate(count, _schema("Count"))
    missing = client.get("/api/v1/notifications/0", headers=AUTH).json
    jsonschema.validate(missing, _schema("Error"))
