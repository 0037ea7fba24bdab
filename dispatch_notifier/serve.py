"""`dispatch-notifier serve`: gunicorn web processes, plus the sender worker as a child process.

The application is loaded once, in the master, and gunicorn's web workers are forks of it
(`preload_app`): they share the master's memory pages (imports, the app) copy-on-write instead of
each importing and building everything again. Before a fork the master closes its database
connections and freezes its objects out of the garbage collector's reach (a collection touches
every object it scans, which would copy the pages); after it, each child opens its own connections.

The worker runs in its own process so that gunicorn can fork and restart web workers freely;
gunicorn's master watches it and starts a new one if it dies.
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Any

from flask import Flask
from gunicorn.app.base import BaseApplication
from gunicorn.arbiter import Arbiter

log = logging.getLogger(__name__)


class GunicornApp(BaseApplication):  # type: ignore[misc]
    """Serves `app` (default: `create_app()`), loaded in the master before the workers fork."""

    def __init__(
        self,
        options: dict[str, Any],
        sender: SenderSupervisor | None = None,
        app: Flask | None = None,
    ) -> None:
        self.options = options
        self.sender = sender
        self.application = app
        super().__init__()

    def run(self) -> None:
        arbiter = _Arbiter(self)
        arbiter.sender = self.sender
        try:
            arbiter.run()
        except RuntimeError as exc:
            print(f"\nError: {exc}\n", file=sys.stderr, flush=True)
            sys.exit(1)

    def load_config(self) -> None:
        for key, value in self.options.items():
            if key in self.cfg.settings and value is not None:
                self.cfg.set(key, value)

    def load(self) -> Any:
        if self.application is None:
            from dispatch_notifier import create_app

            self.application = create_app()
        return self.application


class _Arbiter(Arbiter):  # type: ignore[misc]
    """gunicorn's master loop, also keeping the embedded sender worker alive."""

    sender: SenderSupervisor | None = None

    def manage_workers(self) -> None:
        super().manage_workers()
        if self.sender is not None:
            self.sender.check()


def before_fork(app: Any) -> None:
    """In the master, just before a fork: leave the child nothing it could share by mistake."""
    database = getattr(app, "extensions", {}).get("db")
    if database is not None:
        database.engine.dispose()  # the master itself never queries; children open their own
    others = [t.name for t in threading.enumerate() if t is not threading.current_thread()]
    if others:
        log.warning("forking while threads run in the master: %s", ", ".join(others))
    sys.stdout.flush()  # else the child would print what is still buffered a second time
    sys.stderr.flush()
    # Objects that exist now move to a generation the collector never scans: in the child a
    # collection would otherwise write to every one of them and copy their pages.
    gc.freeze()


def after_fork_in_child(app: Any) -> None:
    """In a freshly forked child: its own database connections, never the master's."""
    database = getattr(app, "extensions", {}).get("db")
    if database is not None:
        # SQLAlchemy's recipe for os.fork(): forget inherited connections without closing them.
        database.engine.dispose(close=False)


def _pre_fork(server: Arbiter, _worker: Any) -> None:
    before_fork(server.app.wsgi())


def _post_fork(server: Arbiter, _worker: Any) -> None:
    after_fork_in_child(server.app.wsgi())


class SenderSupervisor:
    """Starts the sender worker process and restarts it, with a growing pause, if it dies."""

    def __init__(self, stop_timeout: float) -> None:
        self.stop_timeout = stop_timeout
        self.process = start_worker_process()
        self.restarts = 0
        self.next_restart_at = 0.0

    def check(self) -> None:
        if self.process.poll() is None:
            return
        now = time.monotonic()
        if now < self.next_restart_at:
            return
        log.error("the sender worker exited (code %s); starting a new one", self.process.returncode)
        self.process = start_worker_process()
        self.restarts += 1
        # A worker that dies at once (e.g. a bad setting) must not be restarted in a tight loop.
        self.next_restart_at = now + min(60.0, 2.0**self.restarts)

    def stop(self) -> None:
        stop_worker_process(self.process, self.stop_timeout)


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
    app: Flask | None = None,
) -> None:
    """Run until SIGTERM/SIGINT; then the worker gets `stop_timeout` s to finish its sends."""
    sender = SenderSupervisor(stop_timeout) if with_worker else None
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
                "preload_app": True,
                "pre_fork": _pre_fork,
                "post_fork": _post_fork,
                # gunicorn's control socket (`gunicornc`) runs a thread in the master, and the
                # master forks a web worker whenever one has to be replaced.
                "control_socket_disable": True,
            },
            sender,
            app,
        ).run()
    finally:
        if sender is not None:
            sender.stop()
