"""The fake Dotdigital SMS API behaves like the real one, and fails on purpose when told to."""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import selectors
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests

from dispatch_notifier.testing.fake_dotdigital import (
    FakeDotdigital,
    SentSms,
    drop,
    error,
    garbage,
    ok,
    parse_rate_limit,
    rate_limited,
    retry_after,
    server_error,
    slow,
    unavailable,
)

USER, PASSWORD = "apiuser", "pw"
NUMBER = "447911123456"
TEXT = "Your order is on its way"
PROJECT_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def fake() -> Iterator[FakeDotdigital]:
    with FakeDotdigital(user=USER, password=PASSWORD) as fake:
        yield fake


def send(
    fake: FakeDotdigital,
    number: str = NUMBER,
    message: Any = TEXT,
    *,
    auth: tuple[str, str] | None = (USER, PASSWORD),
    timeout: float | tuple[float, float] = 5,
    session: Any = requests,
) -> requests.Response:
    return session.post(
        f"{fake.url}/v2/sms-messages/send-to/{number}",
        json={"message": message},
        auth=auth,
        timeout=timeout,
    )


def error_message(response: requests.Response) -> str:
    return response.json()["message"]


# --- the happy path -----------------------------------------------------------------------------


def test_send_answers_204_with_an_empty_body_and_records_the_sms(fake: FakeDotdigital) -> None:
    response = send(fake)

    assert response.status_code == 204
    assert response.content == b""
    assert [(s.number, s.message) for s in fake.sent] == [(NUMBER, TEXT)]
    assert isinstance(fake.sent[0], SentSms)
    assert abs(fake.sent[0].at - time.time()) < 5


def test_sent_to_lists_only_the_sms_for_that_number(fake: FakeDotdigital) -> None:
    send(fake, "447911000001", "first")
    send(fake, "447911000002", "second")
    send(fake, "447911000001", "third")

    assert [s.message for s in fake.sent_to("447911000001")] == ["first", "third"]


def test_a_message_of_exactly_1600_characters_is_accepted(fake: FakeDotdigital) -> None:
    assert send(fake, message="x" * 1600).status_code == 204


def test_one_keep_alive_connection_carries_several_requests(fake: FakeDotdigital) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", fake.port, timeout=5)
    headers = {"Content-Type": "application/json", "Authorization": _basic(USER, PASSWORD)}
    try:
        for i in range(3):
            body = json.dumps({"message": f"sms {i}"})
            connection.request("POST", f"/v2/sms-messages/send-to/{NUMBER}", body, headers)
            response = connection.getresponse()
            assert (response.status, response.read()) == (204, b"")
            assert not response.will_close
    finally:
        connection.close()
    assert len(fake.sent) == 3


def test_account_info_reports_the_credits_left_and_the_api_endpoint() -> None:
    with FakeDotdigital(user=USER, password=PASSWORD, credits=7) as fake:
        send(fake)
        response = requests.get(f"{fake.url}/v2/account-info", auth=(USER, PASSWORD), timeout=5)

    assert response.status_code == 200
    properties = {p["name"]: p for p in response.json()["properties"]}
    assert properties["AvailableSmsSendsCredits"] == {
        "name": "AvailableSmsSendsCredits",
        "type": "Int",
        "value": 6,
    }
    assert properties["ApiEndpoint"]["value"] == f"{fake.url}/"


# --- validation, like the real API --------------------------------------------------------------


@pytest.mark.parametrize(
    "auth", [None, (USER, "wrong"), ("someone-else", PASSWORD)], ids=["none", "pw", "user"]
)
def test_wrong_or_missing_basic_auth_answers_401_with_an_empty_body(
    fake: FakeDotdigital, auth: tuple[str, str] | None
) -> None:
    response = send(fake, auth=auth)

    assert response.status_code == 401
    assert response.content == b""
    assert fake.sent == []
    assert fake.requests[-1].auth_ok is False


@pytest.mark.parametrize(
    "number", ["+447911123456", "07911%20123456", "12345", "44791112345678901"]
)
def test_a_number_that_is_not_7_to_15_digits_answers_400_invalid_phone_number(
    fake: FakeDotdigital, number: str
) -> None:
    response = send(fake, number)

    assert response.status_code == 400
    assert "ERROR_SMS_INVALIDPHONENUMBER" in error_message(response)
    assert fake.sent == []


