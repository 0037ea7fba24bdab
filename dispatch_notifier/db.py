"""Database engine and sessions: one engine per process, one session per request or job.

SQLite gets WAL flushed at every commit, a busy timeout and `BEGIN IMMEDIATE` so that writers
queue instead of failing, and its checkpoints run in a background thread rather than inside a
writer's COMMIT. Reads that write nothing (`read_session`, `read_engine`) begin deferred: they
take no lock at all.
"""

from __future__ import annotations

import fcntl
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any
from urllib.parse import quote

from flask import Flask, current_app, g
from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import InvalidatePoolError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.sql.schema import Table

from dispatch_notifier.wake_ups import WakeUps

log = logging.getLogger(__name__)

SQLITE_BUSY_TIMEOUT_MS = 10_000
# Execution option of `Database.read_engine`: its transactions only read.
READS_ONLY = "dispatch_reads_only"
# A COMMIT checkpoints the WAL itself only past this many pages (SQLite's default: 1,000); below
# that, the `WalCheckpointer` thread does it. The backstop if that thread ever fell behind.
SQLITE_AUTOCHECKPOINT_PAGES = 20_000


def make_engine(url: str, **kwargs: Any) -> Engine:
    """Create an engine with the connection settings this service relies on."""
    if url.startswith("sqlite"):
        engine = create_engine(
            url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}, **kwargs
        )
        _configure_sqlite(engine)
        return engine
    ping_when_idle = "pool_pre_ping" not in kwargs
    if "poolclass" not in kwargs:
        kwargs.setdefault("pool_size", 10)
        kwargs.setdefault("max_overflow", 10)
    engine = create_engine(url, **kwargs)
    if ping_when_idle:
        _ping_connections_idle_for(engine, PING_AFTER_IDLE_SECONDS)
    return engine


# A pooled connection is checked with a round trip before use only if it has been idle this long.
PING_AFTER_IDLE_SECONDS = 1.0


