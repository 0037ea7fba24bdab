"""The sender worker: claims due notifications and sends them in parallel until told to stop.

Runs as `dispatch-notifier worker`, or embedded in `dispatch-notifier serve`.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor, wait
from datetime import datetime

from flask import Flask
from sqlalchemy import Row
from sqlalchemy.exc import DBAPIError

from dispatch_notifier import gate, outbox
from dispatch_notifier.db import get_db
from dispatch_notifier.models import utcnow
from dispatch_notifier.sender import Sender, lease_for
from dispatch_notifier.sms import SmsBackend, backend_for

log = logging.getLogger(__name__)

# The least a worker held by the gate sleeps, so that a clock a hair behind cannot spin it.
_SHORTEST_WAIT = 0.005


class Worker:
    """Claim, send, repeat. `stop()` lets in-flight sends finish and claims nothing new."""

    def __init__(self, app: Flask, backend: SmsBackend | None = None, name: str | None = None):
        self.app = app
        self.db = get_db(app)
        self.owner = name or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.concurrency = max(1, int(app.config["SEND_CONCURRENCY"]))
        self.lease = lease_for(app)
        self.poll_interval = float(app.config["POLL_INTERVAL"])
        self.stop_timeout = float(app.config["STOP_TIMEOUT"])
        # Renew well before expiry, so one slow database round trip cannot lose a lease.
        self.heartbeat_interval = max(0.05, self.lease.total_seconds() / 3)
        # Abandoned rows only appear after a lease runs out: no need to look on every round.
        self.sweep_interval = min(5.0, self.lease.total_seconds() / 2)
        self._next_sweep = 0.0
        self.sender = Sender(app, self.db, backend or backend_for(app), self.owner)
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._in_flight: dict[int, Future[str | None]] = {}
        self._lock = threading.Lock()
        self._heartbeat_stop = threading.Event()
        # Why the last tick claimed nothing: "full", "gate" (closed until `_opens`), "no work",
        # or None (it failed, or has not run).
        self._idle: str | None = None
        self._opens: datetime | None = None

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def wake(self) -> None:
        self._wake.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def run(self) -> bool:
        """Work until `stop()`; then wait for in-flight sends, at most STOP_TIMEOUT seconds.

        Returns False if some sends were still running when that time was up.
        """
        log.info("worker %s started (concurrency %d)", self.owner, self.concurrency)
        heartbeat = threading.Thread(target=self._heartbeat, name="lease-heartbeat", daemon=True)
        heartbeat.start()
        listener = self._start_listener()
        pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="send")
        try:
            while not self._stop.is_set():
                try:
                    busy = self.tick(pool)
                except Exception:
                    log.exception("worker loop error; retrying shortly")
                    busy = False
                if not busy:
                    self._wake.wait(self._idle_wait())
                    self._wake.clear()
                    self._idle = None
        finally:
            clean = self._drain(self.stop_timeout)
            pool.shutdown(wait=clean, cancel_futures=True)
            self._heartbeat_stop.set()
            heartbeat.join(2)
            if listener is not None:
                listener.stop()
        if clean:
            log.info("worker %s stopped", self.owner)
        else:
            log.warning(
                "worker %s stopped with sends still running after %.0fs; their rows become "
                "`unknown` when the lease expires",
                self.owner,
                self.stop_timeout,
            )
        return clean

    def _start_listener(self):  # type: ignore[no-untyped-def]
        from dispatch_notifier.listener import DataVersionWatcher, Listener

        if self.db.is_postgres:
            return Listener(self.db.url, self.wake).start()
        path = self.db.engine.url.database
        if self.db.engine.dialect.name == "sqlite" and path and path != ":memory:":
            return DataVersionWatcher(path, self.wake).start()
        return None

    def _idle_wait(self) -> float:
        """Sleep for the poll interval, or until the shared gate opens if it is closed.

        Uses what the last `tick` learnt: with its hands full it waits for a send to finish
        (which wakes it), and it has just read the gate. Reading the gate again here, on every
        wake-up by a finished send, cost a database round trip per send.
        """
        if self._idle == "full":
            return self.poll_interval
        if self._idle == "gate":
            opens = self._opens
        elif self._idle == "no work":
            opens = None
        else:
            opens = self._read_gate()
        if opens is None:
            return self.poll_interval
        # To the moment it opens, however soon: a rate-limit window opens every second with
        # `/second`, and waiting out a whole poll interval would leave much of it unused.
        return min(max(_SHORTEST_WAIT, (opens - utcnow()).total_seconds()), 60.0)

    def _read_gate(self):  # type: ignore[no-untyped-def]
        try:
            with self.db.read_session() as session:
                opens = gate.wait_until(session, self.sender.rate_limit)
        except Exception:
            return None
        return opens

    def _heartbeat(self) -> None:
        """Renew the leases of the rows this worker holds while their sends run."""
        while not self._heartbeat_stop.wait(self.heartbeat_interval):
            ids = self.held()
            if not ids:
                continue
            try:
                with self.db.writing(), self.db.session() as session:
                    outbox.renew_leases(session, self.owner, ids, self.lease)
            except Exception as exc:
                log.warning("could not renew leases (%s); will try again", type(exc).__name__)

    def held(self) -> list[int]:
        with self._lock:
            return list(self._in_flight)

    def tick(self, pool: ThreadPoolExecutor) -> bool:
        """One round: sweep abandoned rows, claim what fits, hand it to the pool.

        Claims come in batches: once no more than `concurrency` rows are in hand, the worker tops
        up to twice that, so the pool always has the next rows queued and claiming (a few
        statements) happens once per batch instead of once per finished send.
        """
        if time.monotonic() >= self._next_sweep:
            with self.db.writing(), self.db.session() as session:
                outbox.sweep_abandoned(session, spare=self.held())
            self._next_sweep = time.monotonic() + self.sweep_interval
        self._idle = None
        in_hand = self._in_flight_count()
        free = 2 * self.concurrency - in_hand
        if in_hand > self.concurrency or self._stop.is_set():
            self._idle = "full"
            return False
        with self.db.read_session() as session:
            self._opens = gate.wait_until(session, self.sender.rate_limit)
        if self._opens is not None:
            self._idle = "gate"
            return False  # claiming now would only hand the rows back
        with self.db.writing(), self.db.session() as session:
            ids = outbox.claim(session, self.owner, free, self.lease)
        if not ids:
            self._idle = "no work"
        rows = self._load(ids)
        for notification_id in ids:
            row = rows.get(notification_id)
            # Submit under the lock: a fast send must not finish before it is registered.
            with self._lock:
                self._in_flight[notification_id] = pool.submit(self._send, notification_id, row)
        return bool(ids)

    def run_until_idle(self, max_rounds: int = 1000) -> None:
        """Send everything that is due now, then return (tests, `worker --once`)."""
        with ThreadPoolExecutor(self.concurrency, thread_name_prefix="send") as pool:
            for _ in range(max_rounds):
                claimed = self.tick(pool)
                self._drain(None)
                if not claimed:
                    break

    def _load(self, ids: list[int]) -> dict[int, Row]:
        """The claimed rows in one query; without it each send reads its own row."""
        try:
            return self.sender.load(ids)
        except DBAPIError as exc:
            log.warning("could not read the claimed rows (%s)", type(exc).__name__)
            return {}

    def _send(self, notification_id: int, row: Row | None = None) -> str | None:
        try:
            if self._stop.is_set():
                # Claimed but not started: give it back for another worker, untouched.
                with self.db.writing(), self.db.session() as session:
                    outbox.release(session, notification_id, self.owner)
                return None
            return self.sender.send_one(notification_id, row)
        except Exception:
            log.exception("sending notification %s failed", notification_id)
            return None
        finally:
            with self._lock:
                self._in_flight.pop(notification_id, None)
            self._wake.set()

    def _in_flight_count(self) -> int:
        with self._lock:
            return len(self._in_flight)

    def _drain(self, timeout: float | None) -> bool:
        """Wait for in-flight sends; False if some were still running after `timeout`."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._lock:
                futures = list(self._in_flight.values())
            if not futures:
                return True
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return False
            wait(futures, timeout=left)
