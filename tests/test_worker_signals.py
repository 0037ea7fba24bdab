"""SIGTERM and SIGINT stop the worker: from a relay thread, never inside the signal handler."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest
from flask import Flask

from dispatch_notifier import cli
from dispatch_notifier.worker import Worker


class Deadlocked(Exception):
    pass


@pytest.fixture
def signal_handlers():  # type: ignore[no-untyped-def]
    """Puts back the handlers a test replaces, so later tests get the usual ones."""
    signals = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)
    previous = {signum: signal.getsignal(signum) for signum in signals}
    yield
    for signum, handler in previous.items():
        signal.signal(signum, handler)


def _unblock_after(seconds: float) -> threading.Timer:
    """Turns a deadlock of the main thread into an exception: a lock acquire is interrupted
    by a signal whose handler raises."""

    def give_up(_signum: int, _frame: object) -> None:
        raise Deadlocked("the stop signal's handler deadlocked in the main thread")

    signal.signal(signal.SIGUSR1, give_up)
    timer = threading.Timer(seconds, os.kill, (os.getpid(), signal.SIGUSR1))
    timer.start()
    return timer


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_landing_while_the_loop_holds_its_wake_lock_stops_the_worker(
    app: Flask, signal_handlers, capsys, signum: int
) -> None:
    runner = Worker(app)
    cli.stop_on_signals(runner)
    timer = _unblock_after(5)
    try:
        # The worker loop holds this lock inside `Event.wait()` and `Event.clear()`; a second
        # SIGTERM (from systemd, then from `serve`'s master) can land just then.
        with runner._wake._cond:
            os.kill(os.getpid(), signum)
            time.sleep(0.2)  # the handler runs here, in this thread, holding the lock
        assert runner._stop.wait(5), "the worker was not told to stop"
    finally:
        timer.cancel()
    assert runner.stopping
    assert f"worker: {signal.Signals(signum).name}, finishing in-flight sends" in (
        capsys.readouterr().err
    )
