"""Harness for the reliability suite: real `serve`/`worker` processes, the fake Dotdigital API,
webhook storms from many clients, and a private PostgreSQL cluster. Loopback only, time-bounded.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
from sqlalchemy import create_engine, select, text

from dispatch_notifier.models import TERMINAL_STATUSES, Notification
from dispatch_notifier.testing.fake_dotdigital import FakeDotdigital
from tests.conftest import IN_CI, SHOPIFY_SECRET, fulfillment, shopify_headers

DD_USER, DD_PASSWORD = "apiuser-test@apiconnector.com", "test-password"
REPO = Path(__file__).resolve().parent.parent.parent
RESULTS: list[dict[str, Any]] = []
COLUMNS = (
    "scenario",
    "events",
    "acknowledged",
    "sms sent",
    "duplicates",
    "lost",
    "statuses",
    "notes",
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def phone_for(i: int) -> str:
    return f"+4474001{i:05d}"


# --- processes ---------------------------------------------------------------------------------


class Stack:
    """The service's processes for one scenario, all stopped (SIGTERM, then SIGKILL) at the end."""

    def __init__(self, database_url: str, fake: FakeDotdigital, workdir: Path, **settings: Any):
        self.workdir = workdir
        self.env = {
            **os.environ,
            "DISPATCH_DATABASE_URL": database_url,
            "DISPATCH_INSTANCE_PATH": str(workdir / "instance"),
            "DISPATCH_SECRET_KEY": "reliability-secret-key",
            "DISPATCH_SHOPIFY_SECRET": SHOPIFY_SECRET,
            "DISPATCH_SMS_BACKEND": "dotdigital",
            "DISPATCH_DOTDIGITAL_API_URL": fake.url,
            "DISPATCH_DOTDIGITAL_USER": DD_USER,
            "DISPATCH_DOTDIGITAL_PASSWORD": DD_PASSWORD,
            "DISPATCH_DOTDIGITAL_READ_TIMEOUT": "1.0",
            "DISPATCH_POLL_INTERVAL": "0.2",
            "DISPATCH_LEASE_SECONDS": "2",
            "DISPATCH_STOP_TIMEOUT": "5",
            "DISPATCH_RETRY_BASE_SECONDS": "0.05",
            "DISPATCH_RETRY_CAP_SECONDS": "0.5",
            "DISPATCH_MAX_ATTEMPTS": "25",
            "DISPATCH_SECURE_COOKIES": "false",
            "DISPATCH_LOG_LEVEL": "WARNING",
        }
        self.env.update({f"DISPATCH_{k}": str(v) for k, v in settings.items()})
        self.processes: list[subprocess.Popen[bytes]] = []
        self.port: int | None = None

    def command(self, *args: str, timeout: float = 60) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "dispatch_notifier", *args],
            env=self.env,
            cwd=REPO,
            capture_output=True,
            timeout=timeout,
        )
        assert done.returncode == 0, done.stderr.decode()[-2000:]
        return done.stdout.decode()

    def spawn(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        log = open(self.workdir / f"{name}.log", "ab")  # noqa: SIM115 - closed with the process
        process = subprocess.Popen(
            [sys.executable, "-m", "dispatch_notifier", *args],
            env=self.env,
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        self.processes.append(process)
        return process

    def serve(self, web_processes: int) -> str:
        self.port = free_port()
        self.spawn(
            "serve",
            "serve",
            "--no-worker",
            "--workers",
            str(web_processes),
            "--port",
            str(self.port),
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if requests.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return self.url
            except requests.RequestException:
                pass
            time.sleep(0.1)
        raise AssertionError(f"serve did not come up:\n{self.logs('serve')}")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def worker(self) -> subprocess.Popen[bytes]:
        return self.spawn("worker", "worker")

    def logs(self, name: str) -> str:
        path = self.workdir / f"{name}.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def stop(self, process: subprocess.Popen[bytes], timeout: float = 15) -> int:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)
        return process.returncode

    def close(self) -> None:
        for process in reversed(self.processes):
            self.stop(process)


@pytest.fixture
def stack_factory(tmp_path: Path) -> Iterator[Any]:
    stacks: list[Stack] = []

    def make(database_url: str, fake: FakeDotdigital, **settings: Any) -> Stack:
        workdir = tmp_path / f"stack{len(stacks)}"
        workdir.mkdir()
        stack = Stack(database_url, fake, workdir, **settings)
        stack.command("db", "upgrade")
        stacks.append(stack)
        return stack

    yield make
    for stack in stacks:
        stack.close()


@pytest.fixture
def fake() -> Iterator[FakeDotdigital]:
    with FakeDotdigital(user=DD_USER, password=DD_PASSWORD) as server:
        yield server


# --- webhook traffic ---------------------------------------------------------------------------


@dataclass
class Event:
    """One dispatch (one shipment) as the shop would report it; posted once or several times."""

    index: int
    webhook_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    answers: list[int | str] = field(default_factory=list)

    @property
    def shipment_id(self) -> str:
        return str(50_000 + self.index)

    @property
    def phone(self) -> str:
        return phone_for(self.index)

    @property
    def acknowledged(self) -> bool:
        return any(isinstance(a, int) and 200 <= a < 300 for a in self.answers)

    def body(self) -> bytes:
        import json

        return json.dumps(
            fulfillment(50_000 + self.index, 60_000 + self.index, phone=self.phone)
        ).encode()


_local = threading.local()


def _session() -> requests.Session:
    if not hasattr(_local, "session"):
        _local.session = requests.Session()
    return _local.session


def post(url: str, event: Event, webhook_id: str | None = None) -> int | str:
    """Post the event once, as the platform would; returns the status or the error's name."""
    body = event.body()
    headers = shopify_headers(body, webhook_id=webhook_id or event.webhook_id)
    try:
        answer: int | str = (
            _session()
            .post(f"{url}/webhooks/shopify", data=body, headers=headers, timeout=10)
            .status_code
        )
    except requests.RequestException as exc:
        answer = type(exc).__name__
    event.answers.append(answer)
    return answer


def storm(url: str, events: list[Event], copies: int, clients: int = 16, seed: int = 1) -> None:
    """Deliver every event `copies` times, shuffled, from `clients` concurrent clients.

    Copies alternate between the same platform delivery id (a platform retry) and a new one (the
    same shipment reported again), so both unique keys are exercised.
    """
    jobs = []
    for event in events:
        for copy in range(copies):
            jobs.append((event, None if copy % 2 == 0 else str(uuid.uuid4())))
    random.Random(seed).shuffle(jobs)
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(lambda job: post(url, *job), jobs))


def deliver_until_acknowledged(
    url: str, event: Event, deadline: float, pause: float = 0.25
) -> None:
    """A platform's retry loop: post until a 2xx, or give up at the deadline."""
    while time.monotonic() < deadline:
        answer = post(url, event)
        if isinstance(answer, int) and 200 <= answer < 300:
            return
        time.sleep(pause)


# --- checking the outcome ----------------------------------------------------------------------


def notification_rows(database_url: str) -> list[dict[str, Any]]:
    engine = create_engine(database_url)
    try:
        with engine.connect() as connection:
            result = connection.execute(
                select(
                    Notification.id,
                    Notification.shipment_id,
                    Notification.status,
                    Notification.phone,
                    Notification.error_code,
                )
            )
            return [dict(r._mapping) for r in result]
    finally:
        engine.dispose()


def wait_until_settled(database_url: str, expected: int, timeout: float) -> list[dict[str, Any]]:
    """Wait (bounded) until `expected` rows exist and all are terminal."""
    deadline = time.monotonic() + timeout
    while True:
        rows = notification_rows(database_url)
        if len(rows) >= expected and all(r["status"] in TERMINAL_STATUSES for r in rows):
            return rows
        if time.monotonic() > deadline:
            return rows
        time.sleep(0.25)


def report(
    scenario: str,
    events: list[Event],
    rows: list[dict[str, Any]],
    fake: FakeDotdigital,
    notes: str = "",
) -> dict[str, Any]:
    """Count what happened and check the invariants every scenario shares."""
    sms_per_number = Counter(s.number for s in fake.sent)
    by_shipment = {r["shipment_id"]: r for r in rows}
    acknowledged = [e for e in events if e.acknowledged]
    lost = [
        e
        for e in acknowledged
        if e.shipment_id not in by_shipment
        or by_shipment[e.shipment_id]["status"] not in TERMINAL_STATUSES
    ]
    duplicates = sum(n - 1 for n in sms_per_number.values() if n > 1)
    statuses = Counter(r["status"] for r in rows)
    row = {
        "scenario": scenario,
        "events": len(events),
        "acknowledged": len(acknowledged),
        "sms sent": len(fake.sent),
        "duplicates": duplicates,
        "lost": len(lost),
        "statuses": " ".join(f"{k}={v}" for k, v in sorted(statuses.items())),
        "notes": notes,
    }
    RESULTS.append(row)
    print_table([row])

    assert duplicates == 0, f"numbers texted twice: {sms_per_number.most_common(3)}"
    assert not lost, f"acknowledged but not terminal or missing: {[e.index for e in lost][:10]}"
    # A row for every acknowledged event and none for anything else.
    assert {r["shipment_id"] for r in rows} == {e.shipment_id for e in acknowledged}
    for r in rows:
        texted = sms_per_number.get(r["phone"].lstrip("+"), 0) if r["phone"] else 0
        if r["status"] == "sent":
            assert texted == 1, r
        elif r["status"] == "unknown":
            assert texted <= 1, r  # may or may not have gone out: that is what unknown means
        else:
            assert texted == 0, r
    return row


def print_table(rows: list[dict[str, Any]]) -> None:
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in COLUMNS}
    print()
    print("  ".join(c.ljust(widths[c]) for c in COLUMNS))
    for r in rows:
        print("  ".join(str(r[c]).ljust(widths[c]) for c in COLUMNS))


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not RESULTS:
        return
    terminalreporter.section("reliability scenarios")
    widths = {c: max(len(c), *(len(str(r[c])) for r in RESULTS)) for c in COLUMNS}
    terminalreporter.write_line("  ".join(c.ljust(widths[c]) for c in COLUMNS))
    for r in RESULTS:
        terminalreporter.write_line("  ".join(str(r[c]).ljust(widths[c]) for c in COLUMNS))


# --- a private PostgreSQL cluster ---------------------------------------------------------------


class PrivateCluster:
    """A throwaway PostgreSQL cluster on its own port, which the test may stop and start."""

    def __init__(self) -> None:
        self.initdb = shutil.which("initdb") or "/usr/local/bin/initdb"
        self.pg_ctl = shutil.which("pg_ctl") or "/usr/local/bin/pg_ctl"
        if not (os.path.exists(self.initdb) and os.path.exists(self.pg_ctl)):
            raise RuntimeError("initdb/pg_ctl not found")
        self.root = Path(tempfile.mkdtemp(prefix="dn-pg-"))
        self.data = self.root / "data"
        self.port = free_port()
        self.as_user: list[str] = []
        if os.geteuid() == 0:
            # initdb refuses to run as root: run the cluster as the postgres user.
            runuser = shutil.which("runuser")
            if runuser is None:
                raise RuntimeError("running as root and runuser is missing")
            shutil.chown(self.root, "postgres", "postgres")
            self.as_user = [runuser, "-u", "postgres", "--"]
        self._run(self.initdb, "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8")
        self.start()

    def _run(self, *args: str, timeout: float = 60) -> None:
        done = subprocess.run(
            [*self.as_user, *args], capture_output=True, timeout=timeout, cwd=self.root
        )
        if done.returncode != 0:
            raise RuntimeError(done.stderr.decode(errors="replace")[-1500:])

    def start(self) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run(
            self.pg_ctl,
            "-D",
            str(self.data),
            "-o",
            options,
            "-l",
            str(self.root / "log"),
            "-w",
            "start",
        )

    def stop(self) -> None:
        self._run(self.pg_ctl, "-D", str(self.data), "-m", "fast", "-w", "stop")

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        engine = create_engine(self.url(), isolation_level="AUTOCOMMIT")
        with engine.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
        engine.dispose()
        return self.url(name)

    def destroy(self) -> None:
        with contextlib.suppress(Exception):
            self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture
def private_cluster() -> Iterator[PrivateCluster]:
    try:
        cluster = PrivateCluster()
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
        if IN_CI:
            pytest.fail(f"could not start a private PostgreSQL cluster: {exc}")
        pytest.skip(f"could not start a private PostgreSQL cluster (initdb/pg_ctl): {exc}")
    try:
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture
def fresh_postgres(postgres_url: str) -> str:
    """The session's PostgreSQL database, emptied for this scenario."""
    from tests.conftest import _truncate_postgres

    _truncate_postgres(postgres_url)
    return postgres_url
