"""`dispatch-notifier serve` as a user runs it: gunicorn, the embedded worker, a clean stop."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import requests

from dispatch_notifier.db import get_db
from dispatch_notifier.samples import signed_shopify_fulfillment
from dispatch_notifier.serve import WebWorker, _worker_exit
from tests.conftest import fulfillment, listening, post_shopify

SECRET = "serve-test-secret"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cli(env: dict[str, str], *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "dispatch_notifier", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def env(database_url: str, tmp_path: Path) -> dict[str, str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("DISPATCH_")}
    environment.update(
        DISPATCH_DATABASE_URL=database_url,
        DISPATCH_INSTANCE_PATH=str(tmp_path / "instance"),
        DISPATCH_SHOPIFY_SECRET=SECRET,
        DISPATCH_POLL_INTERVAL="0.1",
        PYTHONUNBUFFERED="1",
    )
    result = cli(environment, "db", "upgrade")
    assert result.returncode == 0, result.stderr
    return environment


def start(env: dict[str, str], *args: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "dispatch_notifier", "serve", "--port", str(port), *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if requests.get(f"{url}/readyz", timeout=1).status_code == 200:
                return process, url
        except requests.ConnectionError:
            time.sleep(0.2)
    process.kill()
    raise AssertionError(f"serve did not become ready: {process.communicate()[0]}")


def stop(process: subprocess.Popen) -> str:
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=40)
    return output


def log(env: dict[str, str]) -> list[dict]:
    result = cli(env, "log", "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def post_sample(url: str, order: str = "1001") -> requests.Response:
    body, headers = signed_shopify_fulfillment(SECRET, phone="+447911123456", order_number=order)
    return requests.post(f"{url}/webhooks/shopify", data=body, headers=headers, timeout=10)


def children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if ppid == pid:
            found.append(int(stat.parent.name))
    return found


def is_sender(pid: int) -> bool:
    """The embedded sender is a fork of serve named `dn-sender` (it used to be `... worker`)."""
    try:
        name = Path(f"/proc/{pid}/comm").read_text().strip()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return name == "dn-sender" or b"worker" in cmdline


def test_serve_acknowledges_and_its_embedded_worker_sends(env):
    process, url = start(env, "--workers", "2")
    try:
        response = post_sample(url)
        assert response.status_code == 200, response.text
        assert response.json()["status"] == "accepted"
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and [r["status"] for r in log(env)] != ["sent"]:
            time.sleep(0.2)
        records = log(env)
    finally:
        output = stop(process)
    assert [r["status"] for r in records] == ["sent"], output
    assert "(console backend, not sent to any phone)" in output
    assert "+447911123456" not in output  # logs and console show masked numbers only
    assert process.returncode == 0


def test_serve_no_worker_only_receives(env):
    process, url = start(env, "--no-worker", "--workers", "1")
    try:
        assert post_sample(url).status_code == 200
        time.sleep(1.0)
        assert [r["status"] for r in log(env)] == ["pending"]
    finally:
        stop(process)


def test_serve_refuses_to_start_on_an_unmigrated_database(tmp_path):
    environment = {k: v for k, v in os.environ.items() if not k.startswith("DISPATCH_")}
    environment.update(
        DISPATCH_DATABASE_URL=f"sqlite:///{tmp_path / 'empty.sqlite3'}",
        DISPATCH_INSTANCE_PATH=str(tmp_path / "instance"),
    )
    result = cli(environment, "serve", "--port", str(free_port()))
    assert result.returncode != 0
    assert "dispatch-notifier db upgrade" in result.stderr


def test_serve_restarts_its_sender_worker_if_it_dies(env):
    process, url = start(env, "--workers", "1")

    def sender_pids() -> list[int]:
        return [pid for pid in children(process.pid) if is_sender(pid)]

    try:
        deadline = time.monotonic() + 10  # the sender may be forked just after /readyz answers
        while time.monotonic() < deadline and not sender_pids():
            time.sleep(0.1)
        [first] = sender_pids()
        os.kill(first, signal.SIGKILL)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and sender_pids() in ([], [first]):
            time.sleep(0.2)
        [second] = sender_pids()
        assert second != first
        assert post_sample(url).status_code == 200
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and [r["status"] for r in log(env)] != ["sent"]:
            time.sleep(0.2)
        assert [r["status"] for r in log(env)] == ["sent"]
    finally:
        stop(process)


def test_serve_forks_its_web_workers_and_sender_from_a_master_without_threads(env):
    """One app loaded in the master, shared by its forks; forking while another thread runs
    could leave the child holding a lock that thread had taken."""
    process, url = start(env, "--workers", "2")
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not any(map(is_sender, children(process.pid))):
            time.sleep(0.1)
        pids = children(process.pid)
        assert len(pids) == 3, pids
        assert sum(is_sender(pid) for pid in pids) == 1
        assert os.listdir(f"/proc/{process.pid}/task") == [str(process.pid)]
        # Children run the master's program (no fresh interpreter) and none listens on a
        # socket it does not need: the sender holds no listening socket.
        master_cmdline = Path(f"/proc/{process.pid}/cmdline").read_bytes()
        for pid in pids:
            assert Path(f"/proc/{pid}/cmdline").read_bytes() == master_cmdline
        [sender] = [pid for pid in pids if is_sender(pid)]
        assert not listening_sockets(sender)
        assert all(listening_sockets(pid) for pid in pids if pid != sender)
        assert post_sample(url).status_code == 200
    finally:
        output = stop(process)
    assert process.returncode == 0, output


def listening_sockets(pid: int) -> set[str]:
    """Inodes of the TCP sockets in LISTEN state among `pid`'s open files."""
    listening = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if fields[3] == "0A":  # TCP_LISTEN
                    listening.add(fields[9])
    held = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                held.add(target[len("socket:[") : -1])
    return held & listening