@pytest.mark.parametrize(
    "body",
    [b"", b"not json", b"[]", b"{}", b'{"message": ""}', b'{"message": 5}', b'{"message": null}'],
)
def test_a_missing_empty_or_non_text_message_answers_400_sms_invalid(
    fake: FakeDotdigital, body: bytes
) -> None:
    response = requests.post(
        f"{fake.url}/v2/sms-messages/send-to/{NUMBER}",
        data=body,
        headers={"Content-Type": "application/json"},
        auth=(USER, PASSWORD),
        timeout=5,
    )

    assert response.status_code == 400
    assert "ERROR_SMS_INVALID" in error_message(response)
    assert fake.sent == []


def test_a_message_over_1600_characters_answers_400_sms_invalid(fake: FakeDotdigital) -> None:
    response = send(fake, message="x" * 1601)

    assert response.status_code == 400
    assert "ERROR_SMS_INVALID" in error_message(response)


def test_an_unknown_path_answers_404_json(fake: FakeDotdigital) -> None:
    response = requests.get(f"{fake.url}/v2/contacts", auth=(USER, PASSWORD), timeout=5)

    assert response.status_code == 404
    assert "message" in response.json()


def test_the_request_log_keeps_rejected_requests_too(fake: FakeDotdigital) -> None:
    send(fake)
    send(fake, auth=(USER, "wrong"))
    send(fake, "123")

    seen = [(r.method, r.number, r.message, r.status, r.auth_ok) for r in fake.requests]
    assert seen == [
        ("POST", NUMBER, TEXT, 204, True),
        ("POST", NUMBER, TEXT, 401, False),
        ("POST", "123", TEXT, 400, True),
    ]


# --- credits and rate limits --------------------------------------------------------------------


def test_send_without_credit_answers_403_with_the_no_credit_token() -> None:
    with FakeDotdigital(user=USER, password=PASSWORD, credits=2) as fake:
        statuses = [send(fake).status_code for _ in range(2)]
        refused = send(fake)

        assert statuses == [204, 204]
        assert refused.status_code == 403
        assert "ERROR_SMS_SENDNOTPERMITTED" in error_message(refused)
        assert fake.credits == 0
        assert len(fake.sent) == 2

        fake.credits = 1  # topped up while running
        assert send(fake).status_code == 204


def test_more_sends_than_the_rate_limit_in_one_window_answer_429_with_ratelimit_headers() -> None:
    with FakeDotdigital(user=USER, password=PASSWORD, rate_limit=(3, 0.5)) as fake:
        accepted = [send(fake) for _ in range(3)]
        limited = send(fake)

        assert [r.status_code for r in accepted] == [204, 204, 204]
        assert [r.headers["X-RateLimit-Remaining"] for r in accepted] == ["2", "1", "0"]
        assert limited.status_code == 429
        assert limited.headers["X-RateLimit-Limit"] == "3"
        assert limited.headers["X-RateLimit-Remaining"] == "0"
        assert time.time() <= int(limited.headers["X-RateLimit-Reset"]) <= time.time() + 2
        assert limited.headers["X-RateLimit-Scope"]
        assert len(fake.sent) == 3

        time.sleep(0.55)  # the next window
        assert send(fake).status_code == 204


def test_without_a_rate_limit_no_ratelimit_headers_are_sent(fake: FakeDotdigital) -> None:
    assert "X-RateLimit-Limit" not in send(fake).headers


# --- scripted behaviours ------------------------------------------------------------------------


def test_scripted_behaviours_are_used_one_per_send_in_order_then_the_default(
    fake: FakeDotdigital,
) -> None:
    fake.script(
        error(400, "ERROR_SMS_INVALIDPHONENUMBER", "no such number"),
        unavailable(),
        server_error(502),
        ok(),
    )

    responses = [send(fake) for _ in range(5)]

    assert [r.status_code for r in responses] == [400, 503, 502, 204, 204]
    assert error_message(responses[0]) == "Error: ERROR_SMS_INVALIDPHONENUMBER no such number"
    assert "ERROR_SYSTEM_SERVICETEMPORARILYUNAVAILABLE" in error_message(responses[1])
    assert fake.script_remaining == 0
    assert len(fake.sent) == 2


def test_a_scripted_answer_is_not_spent_on_a_request_with_bad_auth(fake: FakeDotdigital) -> None:
    fake.script(unavailable())

    assert send(fake, auth=(USER, "wrong")).status_code == 401
    assert send(fake).status_code == 503


