"""Dotdigital client: the request it makes, and how every answer is classified."""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import urllib3
from urllib3.exceptions import (
    ConnectTimeoutError,
    NewConnectionError,
    ProtocolError,
    ProxyError,
    ReadTimeoutError,
)

from dispatch_notifier.sms.dotdigital import (
    DotdigitalClient,
    classify_exception,
    classify_response,
)
from dispatch_notifier.testing.fake_dotdigital import Drop, FakeDotdigital

API = "https://r1-api.dotdigital.com"


@dataclass(frozen=True)
class Seen:
    """One request as it arrived on the wire."""

    method: str
    target: str  # the request line's target: a path, or an absolute URL through a proxy
    headers: dict[str, str]  # names in lower case: HTTP header names are case-insensitive
    body: bytes
    client_port: int  # which TCP connection it came on


class Recorder:
    """A real local HTTP server that records every request and answers 204."""

    def __init__(self) -> None:
        self.seen: list[Seen] = []
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as a real API does

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                recorder.seen.append(
                    Seen(
                        self.command,
                        self.path,
                        {k.lower(): v for k, v in self.headers.items()},
                        self.rfile.read(length),
                        self.client_address[1],
                    )
                )
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    server = Recorder()
    yield server
    server.server.shutdown()
    server.server.server_close()


@pytest.fixture
def no_proxy_settings(monkeypatch) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)


@pytest.fixture
def client(recorder, no_proxy_settings) -> DotdigitalClient:
    return DotdigitalClient(
        recorder.url + "/", "apiuser@apiconnector.com", "pw", timeout=(2.0, 7.0)
    )


def test_send_posts_the_message_to_the_digits_only_number_with_basic_auth(client, recorder):
    outcome = client.send("+447911123456", "Hello")
    assert outcome.status == "sent"
    assert outcome.http_status == 204
    [request] = recorder.seen
    assert (request.method, request.target) == ("POST", "/v2/sms-messages/send-to/447911123456")
    assert request.headers["authorization"] == "Basic YXBpdXNlckBhcGljb25uZWN0b3IuY29tOnB3"
    assert request.headers["content-type"] == "application/json"
    assert request.headers["accept"] == "application/json"
    assert request.headers["user-agent"].startswith("dispatch-notifier")
    assert json.loads(request.body) == {"message": "Hello"}


def test_each_send_carries_its_own_number_message_and_length(client, recorder):
    assert client.send("+447911123456", "Short").status == "sent"
    assert client.send("+447700900123", "A longer message é").status == "sent"
    first, second = recorder.seen
    assert first.target.endswith("/447911123456")
    assert second.target.endswith("/447700900123")
    assert json.loads(first.body) == {"message": "Short"}
    assert json.loads(second.body) == {"message": "A longer message é"}
    for request in recorder.seen:
        assert request.headers["content-length"] == str(len(request.body))


def test_sends_reuse_one_kept_alive_connection(client, recorder):
    for text in ("a", "b", "c"):
        assert client.send("+447911123456", text).status == "sent"
    assert len({request.client_port for request in recorder.seen}) == 1


def test_the_read_timeout_applies_and_a_late_answer_is_unknown(no_proxy_settings):
    with FakeDotdigital(latency=1.0) as fake:
        client = DotdigitalClient(fake.url, fake.user, fake.password, timeout=(1.0, 0.2))
        outcome = client.send("+447911123456", "x")
    assert outcome.status == "unknown"
    assert outcome.error_code == "ReadTimeoutError"
    assert "did not answer in time" in outcome.reason


def test_a_connection_closed_without_an_answer_is_unknown(no_proxy_settings):
    with FakeDotdigital() as fake:
        fake.script(Drop())
        client = DotdigitalClient(fake.url, fake.user, fake.password, timeout=(1.0, 2.0))
        outcome = client.send("+447911123456", "x")
    assert outcome.status == "unknown"
    assert "may have been sent" in outcome.reason


