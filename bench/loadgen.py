"""A bounded HTTP/1.1 load generator in one thread: open loop at a fixed rate, or closed loop.

Keep-alive connections on non-blocking sockets around one epoll loop, requests pre-built as
bytes: the generator shares the machine with the servers it measures, so it must cost them little.
"""

from __future__ import annotations

import select
import socket
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

ANSWER_WAIT = 30.0  # seconds after the last send before an unanswered request counts as failed
# scheduled (when it was due), noticed (when the loop saw it was due), sent, done: perf_counter
# seconds; then the status. noticed - scheduled is the generator's own lateness; sent - noticed,
# the wait for a free connection, which a stalled server causes.
Sample = tuple[float, float, float, float, int]


class _Connection:
    """One keep-alive connection with at most one request in flight."""

    __slots__ = ("inbox", "noticed", "raw", "retried", "scheduled", "sent", "sock")

    def __init__(self, address: tuple[str, int]) -> None:
        # Blocking connect: on loopback it completes at once; then every read waits on epoll.
        self.sock = socket.create_connection(address, timeout=10)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.setblocking(False)
        self.inbox = bytearray()
        self.raw = b""
        self.scheduled = self.noticed = self.sent = 0.0
        self.retried = False

    def send(self, scheduled: float, noticed: float, raw: bytes, retried: bool) -> None:
        self.raw, self.scheduled, self.noticed, self.retried = raw, scheduled, noticed, retried
        self.sent = time.perf_counter()
        self.inbox.clear()
        written = self.sock.send(raw)
        if written < len(raw):  # a full send buffer: rare for one request on an idle connection
            self.sock.setblocking(True)
            self.sock.sendall(raw[written:])
            self.sock.setblocking(False)

    def response(self) -> tuple[int, bool] | None:
        """(status, server asked to close) once a whole response is in; None until then. Answers
        must carry Content-Length (ours and the baselines' do: none is chunked)."""
        head_end = self.inbox.find(b"\r\n\r\n")
        if head_end < 0:
            return None
        head = bytes(self.inbox[:head_end]).lower()
        length = 0
        at = head.find(b"\r\ncontent-length:")
        if at >= 0:
            line_end = head.find(b"\r\n", at + 2)
            length = int(head[at + 17 : line_end if line_end >= 0 else None])
        if len(self.inbox) < head_end + 4 + length:
            return None
        return int(head[9:12]), b"\r\nconnection: close" in head


@dataclass
class _Run:
    address: tuple[str, int]
    poller: select.epoll = field(default_factory=select.epoll)
    by_fd: dict[int, _Connection] = field(default_factory=dict)
    idle: deque[_Connection] = field(default_factory=deque)
    samples: list[Sample] = field(default_factory=list)
    errors: int = 0

    def open(self) -> _Connection:
        connection = _Connection(self.address)
        self.by_fd[connection.sock.fileno()] = connection
        self.poller.register(connection.sock, select.EPOLLIN)
        return connection

    def close(self, connection: _Connection) -> None:
        del self.by_fd[connection.sock.fileno()]
        self.poller.unregister(connection.sock)
        connection.sock.close()

    def replace(self, connection: _Connection) -> _Connection:
        self.close(connection)
        return self.open()

    def dispatch(
        self,
        connection: _Connection,
        scheduled: float,
        noticed: float,
        raw: bytes,
        retried: bool = False,
    ) -> None:
        """Sends `raw` on `connection`, which must be free. A connection the server has closed
        gets one retry on a new one, as any client of a closed keep-alive would."""
        try:
            connection.send(scheduled, noticed, raw, retried)
        except ConnectionError:
            self.failed(connection)

    def failed(self, connection: _Connection) -> None:
        fresh = self.replace(connection)
        if connection.retried:
            self.errors += 1
            self.idle.append(fresh)
        else:
            self.dispatch(
                fresh, connection.scheduled, connection.noticed, connection.raw, retried=True
            )

    def read(self, connection: _Connection) -> None:
        try:
            data = connection.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except ConnectionError:
            data = b""
        if not data and not connection.raw:  # the server closed an idle keep-alive
            self.idle.remove(connection)
            self.idle.append(self.replace(connection))
            return
        if not data:  # closed with our request in it
            self.failed(connection)
            return
        connection.inbox += data
        answer = connection.response()
        if answer is None:
            return
        status, close = answer
        c, done = connection, time.perf_counter()
        self.samples.append((c.scheduled, c.noticed, c.sent, done, status))
        connection.raw = b""
        self.idle.append(self.replace(connection) if close else connection)