def _ping_connections_idle_for(engine: Engine, seconds: float) -> None:
    """`pool_pre_ping`, but only for connections that sat in the pool `seconds` or more.

    Why: the pre-ping is a round trip on every checkout, and a sender worker checks out a
    connection several times per send, each a few milliseconds after the last use. A connection
    used that recently is as alive as a ping would show; a server restart is still noticed by
    the first statement, which invalidates the pool the same way a failed ping does.
    """

    @event.listens_for(engine, "checkin")
    def _on_checkin(_dbapi_connection: Any, record: Any) -> None:
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _on_checkout(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        idle_since = record.info.pop("idle_since", None)
        if idle_since is None or time.monotonic() - idle_since < seconds:
            return  # new, or used a moment ago
        try:
            engine.dialect.do_ping(dbapi_connection)
        except engine.dialect.loaded_dbapi.Error as exc:
            if engine.dialect.is_disconnect(exc, dbapi_connection, None):
                # Like a failed pre-ping: drop every pooled connection and take a fresh one.
                raise InvalidatePoolError() from exc
            raise


def _configure_sqlite(engine: Engine) -> None:
    path = engine.url.database if engine.url.database != ":memory:" else None

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy, not the sqlite3 module, decide when transactions begin.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        # WAL's usual NORMAL survives the process dying but not the machine: a power cut could take
        # back an acknowledged webhook (the shop never sends it again) or a row marked `sending`
        # (claimed and texted again). FULL flushes the WAL before each COMMIT returns, as
        # PostgreSQL's `synchronous_commit` does; the group commit shares one flush among writers.
        cursor.execute("PRAGMA synchronous=FULL")
        if path:
            cursor.execute(f"PRAGMA wal_autocheckpoint={SQLITE_AUTOCHECKPOINT_PAGES}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        if connection.get_execution_options().get(READS_ONLY):
            # In WAL mode a reader and the writer never wait for each other: a page of the send
            # log, or a CSV export streaming for minutes, must not hold webhooks up.
            connection.exec_driver_sql("BEGIN")
            return
        # A deferred transaction that reads and then writes fails with SQLITE_BUSY instead of
        # waiting; taking the write lock up front makes concurrent writers queue politely.
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    if path:

        @event.listens_for(engine, "commit")
        def _on_commit(_connection: Any) -> None:
            checkpointer.written(path)


class WalCheckpointer:
    """SQLite: copies the WAL back into the database file from a background thread.

    Why: left to itself, SQLite checkpoints inside the COMMIT that takes the WAL past 1,000 pages,
    fsync included, while that writer still holds the write lock: about one webhook in a hundred
    waited 10-30 ms for it, and every writer in every process queued behind it. Here one thread
    per process checkpoints each database at most `interval` seconds after a commit, in PASSIVE
    mode, which never waits for readers or writers: they go on meanwhile.
    """

    def __init__(self, interval: float = 0.5) -> None:
        self.interval = interval
        self.checkpoints: dict[str, int] = {}  # by path, for tests: checkpoints this process ran
        self._reset()
        os.register_at_fork(after_in_child=self._reset)  # threads and locks do not survive forks

    def _reset(self) -> None:
        self._changed = threading.Condition()
        self._due: set[str] = set()
        self._thread: threading.Thread | None = None
        self._stopping = False

    def written(self, path: str) -> None:
        """A transaction on the database at `path` committed: checkpoint it soon."""
        if path in self._due:  # already queued; the common case under load takes no lock
            return
        with self._changed:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="sqlite-checkpointer", daemon=True
                )
                self._thread.start()
            self._due.add(path)
            self._changed.notify()

    def _run(self) -> None:
        while True:
            with self._changed:
                self._changed.wait_for(lambda: self._due or self._stopping)
                # A burst of commits shares one checkpoint.
                self._changed.wait_for(lambda: self._stopping, timeout=self.interval)
                paths, self._due = self._due, set()
                stopping = self._stopping
            for path in paths:
                self.checkpoint(path)
            if stopping:
                return

    def stop(self, timeout: float = 5.0) -> None:
        """Checkpoint what is due and end the thread; the next commit starts a new one.

        For a process about to fork: the child of a process with threads may inherit a lock
        one of them held.
        """
        with self._changed:
            thread, self._stopping = self._thread, True
            self._changed.notify_all()
        if thread is not None:
            thread.join(timeout)
        with self._changed:
            # A commit that came in meanwhile waits for the next one (its pages are in the WAL).
            self._thread, self._stopping, self._due = None, False, set()

    def checkpoint(self, path: str) -> None:
        if not os.path.exists(path):  # removed since (a test's scratch database)
            return
        try:
            # A connection of its own, outside the pool: no BEGIN IMMEDIATE, no write lock.
            # mode=rw: never create the file again if it is removed meanwhile.
            connection = sqlite3.connect(f"file:{quote(path)}?mode=rw", uri=True, timeout=1.0)
            try:
                connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
            finally:
                connection.close()
        except sqlite3.Error as exc:  # the next commit asks again
            log.warning("SQLite checkpoint of %s failed: %s", path, exc)
            return
        self.checkpoints[path] = self.checkpoints.get(path, 0) + 1


checkpointer = WalCheckpointer()


class WriterQueue:
    """SQLite: the writers that hold one in every process queue for the database's write lock.

    Why: a writer that finds SQLite's lock taken waits in its busy handler, which sleeps 1, 2,
    5, 10 ... ms and leaves the lock idle meanwhile; a writer blocked in `flock` on the file
    `<database>.write-lock` is woken the moment the holder lets go. Reusable, not reentrant.
    """

    def __init__(self, database_path: str) -> None:
        self.path = f"{database_path}.write-lock"
        self._fd: int | None = None
        self._pid = 0
        self._threads = threading.Lock()  # flock does not exclude threads sharing one file

    def __enter__(self) -> WriterQueue:
        self._threads.acquire()
        try:
            if self._pid != os.getpid():  # after a fork: a lock of our own, not the parent's
                self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
                self._pid = os.getpid()
            fcntl.flock(self._fd, fcntl.LOCK_EX)  # type: ignore[arg-type]
        except BaseException:
            self._threads.release()
            raise
        return self

    def __exit__(self, *_exc: object) -> None:
        try:
            fcntl.flock(self._fd, fcntl.LOCK_UN)  # type: ignore[arg-type]
        finally:
            self._threads.release()


def writer_queue(engine: Engine) -> WriterQueue | None:
    """This process's `WriterQueue` for an SQLite file; None for PostgreSQL (its locks wake
    waiters).

    One per file and process, shared by the webhooks and the sender: two would each hold a
    flock of their own, and a thread holding one could wait on the other's for nothing.
    """
    path = engine.url.database
    if engine.dialect.name != "sqlite" or not path or path == ":memory:":
        return None
    with _writer_queues_lock:
        return _writer_queues.setdefault(path, WriterQueue(path))


_writer_queues: dict[str, WriterQueue] = {}
_writer_queues_lock = threading.Lock()


class Database:
    """The engine and session factory of one application."""

    def __init__(self, url: str, threads: int = 0) -> None:
        """`threads`: how many threads of this process may hold a connection at once."""
        self.url = url
        # A pool smaller than the threads using it churns: QueuePool closes every connection
        # returned beyond `pool_size`, so a sender worker with 32 threads opened a new PostgreSQL
        # connection (a backend process) every few sends. Connections are opened on demand.
        pooled = {"pool_size": max(10, threads)} if not url.startswith("sqlite") else {}
        self.engine = make_engine(url, **pooled)
        self.sessionmaker = sessionmaker(self.engine, expire_on_commit=False)
        # The same pool, for work that only reads: on SQLite it takes no lock (see `_on_begin`).
        self.read_engine = self.engine.execution_options(**{READS_ONLY: True})
        self.read_sessionmaker = sessionmaker(self.read_engine, expire_on_commit=False)
        event.listen(self.read_sessionmaker, "before_flush", _refuse_to_write)
        # For a transaction that is one statement: on PostgreSQL in autocommit, one round trip
        # instead of BEGIN, the statement and COMMIT. SQLite keeps its BEGIN IMMEDIATE: its
        # driver has no autocommit that would also end the transaction that event opens.
        self.single_statement = (
            self.engine.execution_options(isolation_level="AUTOCOMMIT")
            if self.is_postgres
            else self.engine
        )
        self.writers = writer_queue(self.engine)
        self.wake_ups = WakeUps(self.single_statement) if self.is_postgres else None

    @property
    def is_postgres(self) -> bool:
        return self.engine.dialect.name == "postgresql"

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session for one job; committed by the caller, always closed."""
        session = self.sessionmaker()
        try:
            yield session
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()

    def writing(self) -> AbstractContextManager[object]:
        """Hold around a writing transaction that runs often (the sender's, the webhooks').

        On SQLite the writers of every process then queue for the one write lock and each is
        woken the moment it is free (see `WriterQueue`), instead of one that finds it taken
        sleeping in SQLite's busy handler (up to 100 ms a try) while others keep taking it.
        Nothing on PostgreSQL. Not reentrant: never take it while holding it.
        """
        return self.writers or nullcontext()

    @contextmanager
    def read_session(self) -> Iterator[Session]:
        """A session that only reads (flushing a change raises); always closed."""
        session = self.read_sessionmaker()
        try:
            yield session
        finally:
            session.close()

    def dispose(self) -> None:
        if self.wake_ups is not None:
            self.wake_ups.close()
        self.engine.dispose()


def _refuse_to_write(_session: Session, _context: Any, _instances: Any) -> None:
    raise RuntimeError("a read-only session cannot write: use Database.session()")


def init_app(app: Flask) -> None:
    """Create the app's database and close the request session after each request."""
    # A sender worker runs SEND_CONCURRENCY send threads plus its claim loop and lease heartbeat.
    threads = int(app.config.get("SEND_CONCURRENCY") or 0) + 2
    app.extensions["db"] = Database(app.config["DATABASE_URL"], threads)
    app.teardown_appcontext(_close_request_session)


def get_db(app: Flask | None = None) -> Database:
    return (app or current_app).extensions["db"]


def get_session() -> Session:
    """The session of the current request (or app context), created on first use."""
    if "db_session" not in g:
        g.db_session = get_db().sessionmaker()
    return g.db_session


def get_read_session() -> Session:
    """The current request's session for reading only (see `Database.read_session`)."""
    if "db_read_session" not in g:
        g.db_read_session = get_db().read_sessionmaker()
    return g.db_read_session


def _close_request_session(_exc: BaseException | None) -> None:
    for name in ("db_session", "db_read_session"):
        session = g.pop(name, None)
        if session is not None:
            session.close()


def insert_ignoring_conflicts(
    connection: Connection, table: Table, values: dict[str, Any]
) -> int | None:
    """INSERT a row unless a unique key already holds it; return the new id or None.

    The database decides, so concurrent identical inserts yield exactly one winner.
    """
    dialect = connection.dialect.name
    # Values go in as parameters of one prebuilt statement per table: building a statement with
    # `.values(...)` per call cost more CPU than the INSERT itself on the webhook hot path.
    stmt = _insert_statements.get((dialect, table.name))
    if stmt is None:
        insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
        stmt = insert(table).on_conflict_do_nothing().returning(table.c.id)
        _insert_statements[(dialect, table.name)] = stmt
    return connection.execute(stmt, values).scalar_one_or_none()


_insert_statements: dict[tuple[str, str], Any] = {}
