"""`dispatch-notifier serve`: gunicorn web processes, plus the sender worker as a child process.

The worker runs in its own process so that gunicorn can fork and restart web workers freely.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from typing import Any

from gunicorn.app.base import BaseApplication


class GunicornApp(BaseApplication):  # type: ignore[misc]
    """Runs `create_app()` in each gunicorn worker (no preload: engines are made after fork)."""

    def __init__(self, options: dict[str, Any]) -> None:
        self.options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            if key in self.cfg.settings and value is not None:
                self.cfg.set(key, value)

    def load(self) -> Any:
        from dispatch_notifier import create_app

        return create_app()


def start_worker_process() -> subprocess.Popen[bytes]:
    """The embedded sender worker, in a child process sharing our environment and output."""
    return subprocess.Popen(
        [sys.executable, "-m", "dispatch_notifier", "worker"], env=os.environ.copy()
    )


def stop_worker_process(process: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def serve(
    host: str,
    port: int,
    workers: int,
    with_worker: bool,
    threads: int = 4,
    stop_timeout: float = 30.0,
) -> None:
    """Run until SIGTERM/SIGINT; then the worker gets `stop_timeout` s to finish its sends."""
    worker = start_worker_process() if with_worker else None
    try:
        GunicornApp(
            {
                "bind": f"{host}:{port}",
                "workers": workers,
                "worker_class": "gthread",
                "threads": threads,
                "accesslog": None,
                "errorlog": "-",
                "graceful_timeout": 30,
                "timeout": 60,
                "keepalive": 5,
            }
        ).run()
    finally:
        if worker is not None:
            stop_worker_process(worker, stop_timeout)