def test_a_kept_alive_connection_is_closed_now_and_then_so_load_can_move(env):
    """Each web process ends one connection in CLOSE_CONNECTION_EVERY with its answer; the
    client's next request opens a new one, which the least busy process tends to accept."""
    from dispatch_notifier.serve import CLOSE_CONNECTION_EVERY

    process, url = start(env, "--workers", "1", "--no-worker")
    try:
        with requests.Session() as session:
            answers = [session.get(f"{url}/healthz") for _ in range(2 * CLOSE_CONNECTION_EVERY)]
        assert {answer.status_code for answer in answers} == {200}
        closing = [a for a in answers if a.headers.get("Connection", "").lower() == "close"]
        assert len(closing) == 2
    finally:
        stop(process)


def test_a_second_quit_signal_during_the_first_does_not_hang_a_web_worker():
    # Ctrl-C reaches a web worker as SIGINT, and the quitting master sends it SIGQUIT: the
    # second can arrive while the first shuts the thread pool down holding the pool's lock
    # (ThreadPoolExecutor.shutdown takes a plain Lock), as this pool makes it do every time.
    worker = WebWorker.__new__(WebWorker)  # its handlers only, not a running worker
    worker.cfg = SimpleNamespace(worker_int=lambda _worker: None)

    class PoolSignalledDuringShutdown:
        lock = threading.Lock()
        shutdowns = 0

        def shutdown(self, wait: bool = True) -> None:
            with self.lock:
                self.shutdowns += 1
                if self.shutdowns == 1:
                    worker.handle_quit(signal.SIGQUIT, None)

    worker.tpool = PoolSignalledDuringShutdown()
    exits: list[BaseException] = []

    def quit_on_ctrl_c() -> None:
        try:
            worker.handle_quit(signal.SIGINT, None)
        except SystemExit as exit_:
            exits.append(exit_)

    quitting = threading.Thread(target=quit_on_ctrl_c, daemon=True)
    quitting.start()
    quitting.join(5)
    assert not quitting.is_alive(), "the worker hung on its second quit signal"
    assert [exit_.code for exit_ in exits] == [0]
    assert worker.tpool.shutdowns == 1


@pytest.mark.parametrize("db_backend", [pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_a_web_process_exiting_wakes_the_workers_for_the_shipment_it_stored_last(
    app, client, database_url
):
    # gunicorn runs its `worker_exit` hook in the exiting web process, and also in the master
    # for a worker found already gone: there the database must stay usable for later forks.
    get_db(app).wake_ups.interval = 60.0  # the second shipment's own wake-up: a minute away
    server = SimpleNamespace(app=SimpleNamespace(wsgi=lambda: app))
    with listening(database_url) as woken:
        post_shopify(client, fulfillment(8301, 8302), webhook_id="first")
        post_shopify(client, fulfillment(8311, 8312), webhook_id="second")
        assert woken() == 1
        _worker_exit(server, SimpleNamespace(pid=os.getpid() + 1))  # in the master
        assert woken() == 0
        _worker_exit(server, SimpleNamespace(pid=os.getpid()))  # in the web process
        assert woken() == 1