def test_the_fake_accepts_our_credentials_and_body(no_proxy_settings):
    with FakeDotdigital(user="apiuser@apiconnector.com", password="s3cret") as fake:
        client = DotdigitalClient(fake.url, "apiuser@apiconnector.com", "s3cret")
        assert client.send("+447911123456", "Your order is on its way").status == "sent"
        [sms] = fake.sent
    assert (sms.number, sms.message) == ("447911123456", "Your order is on its way")


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
    outcome = classify_exception(ConnectTimeoutError(None, "connect timed out"))
    assert outcome.status == "retrying"


def test_a_refused_or_unresolved_connection_is_safe_to_retry():
    assert classify_exception(NewConnectionError(None, "refused")).status == "retrying"


def test_an_unreachable_proxy_is_safe_to_retry():
    exc = ProxyError("Unable to connect to proxy", NewConnectionError(None, "refused"))
    assert classify_exception(exc).status == "retrying"


def test_a_read_timeout_is_unknown():
    assert classify_exception(ReadTimeoutError(None, "/", "slow")).status == "unknown"


def test_a_connection_error_after_sending_is_unknown():
    exc = ProtocolError("Connection aborted.", ConnectionResetError("reset by peer"))
    assert classify_exception(exc).status == "unknown"


def test_a_refused_connection_is_safe_to_retry(no_proxy_settings):
    client = DotdigitalClient("http://127.0.0.1:9", "u", "p", timeout=(1, 1))
    outcome = client.send("+447911123456", "x")
    assert outcome.status == "retrying"
    assert outcome.reason == "could not connect to Dotdigital"
    assert "Connection refused" in outcome.detail
    assert "7911123456" not in outcome.detail  # shown in the send log, where numbers are masked


def test_a_number_quoted_by_a_transport_error_is_masked_in_the_detail(client, monkeypatch):
    def fail(*args: object, **kwargs: object) -> None:
        raise ProtocolError(f"failed on {args[1]}", ConnectionResetError("reset by peer"))

    monkeypatch.setattr(client.http, "urlopen", fail)
    outcome = client.send("+447911123456", "x")
    assert outcome.status == "unknown"
    assert "/v2/sms-messages/send-to/" in outcome.detail
    assert "447911123456" not in outcome.detail
    assert "3456" in outcome.detail


def test_the_proxy_the_environment_names_carries_the_request(monkeypatch, recorder):
    monkeypatch.setenv("HTTP_PROXY", recorder.url.replace("http://", "http://corp:pr0xy@"))
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    client = DotdigitalClient("http://api.dotdigital.invalid", "u", "p", timeout=(2.0, 2.0))
    assert client.send("+447911123456", "via the proxy").status == "sent"
    [request] = recorder.seen
    assert request.target == "http://api.dotdigital.invalid/v2/sms-messages/send-to/447911123456"
    expected = base64.b64encode(b"corp:pr0xy").decode()
    assert request.headers["proxy-authorization"] == f"Basic {expected}"


def test_proxy_and_ca_settings_come_from_the_environment_read_once(monkeypatch):
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/etc/ssl/corp.pem")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    client = DotdigitalClient(API, "u", "p")
    assert isinstance(client.http, urllib3.ProxyManager)
    assert client.http.proxy.host == "proxy.internal"
    assert client.http.connection_pool_kw["ca_certs"] == "/etc/ssl/corp.pem"

    monkeypatch.setenv("NO_PROXY", "r1-api.dotdigital.com")
    assert not isinstance(DotdigitalClient(API, "u", "p").http, urllib3.ProxyManager)


def test_account_info_returns_the_properties(no_proxy_settings):
    with FakeDotdigital(credits=12) as fake:
        info = DotdigitalClient(fake.url, fake.user, fake.password).account_info()
    assert info["AvailableSmsSendsCredits"] == 12


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
