"""SQLite checkpoints: a background thread copies the WAL into the database, not a COMMIT."""

from __future__ import annotations

import os
import threading
import time
import warnings
from pathlib import Path

from sqlalchemy import Column, Integer, MetaData, Table, Text, insert, text

from dispatch_notifier.db import SQLITE_AUTOCHECKPOINT_PAGES, checkpointer, make_engine

metadata = MetaData()
notes = Table(
    "checkpoint_notes",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("body", Text, nullable=False),
)


def write_notes(engine, count: int = 200) -> None:  # type: ignore[no-untyped-def]
    """About 200 KB in ~50 pages: far below the 1,000 pages at which SQLite checkpoints itself."""
    with engine.begin() as connection:
        connection.execute(insert(notes), [{"body": "x" * 1000} for _ in range(count)])


def wait_until(predicate, timeout: float = 10.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def new_database(tmp_path: Path):  # type: ignore[no-untyped-def]
    path = str(tmp_path / "db.sqlite3")
    engine = make_engine(f"sqlite:///{path}")
    metadata.create_all(engine)
    return path, engine


def test_committed_rows_reach_the_database_file_without_a_writer_checkpointing(
    tmp_path: Path,
) -> None:
    path, engine = new_database(tmp_path)
    before = checkpointer.checkpoints.get(path, 0)
    size_before = os.path.getsize(path)
    write_notes(engine)

    assert wait_until(lambda: os.path.getsize(path) > size_before + 150_000)
    # Counted once the checkpoint has returned, a moment after the file has grown.
    assert wait_until(lambda: checkpointer.checkpoints.get(path, 0) > before)
    engine.dispose()


def test_a_commit_leaves_checkpointing_to_the_background_thread(tmp_path: Path) -> None:
    _path, engine = new_database(tmp_path)
    with engine.connect() as connection:
        pages = connection.execute(text("PRAGMA wal_autocheckpoint")).scalar_one()
    assert pages == SQLITE_AUTOCHECKPOINT_PAGES
    engine.dispose()


def test_a_removed_database_is_not_created_again(tmp_path: Path) -> None:
    path, engine = new_database(tmp_path)
    write_notes(engine, count=1)
    engine.dispose()
    for suffix in ("", "-wal", "-shm"):
        Path(path + suffix).unlink(missing_ok=True)

    checkpointer.checkpoint(path)

    assert not Path(path).exists()


def test_a_forked_process_checkpoints_with_a_thread_of_its_own(tmp_path: Path) -> None:
    path, engine = new_database(tmp_path)
    before = checkpointer.checkpoints.get(path, 0)
    write_notes(engine, count=1)  # the parent's thread now runs; the child inherits no thread
    # Only once it is idle again: a checkpoint by the parent would also copy the child's pages.
    assert wait_until(lambda: checkpointer.checkpoints.get(path, 0) > before)
    engine.dispose(close=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # 3.12+: fork with threads running
        pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through its exit status
        status = 1
        try:
            size_before = os.path.getsize(path)
            write_notes(engine)
            status = 0 if wait_until(lambda: os.path.getsize(path) > size_before + 150_000) else 2
        finally:
            os._exit(status)
    _pid, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    engine.dispose()


def test_stopping_ends_the_thread_and_the_next_commit_starts_one(tmp_path: Path) -> None:
    path, engine = new_database(tmp_path)
    write_notes(engine, count=1)

    checkpointer.stop()

    assert "sqlite-checkpointer" not in [thread.name for thread in threading.enumerate()]
    before = checkpointer.checkpoints.get(path, 0)
    write_notes(engine, count=1)
    assert wait_until(lambda: checkpointer.checkpoints.get(path, 0) > before)
    engine.dispose()
