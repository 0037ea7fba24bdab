"""Wake-ups: the worker hears of new work at once instead of at its next poll.

PostgreSQL: LISTEN for the outbox's NOTIFY. SQLite: watch `PRAGMA data_version`, which changes
whenever another connection commits. Polling stays the fallback on both.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Callable
from typing import Self

from sqlalchemy.engine import make_url

from dispatch_notifier.wake_ups import NOTIFY_CHANNEL

log = logging.getLogger(__name__)


def libpq_url(sqlalchemy_url: str) -> str:
    """`postgresql+psycopg://u:p@h/db` -> `postgresql://u:p@h/db` for a plain psycopg connection."""
    url = make_url(sqlalchemy_url).set(drivername="postgresql")
    return url.render_as_string(hide_password=False)


class _WakeThread:
    """A daemon thread that calls `wake()` when it learns of new work; `_run` says how."""

    thread_name = "wake"

    def __init__(self, wake: Callable[[], None]) -> None:
        self.wake = wake
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=self.thread_name, daemon=True)

    def start(self) -> Self:
        self._thread.start()
        return self

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        self._thread.join(timeout)

    def _run(self) -> None:
        raise NotImplementedError


class Listener(_WakeThread):
    """Calls `wake()` whenever new work is announced with NOTIFY."""

    thread_name = "listen"

    def __init__(self, database_url: str, wake: Callable[[], None]) -> None:
        super().__init__(wake)
        self.conninfo = libpq_url(database_url)
        self.connected = threading.Event()

    def _run(self) -> None:
        # Here, not at the top: a worker on SQLite imports this module but needs no psycopg
        # (about 10 MB).
        import psycopg

        delay = 0.5
        while not self._stop.is_set():
            try:
                with psycopg.connect(self.conninfo, autocommit=True, connect_timeout=5) as conn:
                    conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
                    self.connected.set()
                    delay = 0.5
                    # Work may have arrived while we were not listening.
                    self.wake()
                    while not self._stop.is_set():
                        for _ in conn.notifies(timeout=1.0):
                            self.wake()
            except psycopg.Error as exc:
                self.connected.clear()
                log.warning(
                    "LISTEN connection lost (%s); polling until it is back", type(exc).__name__
                )
                self._stop.wait(delay)
                delay = min(delay * 2, 10.0)
        self.connected.clear()


class DataVersionWatcher(_WakeThread):
    """SQLite's stand-in for LISTEN: wakes the worker after commits by other connections.

    `PRAGMA data_version` is read without a transaction or a lock, so checking it every few
    milliseconds costs next to nothing and never gets in the way of the webhook writers.
    """

    thread_name = "data-version"

    def __init__(self, database_path: str, wake: Callable[[], None], interval: float = 0.02):
        super().__init__(wake)
        self.database_path = database_path
        self.interval = interval

    def _run(self) -> None:
        try:
            connection = sqlite3.connect(self.database_path, check_same_thread=False)
        except sqlite3.Error as exc:
            log.warning("cannot watch the SQLite file (%s); polling only", exc)
            return
        try:
            last = None
            while not self._stop.wait(self.interval):
                try:
                    version = connection.execute("PRAGMA data_version").fetchone()[0]
                except sqlite3.Error:
                    continue
                if last is not None and version != last:
                    self.wake()
                last = version
        finally:
            connection.close()
