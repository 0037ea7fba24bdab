"""This process's wake-ups of the sender workers on PostgreSQL (NOTIFY on the outbox's channel).

At most one every `interval` seconds, and no new row left unannounced: rows that committed
while wake-ups were held back get one soon after the interval is over.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass

from sqlalchemy import Engine

log = logging.getLogger(__name__)

NOTIFY_CHANNEL = "dispatch_notifier_outbox"
NOTIFY = f"NOTIFY {NOTIFY_CHANNEL}"  # the statement that wakes every listening worker
# PostgreSQL commits the transactions that NOTIFY one at a time; under a burst one wake-up per
# interval is plenty, since a worker with work in hand keeps claiming without being woken.
NOTIFY_INTERVAL = 0.02


@dataclass(frozen=True)
class Claim:
    """A wake-up taken by a writer, which NOTIFYs in the transaction of its rows."""

    at: float
    # Every row counted by `missed()` up to here committed before the claim, so before the
    # writer's NOTIFY: a worker woken by it sees them.
    covers: int


class WakeUps:
    """The wake-ups of one database's workers by this process.

    A writer that creates work asks `claim()`; with a claim, it NOTIFYs in its own transaction.
    Then it reports `settled()`. With a claim, that is `announced()`, or `unused()` if it
    created nothing. Without one, it is `missed()` once its rows are committed, and a thread of
    this object NOTIFYs for them within two intervals, unless a writer's wake-up covered them
    first. Without that, an idle worker would not hear of them before its poll. `close()`, as
    the process ends, announces at once any rows still waiting.
    """

    def __init__(self, engine: Engine, interval: float = NOTIFY_INTERVAL) -> None:
        """`engine`: one in autocommit, for the NOTIFYs sent after the fact."""
        self.engine = engine
        self.interval = interval
        self._last = 0.0  # when the latest wake-up was claimed (time.monotonic())
        self._missed = 0  # rows committed without a wake-up, counted since this object began
        self._announced = 0  # how many of those a committed NOTIFY has covered
        self._changed = threading.Condition()
        self._thread: threading.Thread | None = None
        self._thread_pid = 0  # a thread started before a fork did not come with it
        self._waiting_for_missed = False  # the thread sleeps until `missed()`, not a deadline
        self._closed = False

    def claim(self) -> Claim | None:
        """A wake-up, if one is due: the caller's transaction NOTIFYs."""
        now = time.monotonic()
        with self._changed:
            if now - self._last < self.interval:
                return None
            self._last = now
            return Claim(now, self._missed)

    def settled(self, claim: Claim | None, created: bool) -> None:
        """The writer's transaction is over: `created` if it committed new rows."""
        if claim is None:
            if created:
                self.missed()
        elif created:
            self.announced(claim)
        else:
            self.unused(claim)

    def unused(self, claim: Claim) -> None:
        """The claim's writer created nothing and did not NOTIFY: the next one may."""
        with self._changed:
            if self._last == claim.at:
                self._last = 0.0
                self._changed.notify_all()

    def announced(self, claim: Claim) -> None:
        """The claim's NOTIFY committed."""
        with self._changed:
            self._announced = max(self._announced, claim.covers)

    def missed(self) -> None:
        """A writer committed new rows without a claim: they get a wake-up of their own soon."""
        with self._changed:
            if self._closed:
                return
            self._missed += 1
            if self._thread is None or self._thread_pid != os.getpid():
                self._thread_pid = os.getpid()
                self._thread = threading.Thread(
                    target=self._announce_missed, name="wake-ups", daemon=True
                )
                self._thread.start()
            elif self._waiting_for_missed:
                # Only then: under load, waking the thread on every webhook would cost CPU to
                # learn nothing, since it is already waiting for the interval's end.
                self._changed.notify_all()

    def close(self) -> None:
        """Stop announcing (the database is being disposed of), after announcing at once any
        rows still waiting for their wake-up: a web process that exits (a restart, a rolling
        deploy) must not leave its last rows to the workers' poll."""
        with self._changed:
            self._closed = True
            self._changed.notify_all()
            thread = self._thread
        if thread is not None and self._thread_pid == os.getpid():
            thread.join(2.0)  # it may be sending a wake-up that covers them
        with self._changed:
            pending = Claim(time.monotonic(), self._missed) if self._unannounced() else None
        if pending is not None:
            self._notify(pending)

    def _unannounced(self) -> bool:
        return self._missed > self._announced

    def _announce_missed(self) -> None:
        while True:
            with self._changed:
                claim = self._next_trailing_claim()
                if claim is None:
                    return
            self._notify(claim)

    def _notify(self, claim: Claim) -> None:
        try:
            with self.engine.connect() as connection:
                connection.exec_driver_sql(NOTIFY)
        except Exception as exc:  # the workers' poll finds the rows anyway
            log.warning("could not wake the workers (%s)", type(exc).__name__)
        # Announced or not, do not retry: a failing database would be hammered.
        self.announced(claim)

    def _next_trailing_claim(self) -> Claim | None:
        """Wait (holding the condition) until missed rows need a wake-up and one is due."""
        while not self._closed:
            if self._unannounced():
                now = time.monotonic()
                # A whole interval later than a writer's: under load a writer's wake-up, part of
                # its own statement, covers the rows first, and this one costs a round trip.
                due = self._last + 2 * self.interval
                if now >= due:
                    self._last = now
                    return Claim(now, self._missed)
                self._changed.wait(due - now)
            else:
                self._waiting_for_missed = True
                self._changed.wait()
                self._waiting_for_missed = False
        return None
