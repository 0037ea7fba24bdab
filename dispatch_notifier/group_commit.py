"""Group commit: writes that arrive together in one process share one transaction.

The first caller in writes what every caller queued meanwhile, commits, and hands each its own
result; nobody gets an answer before the commit that holds its rows.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Generic, TypeVar

from sqlalchemy import Connection, Engine

Job = TypeVar("Job")
Result = TypeVar("Result")


class _Ticket(Generic[Job, Result]):
    __slots__ = ("done", "error", "job", "result")

    def __init__(self, job: Job) -> None:
        self.job = job
        self.done = False
        self.result: Result | None = None
        self.error: BaseException | None = None


class GroupCommit(Generic[Job, Result]):
    """Runs `write(connection, job)` for concurrent callers, several jobs per transaction.

    Why: a commit (and, on SQLite, taking the one write lock) costs as much as the inserts it
    ends; webhooks arriving together need only one. If a shared transaction fails, each of its
    jobs is written again on its own, so one bad job cannot fail its neighbours.
    `guard` is held around each transaction (e.g. `db.WriterQueue` on SQLite). `alone`, if
    given, runs a batch of one job instead of `engine`: an autocommit engine when a job is one
    statement, so that a write with nobody to share it with is one round trip, not BEGIN, the
    statement and COMMIT.
    """

    def __init__(
        self,
        engine: Engine,
        write: Callable[[Connection, Job], Result],
        guard: AbstractContextManager[object] | None = None,
        alone: Engine | None = None,
    ) -> None:
        self.engine = engine
        self.alone = alone or engine
        self.write = write
        self.guard = guard or nullcontext()
        self._queue: list[_Ticket[Job, Result]] = []
        self._writing = False
        self._changed = threading.Condition()
        self.transactions = 0  # for tests and benchmarks: how many commits carried the jobs

    def run(self, job: Job) -> Result:
        """Write `job` (possibly with others) and return its result once committed."""
        ticket: _Ticket[Job, Result] = _Ticket(job)
        with self._changed:
            self._queue.append(ticket)
            while self._writing and not ticket.done:
                self._changed.wait()
            if not ticket.done:
                self._writing = True
                batch, self._queue = self._queue, []
        if not ticket.done:
            try:
                self._write_batch(batch)
            finally:
                with self._changed:
                    self._writing = False
                    self._changed.notify_all()
        if ticket.error is not None:
            raise ticket.error
        return ticket.result  # type: ignore[return-value]

    def _write_batch(self, batch: list[_Ticket[Job, Result]]) -> None:
        try:
            self._transaction(batch)
        except Exception as exc:
            if len(batch) == 1:
                batch[0].error = exc
            else:
                for ticket in batch:
                    try:
                        self._transaction([ticket])
                    except Exception as single:
                        ticket.error = single
        except BaseException as exc:  # e.g. interrupted: the waiting callers must not hang
            for ticket in batch:
                ticket.error = exc
            raise
        finally:
            for ticket in batch:
                ticket.done = True

    def _transaction(self, batch: list[_Ticket[Job, Result]]) -> None:
        # The guard covers BEGIN to COMMIT only: taking a pooled connection and handing it back
        # (with its reset) need not keep every other writer of the database waiting.
        engine = self.alone if len(batch) == 1 else self.engine
        with engine.connect() as connection, self.guard, connection.begin():
            results = [self.write(connection, ticket.job) for ticket in batch]
        self.transactions += 1
        for ticket, result in zip(batch, results, strict=True):
            ticket.result = result