def test_scripted_rate_limited_answers_429_with_a_reset_in_the_future(
    fake: FakeDotdigital,
) -> None:
    fake.script(rate_limited(reset_in=3))

    response = send(fake)

    assert response.status_code == 429
    assert response.headers["X-RateLimit-Remaining"] == "0"
    reset = int(response.headers["X-RateLimit-Reset"])
    assert time.time() + 2 <= reset <= time.time() + 4
    assert {"X-RateLimit-Limit", "X-RateLimit-Scope"} <= set(response.headers)
    assert fake.sent == []


def test_scripted_retry_after_answers_429_with_only_a_retry_after_header(
    fake: FakeDotdigital,
) -> None:
    fake.script(retry_after(7))

    response = send(fake)

    assert response.status_code == 429
    assert response.headers["Retry-After"] == "7"
    assert not any(name.lower().startswith("x-ratelimit") for name in response.headers)


def test_drop_closes_the_connection_without_an_answer_and_records_nothing(
    fake: FakeDotdigital,
) -> None:
    fake.script(drop())

    with pytest.raises(requests.ConnectionError):
        send(fake)

    assert fake.sent == []
    assert fake.requests[-1].status is None
    assert send(fake).status_code == 204  # the next request is served as usual


def test_drop_on_a_reused_keep_alive_connection_also_surfaces_as_a_connection_error(
    fake: FakeDotdigital,
) -> None:
    with requests.Session() as session:
        assert send(fake, session=session).status_code == 204
        fake.script(drop())
        with pytest.raises(requests.ConnectionError):
            send(fake, session=session)
        assert send(fake, session=session).status_code == 204
    assert len(fake.sent) == 2


def test_slow_past_the_client_read_timeout_raises_read_timeout_yet_the_sms_counts_as_sent(
    fake: FakeDotdigital,
) -> None:
    fake.script(slow(0.4))

    with pytest.raises(requests.ReadTimeout):
        send(fake, timeout=(2, 0.1))

    assert fake.sent == []  # not yet: the fake has not answered
    assert [s.message for s in fake.wait_for_sent(1, timeout=2)] == [TEXT]


def test_slow_then_ok_answers_204_late_and_counts_as_sent(fake: FakeDotdigital) -> None:
    fake.script(slow(0.2))

    started = time.monotonic()
    response = send(fake)

    assert response.status_code == 204
    assert time.monotonic() - started >= 0.2
    assert len(fake.sent) == 1


def test_slow_then_an_error_is_not_sent(fake: FakeDotdigital) -> None:
    fake.script(slow(0.05, then=unavailable()))

    assert send(fake).status_code == 503
    assert fake.sent == []


def test_garbage_answers_200_with_a_body_that_is_not_json(fake: FakeDotdigital) -> None:
    fake.script(garbage())

    response = send(fake)

    assert response.status_code == 200
    with pytest.raises(ValueError):
        response.json()
    assert fake.sent == []


def test_latency_delays_every_send(fake: FakeDotdigital) -> None:
    fake.latency = 0.15

    started = time.monotonic()
    assert send(fake).status_code == 204
    assert send(fake, auth=None).status_code == 401

    assert time.monotonic() - started >= 0.3


def test_reset_forgets_records_and_script_but_keeps_settings_and_chaos() -> None:
    with FakeDotdigital(user=USER, password=PASSWORD, credits=5) as fake:
        send(fake)
        fake.script(unavailable())
        fake.chaos(1, p_server_error=1.0)

        fake.reset()

        assert (fake.sent, fake.requests, fake.script_remaining) == ([], [], 0)
        assert fake.credits == 4
        assert send(fake).status_code == 500
        fake.stop_chaos()
        assert send(fake).status_code == 204


# --- chaos --------------------------------------------------------------------------------------


def _chaos_outcomes(seed: int) -> list[str]:
    with FakeDotdigital(user=USER, password=PASSWORD) as fake:
        fake.chaos(
            seed,
            p_unavailable=0.2,
            p_rate_limited=0.1,
            p_slow=0.1,
            slow_seconds=0.01,
            p_drop=0.1,
            p_server_error=0.1,
        )
        outcomes = []
        for _ in range(40):
            try:
                outcomes.append(str(send(fake).status_code))
            except requests.ConnectionError:
                outcomes.append("drop")
        assert len(fake.sent) == outcomes.count("204")
        return outcomes


