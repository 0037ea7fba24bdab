"""Group commit: concurrent writers share transactions, and each still gets only its own outcome."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import Column, Connection, Integer, MetaData, String, Table, insert, select
from sqlalchemy.exc import IntegrityError

from dispatch_notifier.db import make_engine
from dispatch_notifier.group_commit import GroupCommit

metadata = MetaData()
rows = Table(
    "group_commit_rows",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(40), nullable=False, unique=True),
)


@pytest.fixture
def engine(database_url: str):  # type: ignore[no-untyped-def]
    engine = make_engine(database_url)
    metadata.drop_all(engine)
    metadata.create_all(engine)
    yield engine
    metadata.drop_all(engine)
    engine.dispose()


def write_row(connection: Connection, name: str) -> int:
    return int(connection.execute(insert(rows).values(name=name).returning(rows.c.id)).scalar_one())


def stored(engine) -> list[str]:  # type: ignore[no-untyped-def]
    with engine.connect() as connection:
        return sorted(connection.execute(select(rows.c.name)).scalars())


def wait_for_queue(committer: GroupCommit, length: int) -> None:
    for _ in range(500):
        if len(committer._queue) >= length:
            return
        threading.Event().wait(0.01)


def test_concurrent_writes_all_commit_in_fewer_transactions(engine) -> None:  # type: ignore[no-untyped-def]
    def write(connection: Connection, name: str) -> int:
        if name == "w0-0":  # the first transaction stays open until all the others have queued
            wait_for_queue(committer, 7)
        return write_row(connection, name)

    committer = GroupCommit(engine, write)
    first = threading.Thread(target=committer.run, args=("w0-0",))
    first.start()
    while not committer._writing:
        threading.Event().wait(0.005)

    def writer(index: int) -> list[int]:
        return [committer.run(f"w{index}-{n}") for n in range(5)]

    with ThreadPoolExecutor(7) as pool:
        ids = [i for result in pool.map(writer, range(1, 8)) for i in result]
    first.join(5)

    assert len(set(ids)) == 35
    assert stored(engine) == sorted(["w0-0"] + [f"w{i}-{n}" for i in range(1, 8) for n in range(5)])
    assert committer.transactions < 36


def test_a_failing_job_fails_alone(engine) -> None:  # type: ignore[no-untyped-def]
    with engine.begin() as connection:
        write_row(connection, "taken")

    def write(connection: Connection, name: str) -> int:
        if name == "first":  # the three others queue behind this transaction: one batch
            wait_for_queue(committer, 3)
        return write_row(connection, name)

    committer = GroupCommit(engine, write)
    with ThreadPoolExecutor(4) as pool:
        first = pool.submit(committer.run, "first")
        while committer.transactions == 0 and not committer._writing:
            threading.Event().wait(0.005)
        others = [pool.submit(committer.run, name) for name in ("good-1", "taken", "good-2")]
        assert first.result(5)
        assert others[0].result(5) and others[2].result(5)
        with pytest.raises(IntegrityError):
            others[1].result(5)

    assert stored(engine) == ["first", "good-1", "good-2", "taken"]


def test_a_job_alone_runs_on_the_alone_engine_and_a_shared_batch_on_the_engine(engine) -> None:  # type: ignore[no-untyped-def]
    alone = engine.execution_options(isolation_level="AUTOCOMMIT")
    used: dict[str, object] = {}
    writing_first = threading.Event()

    def write(connection: Connection, name: str) -> int:
        if name == "first":  # held open until the other two have queued behind it
            writing_first.set()
            wait_for_queue(committer, 2)
        used[name] = connection.engine
        return write_row(connection, name)

    committer = GroupCommit(engine, write, alone=alone)
    with ThreadPoolExecutor(3) as pool:
        first = pool.submit(committer.run, "first")
        assert writing_first.wait(5)  # "first" is being written: these two share the next one
        others = [pool.submit(committer.run, name) for name in ("second", "third")]
        assert first.result(5) and all(other.result(5) for other in others)

    assert used == {"first": alone, "second": engine, "third": engine}
    assert committer.transactions == 2
    assert stored(engine) == ["first", "second", "third"]


def test_an_interrupted_write_does_not_leave_callers_waiting(engine) -> None:  # type: ignore[no-untyped-def]
    def interrupted(_connection: Connection, _name: str) -> int:
        raise KeyboardInterrupt

    committer = GroupCommit(engine, interrupted)
    with pytest.raises(KeyboardInterrupt):
        committer.run("x")
    committer.write = write_row
    assert committer.run("y")
    assert stored(engine) == ["y"]


def test_sqlite_writers_queue_on_a_lock_file_across_processes(tmp_path) -> None:
    from dispatch_notifier.db import WriterQueue, writer_queue

    path = str(tmp_path / "db.sqlite3")
    # Two queues on one file stand for two processes: each has its own open file, as after fork.
    first, second = WriterQueue(path), WriterQueue(path)
    order: list[str] = []
    with first:
        waiter = threading.Thread(target=lambda: (second.__enter__(), order.append("second")))
        waiter.start()
        waiter.join(0.2)
        assert waiter.is_alive()  # blocked while the first holds it
        order.append("first done")
    waiter.join(5)
    second.__exit__(None, None, None)
    assert order == ["first done", "second"]
    assert writer_queue(make_engine(f"sqlite:///{path}")) is not None
    assert writer_queue(make_engine("sqlite://")) is None


def test_one_writer_queue_per_database_file_in_a_process(tmp_path) -> None:
    from dispatch_notifier.db import writer_queue

    url = f"sqlite:///{tmp_path / 'db.sqlite3'}"
    # The webhooks' and the sender's engines share it: two would each hold their own flock.
    assert writer_queue(make_engine(url)) is writer_queue(make_engine(url))


@pytest.mark.parametrize("db_backend", ["sqlite"])
def test_the_sender_queues_for_the_write_lock_behind_other_writers(app) -> None:
    """Its claims (and its other writes) wait in the queue the webhooks wait in: a writer that
    instead retries in SQLite's busy handler sleeps up to 100 ms a try while others take it."""
    import fcntl
    import os

    from dispatch_notifier.db import get_db
    from dispatch_notifier.models import Notification
    from dispatch_notifier.worker import Worker
    from tests.conftest import fulfillment, post_shopify

    assert post_shopify(app.test_client(), fulfillment()).status_code == 200
    db = get_db(app)
    # Another process's writer at the head of the queue: a flock on an open file of its own.
    lock_file = os.open(f"{db.engine.url.database}.write-lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(lock_file, fcntl.LOCK_EX)
    worker = threading.Thread(target=Worker(app).run_until_idle)
    try:
        worker.start()
        worker.join(0.5)
        assert worker.is_alive()  # waiting its turn, not claiming around the queue
        with db.read_session() as session:
            assert session.scalars(select(Notification.status)).all() == ["pending"]
    finally:
        fcntl.flock(lock_file, fcntl.LOCK_UN)
        os.close(lock_file)
    worker.join(10)
    with db.read_session() as session:
        assert session.scalars(select(Notification.status)).all() == ["sent"]
