"""The benchmarks' Python load generator (bench/loadgen.py) against a real local HTTP server:
every request posted once, answers counted by status, open-loop latency counted from the time
each request was due, and connections the server closes replaced."""

from __future__ import annotations

import itertools
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import loadgen  # bench/ is not a package: on the path above


@dataclass
class Behaviour:
    delay: float = 0.0  # seconds before each answer
    close_every: int = 0  # answer every n-th request with `Connection: close`
    drop_silently: bool = False  # close after every answer without saying so
    hang: bool = False  # never answer
    bodies: Counter[bytes] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _handler(behaviour: Behaviour) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # the answer's head and body go out without a pause

        def do_POST(self) -> None:  # the name http.server looks for
            body = self.rfile.read(int(self.headers["Content-Length"]))
            with behaviour.lock:
                behaviour.bodies[body] += 1
                count = sum(behaviour.bodies.values())
            if behaviour.hang:
                time.sleep(3)
                self.close_connection = True
                return
            time.sleep(behaviour.delay)
            answer = b'{"ok": true}'
            self.send_response(503 if body.endswith(b"-fail") else 200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(answer)))
            if behaviour.close_every and count % behaviour.close_every == 0:
                self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(answer)
            if behaviour.drop_silently:
                self.close_connection = True

        def log_message(self, format: str, *args: object) -> None:
            pass

    return Handler


@pytest.fixture
def server() -> Iterator[tuple[tuple[str, int], Behaviour]]:
    behaviour = Behaviour()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(behaviour))
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield ("127.0.0.1", httpd.server_address[1]), behaviour
    httpd.shutdown()
    httpd.server_close()


def requests_for(address: tuple[str, int], bodies: list[bytes]) -> list[bytes]:
    host = f"{address[0]}:{address[1]}"
    return [
        f"POST /hook HTTP/1.1\r\nHost: {host}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        + body
        for body in bodies
    ]


def test_closed_loop_posts_every_request_once_and_counts_answers_by_status(server) -> None:
    address, behaviour = server
    behaviour.close_every = 7  # like serve's one answer in 25 with `Connection: close`
    bodies = [f"delivery-{i}".encode() for i in range(300)] + [b"delivery-x-fail"]

    samples, errors, seconds = loadgen.run(
        address, requests_for(address, bodies), rate=None, duration=30, connections=4
    )

    assert errors == 0
    assert behaviour.bodies == Counter(bodies)  # each once, none lost, none twice
    statuses = Counter(status for *_times, status in samples)
    assert statuses == {200: 300, 503: 1}
    assert all(
        scheduled <= noticed <= sent <= done for scheduled, noticed, sent, done, _status in samples
    )
    assert 0 < seconds < 30  # stopped when the requests ran out


def test_open_loop_counts_latency_from_when_each_request_was_due(server) -> None:
    address, behaviour = server
    behaviour.delay = 0.05  # one connection can carry 20 requests a second
    bodies = [f"delivery-{i}".encode() for i in range(40)]

    samples, errors, _seconds = loadgen.run(
        address, requests_for(address, bodies), rate=40, duration=0.5, connections=1
    )

    assert errors == 0
    assert len(samples) == 20  # due within the half second; the rest never sent
    scheduled = sorted(s[0] for s in samples)
    gaps = [later - earlier for earlier, later in itertools.pairwise(scheduled)]
    assert gaps == pytest.approx([1 / 40] * 19)  # on the clock, not on the server's pace
    # Requests queued behind the busy connection: the wait counts as latency. A closed-loop
    # generator would have reported about 50 ms for every one of them.
    latencies = [done - due for due, _noticed, _sent, done, _status in samples]
    assert max(latencies) > 0.4
    assert min(latencies) >= 0.05


def test_open_loop_tells_waiting_for_a_connection_from_its_own_lateness(server) -> None:
    address, behaviour = server
    behaviour.delay = 0.05  # 20 a second on one connection, against 40 due: a queue builds
    bodies = [f"delivery-{i}".encode() for i in range(40)]

    samples, errors, _seconds = loadgen.run(
        address, requests_for(address, bodies), rate=40, duration=0.5, connections=1
    )

    assert errors == 0
    assert all(due <= noticed <= sent for due, noticed, sent, _done, _status in samples)
    queued = [sent - noticed for _due, noticed, sent, _done, _status in samples]
    late = [noticed - due for due, noticed, _sent, _done, _status in samples]
    # The last requests due waited about 0.5 s for the one connection, while the loop itself
    # saw each of them due within the poll that was waiting for it.
    assert max(queued) > 0.3
    assert max(late) < max(queued)


def test_connections_the_server_closes_without_notice_are_replaced(server) -> None:
    address, behaviour = server
    behaviour.drop_silently = True
    bodies = [f"delivery-{i}".encode() for i in range(50)]

    samples, errors, _seconds = loadgen.run(
        address, requests_for(address, bodies), rate=200, duration=5, connections=2
    )

    assert errors == 0
    assert len(samples) == 50
    assert behaviour.bodies == Counter(bodies)


def test_requests_a_server_never_answers_count_as_failed(server, monkeypatch) -> None:
    address, behaviour = server
    behaviour.hang = True
    monkeypatch.setattr(loadgen, "ANSWER_WAIT", 0.3)
    bodies = [f"delivery-{i}".encode() for i in range(10)]

    samples, errors, seconds = loadgen.run(
        address, requests_for(address, bodies), rate=100, duration=0.05, connections=2
    )

    assert samples == []
    # Five were due: two went out on the two connections, three waited for one to be free.
    assert errors == 5
    assert seconds < 2
