"""`dispatch-notifier serve`: gunicorn web processes, plus the sender worker as a child process.

The application is loaded once, in the master, and every other process is a fork of it: gunicorn's
web workers (`preload_app`) and the embedded sender worker. They share the master's memory pages
(imports, the app) copy-on-write instead of each importing and building everything again. Before a
fork the master closes its database connections and freezes its objects out of the garbage
collector's reach (a collection touches every object it scans, which would copy the pages); after
it, each child opens its own connections.

The sender runs in its own process so that gunicorn can fork and restart web workers freely;
gunicorn's master watches it and forks a new one if it dies.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import signal
import sys
import threading
import time
from typing import Any, NoReturn

from flask import Flask
from gunicorn.app.base import BaseApplication
from gunicorn.arbiter import Arbiter
from gunicorn.workers.gthread import ThreadWorker

from dispatch_notifier import db
from dispatch_notifier.config import ConfigError

log = logging.getLogger(__name__)

SENDER_PROCESS_NAME = "dn-sender"  # what `ps -o comm`, top and the tests see
# The handlers gunicorn's master installs; a forked sender must not run them.
MASTER_SIGNALS = (*Arbiter.SIGNALS, signal.SIGCHLD)


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
            self.sender.check(self)

    def handle_chld(self) -> None:
        # Collect the sender's exit status before gunicorn's waitpid(-1) reaps it anonymously.
        if self.sender is not None:
            self.sender.poll()
        super().handle_chld()

    handle_cld = handle_chld  # SIGCLD is SIGCHLD's alias; gunicorn may dispatch either name

    def stop(self, graceful: bool = True) -> None:
        # The sender drains its in-flight sends while the web workers finish their requests.
        if self.sender is not None:
            self.sender.terminate()
        super().stop(graceful)


class WebWorker(ThreadWorker):  # type: ignore[misc]
    """gunicorn's threaded web worker, quitting once however many quit signals arrive.

    Ctrl-C sends SIGINT to every process of the group, and the master, quitting, then sends its
    workers SIGQUIT. A second quit signal handled inside the first one's thread-pool shutdown
    waited for the lock that shutdown held, until the master killed the worker 30 s later.
    """

    _quitting = False

    def handle_quit(self, sig: int, frame: Any) -> None:
        if self._quitting:
            return
        self._quitting = True
        super().handle_quit(sig, frame)


def before_fork(app: Any) -> None:
    """In the master, just before a fork: leave the child nothing it could share by mistake."""
    database = getattr(app, "extensions", {}).get("db")
    if database is not None:
        database.engine.dispose()  # the master itself never queries; children open their own
    db.checkpointer.stop()  # the thread of the master's start-up writes, if any
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


def _worker_exit(server: Arbiter, worker: Any) -> None:
    """In a web process that is exiting: wake the workers for the rows it stored last.

    A row stored without a wake-up of its own gets one a moment later (`WakeUps`); a process
    that exits first would leave it to the workers' poll. gunicorn also calls this hook in the
    master for a worker already gone, where the database must stay as it is for later forks.
    """
    if worker.pid != os.getpid():
        return
    database = getattr(server.app.wsgi(), "extensions", {}).get("db")
    if database is not None:
        database.dispose()


# Each web process answers one request in this many with "Connection: close".
CLOSE_CONNECTION_EVERY = 25


def _pre_request(worker: Any, request: Any) -> None:
    """Now and then, end a kept-alive connection after its answer; the client opens a new one.

    Why: a connection stays with the web process that accepted it, and a client that opens its
    connections in a burst (wrk did; so may a shop platform or a proxy) can leave nine in ten
    on one process, which then queues requests on one CPU while the other process idles. A new
    connection goes to whichever process accepts first, usually the idler, so closing some
    moves the load to where there is room (nginx's `keepalive_requests`, Apache's
    `MaxKeepAliveRequests`). The process closes one of its connections every
    CLOSE_CONNECTION_EVERY requests: the busier one closes more.
    """
    if worker.nr % CLOSE_CONNECTION_EVERY == CLOSE_CONNECTION_EVERY - 1:
        request.must_close = True


class SenderSupervisor:
    """Forks the sender worker from the master and forks a new one, after a growing pause, if it
    dies. On stop: SIGTERM, then at most `stop_timeout` seconds before SIGKILL."""

    def __init__(self, stop_timeout: float) -> None:
        self.stop_timeout = stop_timeout
        self.pid: int | None = None
        self.exit_status = "unknown"
        self.started = False
        self.terminated = False
        self.restarts = 0
        self.next_restart_at = 0.0

    def start(self, arbiter: Arbiter) -> None:
        app = arbiter.app.wsgi()
        before_fork(app)
        # Signals wait until the child has dropped the master's handlers (and the parent resumes).
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, MASTER_SIGNALS)
        pid = os.fork()
        if pid == 0:
            _sender_main(app, arbiter, mask)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        self.pid, self.started, self.terminated = pid, True, False

    def poll(self) -> bool:
        """True while the sender runs; records its exit status once it has ended."""
        if self.pid is None:
            return False
        try:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:
            # gunicorn's reap_workers (waitpid(-1)) collected it first: ended, status unknown.
            self.pid, self.exit_status = None, "unknown"
            return False
        if pid == 0:
            return True
        self.pid, self.exit_status = None, _describe(status)
        return False

    def check(self, arbiter: Arbiter) -> None:
        if self.poll():
            return
        now = time.monotonic()
        if now < self.next_restart_at:
            return
        if self.started:
            log.error("the sender worker exited (%s); starting a new one", self.exit_status)
            self.restarts += 1
            # A worker that dies at once (e.g. a bad setting) must not be restarted in a tight loop.
            self.next_restart_at = now + min(60.0, 2.0**self.restarts)
        self.start(arbiter)

    def terminate(self) -> None:
        """Ask the sender to finish its in-flight sends and exit (once)."""
        if not self.terminated and self.poll():
            os.kill(self.pid, signal.SIGTERM)  # type: ignore[arg-type]
            self.terminated = True

    def stop(self) -> None:
        self.terminate()
        deadline = time.monotonic() + self.stop_timeout
        while self.poll() and time.monotonic() < deadline:
            time.sleep(0.05)
        if self.poll():
            os.kill(self.pid, signal.SIGKILL)  # type: ignore[arg-type]
            with contextlib.suppress(ChildProcessError):
                os.waitpid(self.pid, 0)  # type: ignore[arg-type]
            self.pid = None


def _describe(status: int) -> str:
    code = os.waitstatus_to_exitcode(status)
    return f"code {code}" if code >= 0 else f"signal {signal.Signals(-code).name}"


def _sender_main(app: Flask, arbiter: Arbiter, mask: Any) -> NoReturn:
    """The forked sender: drop what belongs to the master, then work like `dispatch-notifier
    worker` until SIGTERM/SIGINT. Never returns into the master's code."""
    code = 1
    try:
        for signum in MASTER_SIGNALS:
            signal.signal(signum, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        for listener in arbiter.LISTENERS:  # the web workers' sockets: never accept here
            listener.close()
        for web_worker in arbiter.WORKERS.values():  # their heartbeat files, as gunicorn does
            web_worker.tmp.close()
        with contextlib.suppress(OSError), open("/proc/self/comm", "w") as comm:
            comm.write(SENDER_PROCESS_NAME)
        after_fork_in_child(app)
        from dispatch_notifier.cli import run_worker

        with app.app_context():
            code = 0 if run_worker(app) else 1
        app.extensions["db"].engine.dispose()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except ConfigError as exc:  # a bad DISPATCH_* setting: say which, no traceback
        log.error("the sender worker cannot start: %s", exc)
        code = 2
    except BaseException:
        log.exception("the sender worker failed")
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


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
                "worker_class": WebWorker,
                "threads": threads,
                "accesslog": None,
                "errorlog": "-",
                "graceful_timeout": 30,
                "timeout": 60,
                "keepalive": 5,
                "preload_app": True,
                "pre_fork": _pre_fork,
                "post_fork": _post_fork,
                "worker_exit": _worker_exit,
                "pre_request": _pre_request,
                # gunicorn's control socket (`gunicornc`) runs a thread in the master, and the
                # master forks (web workers, the sender) whenever one has to be replaced.
                "control_socket_disable": True,
            },
            sender,
            app,
        ).run()
    finally:
        if sender is not None:
            sender.stop()
