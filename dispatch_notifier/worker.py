"""The sender worker: claims due notifications and sends them in parallel until told to stop.

Runs as `dispatch-notifier worker`, or embedded in `dispatch-notifier serve`.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from concurrent.futures import Future, ThreadPoolExecutor

from flask import Flask

from dispatch_notifier import outbox
from dispatch_notifier.db import get_db
from dispatch_notifier.sender import Sender, lease_for
from dispatch_notifier.sms import SmsBackend, backend_for

log = logging.getLogger(__name__)


class Worker:
    """Claim, send, repeat. `stop()` lets in-flight sends finish and claims nothing new."""

    def __init__(self, app: Flask, backend: SmsBackend | None = None, name: str | None = None):
        self.app = app
        self.db = get_db(app)
        self.owner = name or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.concurrency = max(1, int(app.config["SEND_CONCURRENCY"]))
        self.lease = lease_for(app)
        self.poll_interval = float(app.config["POLL_INTERVAL"])
        self.sender = Sender(app, self.db, backend or backend_for(app), self.owner)
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._in_flight: dict[int, Future[str | None]] = {}
        self._lock = threading.Lock()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def wake(self) -> None:
        self._wake.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def run(self) -> None:
        """Work until `stop()`; then wait for in-flight sends and return."""
        log.info("worker %s started (concurrency %d)", self.owner, self.concurrency)
        with ThreadPoolExecutor(self.concurrency, thread_name_prefix="send") as pool:
            while not self._stop.is_set():
                try:
                    busy = self.tick(pool)
                except Exception:
                    log.exception("worker loop error; retrying shortly")
                    busy = False
                if not busy:
                    self._wake.wait(self.poll_interval)
                    self._wake.clear()
            self._drain()
        log.info("worker %s stopped", self.owner)

    def tick(self, pool: ThreadPoolExecutor) -> bool:
        """One round: sweep abandoned rows, claim what fits, hand it to the pool."""
        with self.db.session() as session:
            outbox.sweep_abandoned(session)
        free = self.concurrency - self._in_flight_count()
        if free <= 0:
            return False
        with self.db.session() as session:
            ids = outbox.claim(session, self.owner, free, self.lease)
        for notification_id in ids:
            future = pool.submit(self._send, notification_id)
            with self._lock:
                self._in_flight[notification_id] = future
        return bool(ids)

    def run_until_idle(self, max_rounds: int = 1000) -> None:
        """Send everything that is due now, then return (tests, `worker --once`)."""
        with ThreadPoolExecutor(self.concurrency, thread_name_prefix="send") as pool:
            for _ in range(max_rounds):
                claimed = self.tick(pool)
                self._drain()
                if not claimed:
                    break

    def _send(self, notification_id: int) -> str | None:
        try:
            return self.sender.send_one(notification_id)
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

    def _drain(self) -> None:
        with self._lock:
            futures = list(self._in_flight.values())
        for future in futures:
            future.result()