def test_chaos_with_the_same_seed_plays_the_same_mix_of_failures() -> None:
    first, second = _chaos_outcomes(seed=42), _chaos_outcomes(seed=42)

    assert first == second
    assert {"204", "503", "429", "500", "drop"} <= set(first)


def test_chaos_probabilities_must_add_up_to_at_most_one(fake: FakeDotdigital) -> None:
    with pytest.raises(ValueError):
        fake.chaos(1, p_unavailable=0.6, p_drop=0.5)


def test_scripted_behaviours_come_before_chaos(fake: FakeDotdigital) -> None:
    fake.chaos(3, p_unavailable=1.0)
    fake.script(ok())

    assert [send(fake).status_code for _ in range(2)] == [204, 503]
    fake.stop_chaos()
    assert send(fake).status_code == 204


# --- concurrency and lifecycle ------------------------------------------------------------------


def test_fifty_concurrent_sends_are_all_served_in_parallel_and_recorded_exactly_once() -> None:
    with FakeDotdigital(user=USER, password=PASSWORD, latency=0.2) as fake:
        local = threading.local()

        def send_one(i: int) -> int:
            if not hasattr(local, "session"):
                local.session = requests.Session()
            return send(fake, f"4479110{i:05d}", f"sms {i}", session=local.session).status_code

        started = time.monotonic()
        with ThreadPoolExecutor(max_workers=50) as pool:
            statuses = list(pool.map(send_one, range(50)))
        elapsed = time.monotonic() - started

        assert statuses == [204] * 50
        assert sorted(s.message for s in fake.sent) == sorted(f"sms {i}" for i in range(50))
        assert len({s.number for s in fake.sent}) == 50
        assert elapsed < 3  # 50 x 0.2 s one after the other would take 10 s


def test_close_stops_serving_and_is_idempotent() -> None:
    fake = FakeDotdigital(user=USER, password=PASSWORD)
    assert send(fake).status_code == 204

    fake.close()
    fake.close()

    with pytest.raises(requests.ConnectionError):
        send(fake, timeout=1)


def test_close_cuts_a_slow_answer_short() -> None:
    fake = FakeDotdigital(user=USER, password=PASSWORD)
    fake.script(slow(30))
    errors: list[Exception] = []

    def call() -> None:
        try:
            send(fake, timeout=10)
        except requests.RequestException as exc:
            errors.append(exc)

    caller = threading.Thread(target=call)
    caller.start()
    time.sleep(0.2)
    started = time.monotonic()
    fake.close()
    caller.join(timeout=5)

    assert time.monotonic() - started < 2
    assert len(errors) == 1
    assert fake.sent == []


def test_parse_rate_limit_reads_count_slash_seconds() -> None:
    assert parse_rate_limit("35/60") == (35, 60.0)
    with pytest.raises(argparse.ArgumentTypeError):
        parse_rate_limit("35")


# --- running as a separate process -------------------------------------------------------------


def _read_line(process: subprocess.Popen[str], timeout: float) -> str:
    assert process.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        if not selector.select(timeout):
            raise TimeoutError("the fake printed nothing")
    return process.stdout.readline().strip()


def test_runs_as_a_process_reports_what_was_sent_and_stops_on_sigterm() -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(PROJECT_ROOT), *sys.path])}
    command = [sys.executable, "-m", "dispatch_notifier.testing.fake_dotdigital"]
    process = subprocess.Popen(
        [*command, "--port", "0", "--user", "U", "--password", "P", "--rate-limit", "35/60"],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        cwd=PROJECT_ROOT,
    )
    try:
        line = _read_line(process, timeout=10)
        assert line.startswith("fake dotdigital listening on http://127.0.0.1:")
        url = line.rsplit(" ", 1)[-1]

        sent = requests.post(
            f"{url}/v2/sms-messages/send-to/{NUMBER}",
            json={"message": TEXT},
            auth=("U", "P"),
            timeout=5,
        )
        assert sent.status_code == 204
        assert sent.headers["X-RateLimit-Limit"] == "35"

        report = requests.get(f"{url}/_fake/sent", timeout=5).json()
        assert report["count"] == 1
        assert report["sent"][0]["number"] == NUMBER
        assert report["sent"][0]["message"] == TEXT

        assert requests.post(f"{url}/_fake/reset", timeout=5).status_code == 204
        assert requests.get(f"{url}/_fake/sent", timeout=5).json() == {"count": 0, "sent": []}

        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=5) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