class _Schedule:
    """Which request a free connection sends next, and when it was due."""

    def __init__(self, requests: Sequence[bytes], rate: float | None, duration: float) -> None:
        self.requests, self.rate = requests, rate
        self.start = time.perf_counter()
        self.stop_at = self.start + duration
        self.next_index = 0
        # Open loop: requests whose time has come and that wait for a free connection, each with
        # when it was due and when the loop saw that.
        self.due: deque[tuple[float, float, bytes]] = deque()

    def _due_at(self, index: int) -> float:
        return self.start + index / self.rate if self.rate else self.start

    def release(self, now: float) -> None:
        """Open loop: every request whose time has come joins the queue."""
        while self.rate and not self.finished_sending(now) and self._due_at(self.next_index) <= now:
            self.due.append((self._due_at(self.next_index), now, self.requests[self.next_index]))
            self.next_index += 1

    def take(self, now: float) -> tuple[float, float, bytes] | None:
        if self.due:
            return self.due.popleft()
        if self.rate or self.finished_sending(now):
            return None
        self.next_index += 1  # closed loop: due the moment a connection is free
        return now, now, self.requests[self.next_index - 1]

    def finished_sending(self, now: float) -> bool:
        if self.next_index >= len(self.requests):
            return True
        if self.rate:  # every request due before the end goes out, however late the loop woke
            return self._due_at(self.next_index) >= self.stop_at
        return now >= self.stop_at

    def wait(self, now: float) -> float:
        """Seconds until the next request is due, or a second if none is coming."""
        if self.rate and not self.finished_sending(now):
            return max(0.0, self._due_at(self.next_index) - now)
        return 1.0


def run(
    address: tuple[str, int],
    requests: Sequence[bytes],
    *,
    rate: float | None,
    duration: float,
    connections: int,
) -> tuple[list[Sample], int, float]:
    """Sends each of `requests` at most once over `connections` keep-alive connections.

    With `rate`, request i is due at start + i / rate (open loop): one that finds every
    connection busy waits for the first free one, and its latency still counts from when it
    was due. Without, every connection sends its next request as soon as its answer is in
    (closed loop). Stops at `duration` seconds or when the requests run out, then waits for
    the answers in flight (for `ANSWER_WAIT` seconds at most: a request still unanswered, or
    still waiting for a connection, then counts as failed). Returns the samples, the number of
    requests that failed, and the seconds the run took.
    """
    state = _Run(address)
    for _ in range(connections):
        state.idle.append(state.open())
    schedule = _Schedule(requests, rate, duration)
    try:
        while True:
            now = time.perf_counter()
            schedule.release(now)
            while state.idle and (item := schedule.take(now)) is not None:
                state.dispatch(state.idle.popleft(), *item)
            in_flight = len(state.by_fd) - len(state.idle)
            if schedule.finished_sending(now) and not schedule.due and not in_flight:
                break
            if now > schedule.stop_at + ANSWER_WAIT:  # a server that stopped answering
                state.errors += in_flight + len(schedule.due)
                break
            for fd, _events in state.poller.poll(schedule.wait(now)):
                connection = state.by_fd.get(fd)
                if connection is not None:
                    state.read(connection)
    finally:
        for connection in list(state.by_fd.values()):
            state.close(connection)
        state.poller.close()
    return state.samples, state.errors, time.perf_counter() - schedule.start
