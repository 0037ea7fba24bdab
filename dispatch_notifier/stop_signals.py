"""SIGTERM and SIGINT answered from a thread of their own, never inside the signal handler.

A Python signal handler runs in the main thread between two bytecodes, possibly while that
thread holds a lock the answer needs (a `threading.Event`'s, in a wait loop): taking it again
there would deadlock. So the handler only writes the signal's number to a pipe, which takes no
lock, and a relay thread reads it and calls `react` as any other thread would.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Callable
from typing import Any


def on_stop_signals(react: Callable[[signal.Signals], None]) -> None:
    """Call `react(signal)` from a relay thread on each SIGTERM or SIGINT. Main thread only."""
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)

    def relay() -> None:
        while data := os.read(read_end, 1):
            react(signal.Signals(data[0]))

    def handler(signum: int, _frame: Any) -> None:
        with contextlib.suppress(BlockingIOError):  # a full pipe already holds a stop
            os.write(write_end, bytes([signum]))

    threading.Thread(target=relay, name="stop-on-signal", daemon=True).start()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, handler)
