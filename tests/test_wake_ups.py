"""Spec: a process wakes the workers at most once an interval, and leaves no new row unannounced."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import create_engine

from dispatch_notifier.wake_ups import WakeUps
from tests.conftest import listening

on_postgres = pytest.mark.parametrize(
    "db_backend", [pytest.param("postgresql", marks=pytest.mark.postgres)]
)


@pytest.fixture
def wake_ups(database_url: str):  # type: ignore[no-untyped-def]
    engine = create_engine(database_url, isolation_level="AUTOCOMMIT")
    made: list[WakeUps] = []

    def make(interval: float) -> WakeUps:
        made.append(WakeUps(engine, interval))
        return made[-1]

    yield make
    for each in made:
        each.close()
    engine.dispose()


@pytest.mark.parametrize("db_backend", ["sqlite"])
def test_a_wake_up_is_due_once_an_interval(wake_ups):
    wakes = wake_ups(0.2)
    first = wakes.claim()
    assert first is not None
    assert wakes.claim() is None
    time.sleep(0.25)
    assert wakes.claim() is not None


@pytest.mark.parametrize("db_backend", ["sqlite"])
def test_a_wake_up_its_writer_did_not_use_is_due_again_at_once(wake_ups):
    wakes = wake_ups(60.0)
    wakes.unused(wakes.claim())
    assert wakes.claim() is not None


@on_postgres
def test_rows_stored_without_a_wake_up_get_one_soon_after_the_interval_is_over(
    wake_ups, database_url
):
    wakes = wake_ups(0.5)
    with listening(database_url) as woken:
        claim = wakes.claim()
        wakes.announced(claim)  # the writer's own NOTIFY (not sent here)
        wakes.missed()
        wakes.missed()
        assert woken(timeout=0.6) == 0  # the interval is not over
        assert woken(timeout=1.5) == 1  # one for both, two intervals after the claim
        assert woken(timeout=1.0) == 0


@on_postgres
def test_disposing_of_the_database_sends_a_pending_wake_up_at_once(wake_ups, database_url):
    # The process is going away (a web worker restarting, a rolling deploy): its last rows must
    # not wait for the workers' poll.
    wakes = wake_ups(60.0)
    with listening(database_url) as woken:
        wakes.announced(wakes.claim())
        wakes.missed()
        wakes.close()
        assert woken(timeout=1.0) == 1  # its own trailing wake-up was two minutes away
        wakes.missed()  # a late writer: nothing to announce to
        assert woken(timeout=1.0) == 0
    assert wakes._thread is not None and not wakes._thread.is_alive()


@on_postgres
def test_disposing_of_the_database_with_every_row_announced_sends_nothing(wake_ups, database_url):
    wakes = wake_ups(0.1)
    with listening(database_url) as woken:
        wakes.announced(wakes.claim())
        wakes.missed()
        assert woken(timeout=1.0) == 1  # the trailing wake-up
        wakes.close()
        assert woken(timeout=0.5) == 0
