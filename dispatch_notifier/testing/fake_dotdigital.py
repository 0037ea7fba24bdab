"""A real local HTTP server imitating the Dotdigital v2 SMS API, for tests and benchmarks.

It records what was sent, can run out of credit, rate-limit, and play scripted or random failures.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import contextlib
import json
import math
import random
import re
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TypeAlias
from urllib.parse import unquote, urlsplit

from dispatch_notifier.stop_signals import on_stop_signals

MAX_MESSAGE_LENGTH = 1600
UNLIMITED_CREDITS_REPORTED = 1_000_000  # what account-info shows when `credits` is None

SEND_PATH = re.compile(r"^/v2/sms-messages/send-to/(?P<number>[^/]+)$")
ACCOUNT_INFO_PATH = "/v2/account-info"
PHONE_NUMBER = re.compile(r"^[0-9]{7,15}$")

NO_CREDIT_TEXT = "Error: ERROR_SMS_SENDNOTPERMITTED You do not have sufficient credit"
UNAVAILABLE_TOKEN = "ERROR_SYSTEM_SERVICETEMPORARILYUNAVAILABLE"
RATE_LIMITED_TEXT = "Error: ERROR_APIUSAGE_EXCEEDED You have exceeded the rate limit"


# --- records ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SentSms:
    """An SMS the fake accepted (answered 204, or would have if the client had still listened)."""

    number: str
    message: str
    at: float  # time.time() when it was accepted


@dataclass(frozen=True)
class SeenRequest:
    """Any request to the API paths, accepted or not. `status` is None when the fake dropped it."""

    method: str
    path: str
    number: str | None
    message: str | None
    status: int | None
    auth_ok: bool
    at: float


# --- behaviours: what the fake does with one send request ---------------------------------------


@dataclass(frozen=True)
class Ok:
    """Answer as the real API would: validate, rate-limit, spend a credit, 204."""


@dataclass(frozen=True)
class Error:
    status: int
    token: str
    text: str = ""


@dataclass(frozen=True)
class RateLimited:
    reset_in: float = 2.0
    limit: int = 60
    scope: str = "sms"


@dataclass(frozen=True)
class RetryAfter:
    seconds: float


@dataclass(frozen=True)
class Unavailable:
    pass


@dataclass(frozen=True)
class ServerError:
    status: int = 500


@dataclass(frozen=True)
class Slow:
    seconds: float
    then: Behaviour = field(default_factory=Ok)


@dataclass(frozen=True)
class Drop:
    """Read the request, then close the connection without answering."""


@dataclass(frozen=True)
class Garbage:
    """200 with a body that claims to be JSON and is not."""


Behaviour: TypeAlias = (
    Ok | Error | RateLimited | RetryAfter | Unavailable | ServerError | Slow | Drop | Garbage
)


def ok() -> Ok:
    return Ok()


def error(status: int, token: str, text: str = "") -> Error:
    return Error(status, token, text)


def rate_limited(reset_in: float = 2.0, limit: int = 60, scope: str = "sms") -> RateLimited:
    return RateLimited(reset_in, limit, scope)


def retry_after(seconds: float) -> RetryAfter:
    return RetryAfter(seconds)


def unavailable() -> Unavailable:
    return Unavailable()


def server_error(status: int = 500) -> ServerError:
    return ServerError(status)


def slow(seconds: float, then: Behaviour | None = None) -> Slow:
    return Slow(seconds, then if then is not None else Ok())


def drop() -> Drop:
    return Drop()


def garbage() -> Garbage:
    return Garbage()


@dataclass
class _Chaos:
    rng: random.Random
    table: list[tuple[float, Behaviour]]  # (probability, behaviour); the rest is Ok

    def draw(self) -> Behaviour:
        roll = self.rng.random()
        for probability, behaviour in self.table:
            if roll < probability:
                return behaviour
            roll -= probability
        return Ok()


@dataclass
class _Reply:
    status: int | None  # None: drop the connection
    body: bytes = b""
    content_type: str | None = None
    headers: dict[str, str] = field(default_factory=dict)


def _json_reply(status: int, message: str, headers: dict[str, str] | None = None) -> _Reply:
    body = json.dumps({"message": message}).encode()
    return _Reply(status, body, "application/json; charset=utf-8", headers or {})


def _token_text(token: str, text: str = "") -> str:
    return f"Error: {token} {text}".rstrip()


# --- the fake -----------------------------------------------------------------------------------


class FakeDotdigital:
    """The fake API, serving from a daemon thread as soon as it is built.

    Settings are plain attributes and may be changed while it runs:
    `credits` (None = unlimited), `latency` (seconds before answering each send),
    `rate_limit` (None or (n, window_seconds)), `rate_limit_scope`.
    """

    def __init__(
        self,
        *,
        user: str = "apiuser",
        password: str = "password",
        host: str = "127.0.0.1",
        port: int = 0,
        credits: int | None = None,
        latency: float = 0.0,
        rate_limit: tuple[int, float] | None = None,
    ) -> None:
        self.user = user
        self.password = password
        self.credits = credits
        self.latency = latency
        self.rate_limit = rate_limit
        self.rate_limit_scope = "sms"

        self._lock = threading.Condition(threading.Lock())
        self._sent: list[SentSms] = []
        self._requests: list[SeenRequest] = []
        self._script: deque[Behaviour] = deque()
        self._chaos: _Chaos | None = None
        self._window: tuple[tuple[int, float], float, int] | None = None  # setting, start, count
        self._closing = threading.Event()
        self._closed = False

        self._server = _Server((host, port), self)
        self.host = host
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"fake-dotdigital-{self.port}",
            daemon=True,
        )
        self._thread.start()

    # lifecycle

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def close(self) -> None:
        """Stop serving, close the listening socket and every open connection. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._closing.set()
        self._server.shutdown()
        self._server.server_close()
        self._server.close_connections()
        self._thread.join(timeout=5)

    def __enter__(self) -> FakeDotdigital:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # what happened

    @property
    def sent(self) -> list[SentSms]:
        with self._lock:
            return list(self._sent)

    @property
    def requests(self) -> list[SeenRequest]:
        with self._lock:
            return list(self._requests)

    def sent_to(self, number: str) -> list[SentSms]:
        with self._lock:
            return [sms for sms in self._sent if sms.number == number]

    def wait_for_sent(self, count: int, timeout: float = 5.0) -> list[SentSms]:
        """Wait until at least `count` SMS were accepted; TimeoutError if that does not happen."""
        with self._lock:
            if not self._lock.wait_for(lambda: len(self._sent) >= count, timeout):
                raise TimeoutError(f"{len(self._sent)} SMS sent after {timeout}s, wanted {count}")
            return list(self._sent)

    def reset(self) -> None:
        """Forget sent SMS, seen requests, the queued script and the rate-limit window.

        Settings stay as they are: `credits`, `latency`, `rate_limit` and chaos (see stop_chaos).
        """
        with self._lock:
            self._sent.clear()
            self._requests.clear()
            self._script.clear()
            self._window = None

    # scripted and random failures

    def script(self, *behaviours: Behaviour) -> None:
        """Queue behaviours, used one per send request in arrival order before the default."""
        with self._lock:
            self._script.extend(behaviours)

    @property
    def script_remaining(self) -> int:
        with self._lock:
            return len(self._script)

    def chaos(
        self,
        seed: int,
        *,
        p_unavailable: float = 0.0,
        p_rate_limited: float = 0.0,
        p_slow: float = 0.0,
        slow_seconds: float = 1.0,
        p_drop: float = 0.0,
        p_server_error: float = 0.0,
        rate_limited_reset_in: float = 1.0,
    ) -> None:
        """Make every unscripted send draw its behaviour at random from a seeded generator.

        The sequence of draws is reproducible; which request gets which draw follows arrival order.
        """
        table: list[tuple[float, Behaviour]] = [
            (p_unavailable, Unavailable()),
            (p_rate_limited, RateLimited(reset_in=rate_limited_reset_in)),
            (p_slow, Slow(slow_seconds)),
            (p_drop, Drop()),
            (p_server_error, ServerError()),
        ]
        if any(p < 0 for p, _ in table) or sum(p for p, _ in table) > 1.0 + 1e-9:
            raise ValueError("chaos probabilities must be >= 0 and add up to at most 1")
        with self._lock:
            self._chaos = _Chaos(random.Random(seed), table)

    def stop_chaos(self) -> None:
        with self._lock:
            self._chaos = None

    # used by the request handler

    def _auth_ok(self, header: str | None) -> bool:
        if not header:
            return False
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            decoded = base64.b64decode(token.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return False
        user, colon, password = decoded.partition(":")
        return bool(colon) and user == self.user and password == self.password

    def _pause(self, seconds: float) -> bool:
        """Sleep, cut short by close(). True if the fake is still running afterwards."""
        if seconds > 0:
            self._closing.wait(seconds)
        return not self._closing.is_set()

    def _next_behaviour(self) -> Behaviour:
        with self._lock:
            if self._script:
                return self._script.popleft()
            if self._chaos is not None:
                return self._chaos.draw()
        return Ok()

    def _record(self, request: SeenRequest) -> None:
        with self._lock:
            self._requests.append(request)

    def _play(self, behaviour: Behaviour, number: str, message: str | None, problem: str) -> _Reply:
        """Turn a behaviour into a reply; `problem` is the validation error token, or ''."""
        match behaviour:
            case Ok():
                return self._answer_normally(number, message, problem)
            case Error(status, token, text):
                return _json_reply(status, _token_text(token, text))
            case RateLimited(reset_in, limit, scope):
                reset = math.ceil(time.time() + reset_in)
                return _json_reply(429, RATE_LIMITED_TEXT, _rate_headers(limit, 0, reset, scope))
            case RetryAfter(seconds):
                headers = {"Retry-After": str(math.ceil(seconds))}
                return _json_reply(429, RATE_LIMITED_TEXT, headers)
            case Unavailable():
                return _json_reply(503, UNAVAILABLE_TOKEN)
            case ServerError(status):
                body = f"<html><body><h1>{status} Server Error</h1></body></html>".encode()
                return _Reply(status, body, "text/html; charset=utf-8")
            case Slow(seconds, then):
                if not self._pause(seconds):
                    return _Reply(None)
                return self._play(then, number, message, problem)
            case Drop():
                return _Reply(None)
            case Garbage():
                return _Reply(200, b"<html>OK</html>\x00{not json", "application/json")
        raise TypeError(f"not a behaviour: {behaviour!r}")

    def _answer_normally(self, number: str, message: str | None, problem: str) -> _Reply:
        limited, headers = self._count_against_rate_limit()
        if limited:
            return _json_reply(429, RATE_LIMITED_TEXT, headers)
        if problem or message is None:
            return _json_reply(400, problem or "Error: ERROR_SMS_INVALID", headers)
        with self._lock:
            if self.credits is not None:
                if self.credits <= 0:
                    return _json_reply(403, NO_CREDIT_TEXT, headers)
                self.credits -= 1
            self._sent.append(SentSms(number, message, time.time()))
            self._lock.notify_all()
        return _Reply(204, headers=headers)

    def _count_against_rate_limit(self) -> tuple[bool, dict[str, str]]:
        """Count one send in the current fixed window (it starts at the first send it counts)."""
        setting = self.rate_limit
        if setting is None:
            return False, {}
        limit, window_seconds = setting
        now = time.monotonic()
        with self._lock:
            if self._window is None or self._window[0] != setting:
                self._window = (setting, now, 0)
            _, start, count = self._window
            if now >= start + window_seconds:
                start, count = now, 0
            count += 1
            self._window = (setting, start, count)
        reset = math.ceil(time.time() + (start + window_seconds - now))
        headers = _rate_headers(limit, max(0, limit - count), reset, self.rate_limit_scope)
        return count > limit, headers

    def _account_info(self) -> dict[str, Any]:
        credits = self.credits if self.credits is not None else UNLIMITED_CREDITS_REPORTED
        return {
            "id": 1,
            "properties": [
                {"name": "AvailableSmsSendsCredits", "type": "Int", "value": credits},
                {"name": "ApiEndpoint", "type": "String", "value": f"{self.url}/"},
            ],
        }

    def _sent_json(self) -> dict[str, Any]:
        sent = self.sent
        return {
            "count": len(sent),
            "sent": [{"number": s.number, "message": s.message, "at": s.at} for s in sent],
        }


def _rate_headers(limit: int, remaining: int, reset: int, scope: str) -> dict[str, str]:
    return {
        "X-RateLimit-Limit": str(limit),
        "X-RateLimit-Remaining": str(remaining),
        "X-RateLimit-Reset": str(reset),
        "X-RateLimit-Scope": scope,
    }


def _parse_message(body: bytes) -> tuple[str | None, str]:
    """The message in a send body, and the validation error text ('' when it is valid)."""
    invalid = "Error: ERROR_SMS_INVALID"
    try:
        payload = json.loads(body)
    except ValueError:
        return None, f"{invalid} The request body is not valid JSON"
    message = payload.get("message") if isinstance(payload, dict) else None
    if not isinstance(message, str):
        return None, f"{invalid} A message is required"
    if not message:
        return message, f"{invalid} The message must not be empty"
    if len(message) > MAX_MESSAGE_LENGTH:
        return message, f"{invalid} The message is longer than {MAX_MESSAGE_LENGTH} characters"
    return message, ""


# --- HTTP plumbing ------------------------------------------------------------------------------


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256  # tests open 50+ connections at once

    def __init__(self, address: tuple[str, int], fake: FakeDotdigital) -> None:
        self.fake = fake
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def track(self, connection: socket.socket) -> None:
        with self._connections_lock:
            self._connections.add(connection)

    def untrack(self, connection: socket.socket) -> None:
        with self._connections_lock:
            self._connections.discard(connection)

    def close_connections(self) -> None:
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):  # already closed by the client
                connection.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            return  # the client went away (e.g. it gave up on a slow answer)
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    server_version = "FakeDotdigital/1.0"
    disable_nagle_algorithm = True
    timeout = 120  # an idle keep-alive connection is closed after this

    def setup(self) -> None:
        super().setup()
        self.server.track(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.untrack(self.connection)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet: tests and benchmarks read the records instead

    # routing

    def do_GET(self) -> None:
        self._route("GET")

    def do_POST(self) -> None:
        self._route("POST")

    def do_PUT(self) -> None:
        self._route("PUT")

    def do_DELETE(self) -> None:
        self._route("DELETE")

    def _route(self, method: str) -> None:
        body = self._read_body()
        if body is None:
            return
        path = urlsplit(self.path).path
        fake = self.server.fake
        if path == "/_fake/sent" and method == "GET":
            self._send(_Reply(200, json.dumps(fake._sent_json()).encode(), "application/json"))
        elif path == "/_fake/reset" and method == "POST":
            fake.reset()
            self._send(_Reply(204))
        elif match := SEND_PATH.match(path):
            if method == "POST":
                self._handle_send(path, unquote(match["number"]), body)
            else:
                self._answer_and_record(method, path, None, None, _not_allowed(method))
        elif path == ACCOUNT_INFO_PATH:
            if method != "GET":
                self._answer_and_record(method, path, None, None, _not_allowed(method))
            elif not fake._auth_ok(self.headers.get("Authorization")):
                self._answer_and_record(method, path, None, None, _unauthorized(), auth_ok=False)
            else:
                info = json.dumps(fake._account_info()).encode()
                reply = _Reply(200, info, "application/json; charset=utf-8")
                self._answer_and_record(method, path, None, None, reply)
        else:
            text = f"No HTTP resource was found that matches the request URI '{path}'."
            self._answer_and_record(method, path, None, None, _json_reply(404, text))

    def _handle_send(self, path: str, number: str, body: bytes) -> None:
        fake = self.server.fake
        auth_ok = fake._auth_ok(self.headers.get("Authorization"))
        message, problem = _parse_message(body)
        if not PHONE_NUMBER.match(number):
            problem = "Error: ERROR_SMS_INVALIDPHONENUMBER The telephone number is not valid"
        if not fake._pause(fake.latency):
            reply = _Reply(None)
        elif not auth_ok:
            reply = _unauthorized()
        else:
            reply = fake._play(fake._next_behaviour(), number, message, problem)
        self._answer_and_record("POST", path, number, message, reply, auth_ok=auth_ok)

    # reading and writing

    def _read_body(self) -> bytes | None:
        raw_length = self.headers.get("Content-Length", "0")
        try:
            length = int(raw_length)
            if length < 0:
                raise ValueError(raw_length)
        except ValueError:
            self.close_connection = True
            self._send(_json_reply(400, "Bad Content-Length"))
            return None
        return self.rfile.read(length) if length else b""

    def _answer_and_record(
        self,
        method: str,
        path: str,
        number: str | None,
        message: str | None,
        reply: _Reply,
        *,
        auth_ok: bool = True,
    ) -> None:
        # Record before answering, so a client that has its answer can already see the record.
        seen = SeenRequest(method, path, number, message, reply.status, auth_ok, time.time())
        self.server.fake._record(seen)
        self._send(reply)

    def _send(self, reply: _Reply) -> None:
        if reply.status is None:
            self.close_connection = True  # close without a byte of answer
            return
        try:
            self.send_response(reply.status)
            for name, value in reply.headers.items():
                self.send_header(name, value)
            if reply.content_type:
                self.send_header("Content-Type", reply.content_type)
            if reply.status != 204:  # a 204 must not carry Content-Length (RFC 9110)
                self.send_header("Content-Length", str(len(reply.body)))
            self.end_headers()
            if reply.body:
                self.wfile.write(reply.body)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True


def _unauthorized() -> _Reply:
    return _Reply(401, headers={"WWW-Authenticate": 'Basic realm="Dotdigital API"'})


def _not_allowed(method: str) -> _Reply:
    text = f"The requested resource does not support http method '{method}'."
    return _json_reply(405, text)


# --- running it as a process --------------------------------------------------------------------


def parse_rate_limit(text: str) -> tuple[int, float]:
    """'35/60' -> (35, 60.0): at most 35 sends per 60-second window."""
    count, slash, window = text.partition("/")
    try:
        limit, seconds = int(count), float(window)
    except ValueError:
        limit, seconds = -1, -1.0
    if not slash or limit < 0 or seconds <= 0:
        raise argparse.ArgumentTypeError(f"expected N/SECONDS such as 35/60, got {text!r}")
    return limit, seconds


def _parse_args(argv: Iterable[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m dispatch_notifier.testing.fake_dotdigital",
        description="Serve a fake Dotdigital v2 SMS API until SIGTERM or SIGINT.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--user", default="apiuser")
    parser.add_argument("--password", default="password")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds before each answer")
    parser.add_argument("--credits", type=int, default=None, help="default: unlimited")
    parser.add_argument("--rate-limit", type=parse_rate_limit, default=None, metavar="N/SECONDS")
    chaos = parser.add_argument_group("chaos (random failures, only with --chaos-seed)")
    chaos.add_argument("--chaos-seed", type=int, default=None)
    chaos.add_argument("--p-unavailable", type=float, default=0.0)
    chaos.add_argument("--p-rate-limited", type=float, default=0.0)
    chaos.add_argument("--p-slow", type=float, default=0.0)
    chaos.add_argument("--slow-seconds", type=float, default=1.0)
    chaos.add_argument("--p-drop", type=float, default=0.0)
    chaos.add_argument("--p-server-error", type=float, default=0.0)
    return parser.parse_args(list(argv) if argv is not None else None)


def main(argv: Iterable[str] | None = None) -> int:
    args = _parse_args(argv)
    fake = FakeDotdigital(
        user=args.user,
        password=args.password,
        host=args.host,
        port=args.port,
        credits=args.credits,
        latency=args.latency,
        rate_limit=args.rate_limit,
    )
    if args.chaos_seed is not None:
        fake.chaos(
            args.chaos_seed,
            p_unavailable=args.p_unavailable,
            p_rate_limited=args.p_rate_limited,
            p_slow=args.p_slow,
            slow_seconds=args.slow_seconds,
            p_drop=args.p_drop,
            p_server_error=args.p_server_error,
        )
    stop = threading.Event()
    # Not `stop.set()` in the handler: the loop below may hold that Event's lock just then.
    on_stop_signals(lambda _signum: stop.set())
    print(f"fake dotdigital listening on {fake.url}", flush=True)
    while not stop.wait(0.5):
        pass
    fake.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
