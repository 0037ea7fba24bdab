"""Dotdigital client: the request it makes, and how every answer is classified."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
import requests
import responses
from responses import matchers

from dispatch_notifier.sms.dotdigital import (
    DotdigitalClient,
    classify_exception,
    classify_response,
)

API = "https://r1-api.dotdigital.com"


@pytest.fixture
def client() -> DotdigitalClient:
    return DotdigitalClient(API + "/", "apiuser@apiconnector.com", "pw", timeout=(2.0, 7.0))


@responses.activate
def test_send_posts_the_message_to_the_digits_only_number_with_basic_auth(client):
    responses.post(
        f"{API}/v2/sms-messages/send-to/447911123456",
        status=204,
        match=[
            matchers.json_params_matcher({"message": "Hello"}),
            matchers.header_matcher(
                {"Authorization": "Basic YXBpdXNlckBhcGljb25uZWN0b3IuY29tOnB3"}
            ),
            matchers.request_kwargs_matcher({"timeout": (2.0, 7.0)}),
        ],
    )
    outcome = client.send("+447911123456", "Hello")
    assert outcome.status == "sent"
    assert outcome.http_status == 204


@responses.activate
def test_the_client_reuses_one_pooled_session(client):
    responses.post(f"{API}/v2/sms-messages/send-to/447911123456", status=204)
    session = client.session
    client.send("+447911123456", "a")
    client.send("+447911123456", "b")
    assert client.session is session
    assert len(responses.calls) == 2


@responses.activate
def test_each_send_carries_its_own_number_message_and_length(client):
    for number, message in (("447911123456", "Short"), ("447700900123", "A longer message é")):
        responses.post(
            f"{API}/v2/sms-messages/send-to/{number}",
            status=204,
            match=[
                matchers.json_params_matcher({"message": message}),
                matchers.header_matcher({"Content-Type": "application/json"}),
            ],
        )
    assert client.send("+447911123456", "Short").status == "sent"
    assert client.send("+447700900123", "A longer message é").status == "sent"
    for call in responses.calls:
        assert call.request.headers["Content-Length"] == str(len(call.request.body))
        assert call.request.headers["Authorization"].startswith("Basic ")


def body(message: str) -> bytes:
    return json.dumps({"message": message}).encode()


@pytest.mark.parametrize(
    ("status", "message", "expected", "reason_part"),
    [
        (
            403,
            "Error: ERROR_SMS_SENDNOTPERMITTED You do not have sufficient credit",
            "failed",
            "no SMS credit",
        ),
        (400, "ERROR_SMS_SENDNOTPERMITTED", "failed", "no SMS credit"),
        (400, "Error: ERROR_SMS_INVALIDPHONENUMBER", "failed", "phone number"),
        (400, "ERROR_SMS_INVALID", "failed", "message text"),
        (401, "ERROR_INVALID_LOGIN", "failed", "credentials"),
        (403, "ERROR_FEATURENOTACTIVE", "failed", "not enabled"),
        (400, "ERROR_SEND_LIMITEXCEEDED", "failed", "allowance"),
        (503, "ERROR_SYSTEM_SERVICETEMPORARILYUNAVAILABLE", "retrying", "unavailable"),
        (400, "Error: ERROR_SYSTEM_SERVICETEMPORARILYUNAVAILABLE", "retrying", "unavailable"),
        (400, "ERROR_APIUSAGE_EXCEEDED", "retrying", "limit"),
        (500, "ERROR_UNKNOWN", "unknown", "unknown"),
    ],
)
def test_errors_are_classified_by_their_token_first(status, message, expected, reason_part):
    outcome = classify_response(status, {}, body(message))
    assert outcome.status == expected
    assert reason_part in outcome.reason
    assert outcome.error_code.startswith("ERROR_")


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (401, "failed"),
        (403, "failed"),
        (400, "failed"),
        (404, "failed"),
        (429, "retrying"),
        (503, "retrying"),
        (500, "unknown"),
        (502, "unknown"),
        (504, "unknown"),
        (301, "unknown"),
    ],
)
def test_without_a_token_the_status_decides(status, expected):
    assert classify_response(status, {}, b"").status == expected


def test_an_unreadable_error_body_is_classified_by_status():
    assert classify_response(502, {}, b"<html>Bad gateway</html>").status == "unknown"
    assert classify_response(400, {}, b"\xff\xfe").status == "failed"


def test_a_429_waits_until_the_rate_limit_reset():
    reset = int(datetime(2030, 1, 1, tzinfo=UTC).timestamp())
    outcome = classify_response(429, {"X-RateLimit-Reset": str(reset)}, b"")
    assert outcome.status == "retrying"
    assert outcome.retry_at == datetime(2030, 1, 1, tzinfo=UTC)


def test_a_429_with_retry_after_seconds():
    outcome = classify_response(429, {"retry-after": "30"}, b"")
    delta = (outcome.retry_at - datetime.now(UTC)).total_seconds()
    assert 25 < delta <= 30


def test_a_429_with_an_http_date_retry_after():
    outcome = classify_response(429, {"Retry-After": "Wed, 01 Jan 2031 00:00:00 GMT"}, b"")
    assert outcome.retry_at == datetime(2031, 1, 1, tzinfo=UTC)


def test_a_connect_timeout_is_safe_to_retry():
    assert classify_exception(requests.ConnectTimeout("boom")).status == "retrying"


def test_a_read_timeout_is_unknown():
    assert classify_exception(requests.ReadTimeout("slow")).status == "unknown"


def test_a_connection_error_after_sending_is_unknown():
    outcome = classify_exception(requests.ConnectionError("Connection reset by peer"))
    assert outcome.status == "unknown"


def test_proxy_and_ca_settings_come_from_the_environment_read_once(monkeypatch):
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/etc/ssl/corp.pem")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    client = DotdigitalClient(API, "u", "p")
    assert client.session.proxies["https"] == "http://proxy.internal:3128"
    assert client.session.verify == "/etc/ssl/corp.pem"

    monkeypatch.setenv("NO_PROXY", "r1-api.dotdigital.com")
    assert "https" not in DotdigitalClient(API, "u", "p").session.proxies


def test_a_refused_connection_is_safe_to_retry():
    client = DotdigitalClient("http://127.0.0.1:9", "u", "p", timeout=(1, 1))
    outcome = client.send("+447911123456", "x")
    assert outcome.status == "retrying"
    assert outcome.reason == "could not connect to Dotdigital"


@responses.activate
def test_a_read_timeout_from_the_transport_is_unknown(client):
    responses.post(
        f"{API}/v2/sms-messages/send-to/447911123456", body=requests.ReadTimeout("read timed out")
    )
    assert client.send("+447911123456", "x").status == "unknown"


@responses.activate
def test_account_info_returns_the_properties(client):
    responses.get(
        f"{API}/v2/account-info",
        json={
            "id": 1,
            "properties": [{"name": "AvailableSmsSendsCredits", "type": "Int", "value": 12}],
        },
    )
    assert client.account_info()["AvailableSmsSendsCredits"] == 12


def test_the_console_backend_is_chosen_without_credentials(app_factory):
    from dispatch_notifier.sms import backend_for

    app = app_factory(SMS_BACKEND=None)
    assert app.config["SMS_BACKEND"] == "console"
    assert backend_for(app).name == "console"


def test_dotdigital_is_chosen_when_credentials_are_set(app_factory):
    from dispatch_notifier.sms import backend_for

    app = app_factory(SMS_BACKEND=None, DOTDIGITAL_USER="u", DOTDIGITAL_PASSWORD="p")
    assert app.config["SMS_BACKEND"] == "dotdigital"
    assert backend_for(app).name == "dotdigital"
