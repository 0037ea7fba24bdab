"""Shared plumbing for the benchmarks: scratch databases, servers, signed requests, load generators.

Every process a benchmark starts is its own process group, stopped by its id when the run ends.
"""

from __future__ import annotations

import argparse
import array
import base64
import bisect
import contextlib
import gc
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import loadgen  # bench/, on the path of every script here
from sqlalchemy import create_engine, text

from dispatch_notifier import create_app, message_templates, migrate
from dispatch_notifier.db import get_db
from dispatch_notifier.platforms import hmac_sha256
from dispatch_notifier.testing.fake_dotdigital import FakeDotdigital

BENCH_DIR = Path(__file__).resolve().parent
PROJECT_DIR = BENCH_DIR.parent
TEMPLATES_DIR = PROJECT_DIR / "templates"
LUA_SCRIPT = BENCH_DIR / "wrk_webhooks.lua"
DEFAULT_POSTGRES_URL = os.environ.get(
    "DISPATCH_BENCH_POSTGRES_URL",
    os.environ.get(
        "DISPATCH_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
    ),
)
SHOPIFY_SECRET = "bench-shopify-secret"
DOTDIGITAL_USER = "apiuser-bench@apiconnector.com"
DOTDIGITAL_PASSWORD = "bench-password"
WRK_INSTALL_HINT = "wrk is not installed: `apt-get update && apt-get install -y wrk` (Debian)"
NOT_AVAILABLE = "not available on this build"


def _exit_on_sigterm(signum: int, _frame: Any) -> None:
    # Turn SIGTERM into SystemExit so that `finally` blocks stop the servers we started.
    raise SystemExit(128 + signum)


signal.signal(signal.SIGTERM, _exit_on_sigterm)


# --- command line and output -------------------------------------------------------------------


def base_parser(description: str, databases: str = "sqlite,postgresql") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--db",
        default=databases,
        help=f"comma-separated databases to run on (default: {databases})",
    )
    parser.add_argument(
        "--postgres-url",
        default=DEFAULT_POSTGRES_URL,
        help="a PostgreSQL server where a scratch database is created and dropped",
    )
    parser.add_argument(
        "--smoke", action="store_true", help="a tiny run that only shows the script works"
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the scratch folder (logs, request files)"
    )
    return parser


def databases(args: argparse.Namespace) -> list[str]:
    kinds = [k.strip() for k in args.db.split(",") if k.strip()]
    unknown = set(kinds) - {"sqlite", "postgresql"}
    if unknown:
        sys.exit(f"--db: unknown database {', '.join(sorted(unknown))}")
    return kinds


def machine_line() -> str:
    """What ran the benchmark, for the table's caption."""
    load = os.getloadavg()
    return (
        f"{platform.node()}: {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"load average {load[0]:.1f} at start, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
    )


def print_table(title: str, headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """A Markdown table, so a run's output can be pasted into bench/README.md as it is."""
    cells = [[_cell(v) for v in row] for row in rows]
    print(f"\n### {title}\n")
    print("| " + " | ".join(headers) + " |")
    print("|" + "|".join("---" for _ in headers) + "|")
    for row in cells:
        print("| " + " | ".join(row) + " |")
    print(flush=True)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.2f}" if abs(value) < 100 else f"{value:,.0f}"
    return str(value)


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("met" if ok else "MISSED")


def ratio(value: float | None, base: float | None) -> float | None:
    if value is None or not base:
        return None
    return value / base


def percentile(values: Sequence[float], pct: float) -> float | None:
    """Nearest-rank percentile (no interpolation: p99 of 100 values is the 99th)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, int(-(-pct * len(ordered) // 100)))
    return ordered[min(rank, len(ordered)) - 1]


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def workdir(keep: bool) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="dn-bench-"))
    try:
        yield path
    finally:
        if keep:
            say(f"kept {path}")
        else:
            shutil.rmtree(path, ignore_errors=True)


# --- databases ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scratch:
    """One database a benchmark runs on, with the run's scratch folder and fake Dotdigital."""

    db: str
    url: str
    folder: Path
    fake: FakeDotdigital | None


def scratch_runs(
    args: argparse.Namespace, *, fake_latency: float | None = None
) -> Iterator[Scratch]:
    """Print the machine line, then give each database `--db` names, fresh and migrated, in turn.

    One scratch folder, and a fake Dotdigital answering after `fake_latency` seconds if one is
    asked for, serve the whole run. A PostgreSQL database is dropped as soon as the loop moves on;
    the folder, with the SQLite files in it, goes when the loop ends or raises.
    """
    print(f"machine: {machine_line()}")
    with contextlib.ExitStack() as stack:
        folder = stack.enter_context(workdir(args.keep))
        fake = None
        if fake_latency is not None:
            fake = stack.enter_context(fake_dotdigital(fake_latency))
        for db in databases(args):
            with scratch_database(db, args.postgres_url, folder) as url:
                yield Scratch(db, url, folder, fake)


@contextlib.contextmanager
def scratch_database(kind: str, postgres_url: str, folder: Path) -> Iterator[str]:
    """A migrated database with the default templates and a `shopify` source; removed after."""
    if kind == "sqlite":
        url = f"sqlite:///{folder / f'bench-{uuid.uuid4().hex[:6]}.sqlite3'}"
        prepare_schema(url, folder)
        yield url
        return
    name = f"dn_bench_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    admin = create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:
        admin.dispose()
        raise SystemExit(f"PostgreSQL not reachable at {postgres_url}: {exc}") from None
    url = postgres_url.rsplit("/", 1)[0] + f"/{name}"
    try:
        prepare_schema(url, folder)
        yield url
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def prepare_schema(url: str, folder: Path) -> None:
    migrate.upgrade(url)
    app = create_app(
        {
            "DATABASE_URL": url,
            "INSTANCE_PATH": str(folder / "instance"),
            "SECRET_KEY": "bench",
            "SHOPIFY_SECRET": SHOPIFY_SECRET,
            "LOG_LEVEL": "WARNING",
        }
    )
    with get_db(app).session() as session:
        message_templates.seed(session, TEMPLATES_DIR)
        session.commit()
    get_db(app).dispose()


def scalar(url: str, sql: str, **params: Any) -> Any:
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            return connection.execute(text(sql), params).scalar()
    finally:
        engine.dispose()


def counts_by(url: str, sql: str) -> dict[str, int]:
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            return {str(k): int(v) for k, v in connection.execute(text(sql)).all()}
    finally:
        engine.dispose()


# --- processes ---------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def service_env(url: str, folder: Path, **settings: Any) -> dict[str, str]:
    """The environment of a `dispatch-notifier` process on the scratch database."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISPATCH_")}
    env.update(
        DISPATCH_DATABASE_URL=url,
        DISPATCH_INSTANCE_PATH=str(folder / "instance"),
        DISPATCH_SECRET_KEY="bench-secret-key",
        DISPATCH_SHOPIFY_SECRET=SHOPIFY_SECRET,
        DISPATCH_SECURE_COOKIES="false",
    )
    env.update({f"DISPATCH_{k}": str(v) for k, v in settings.items() if v is not None})
    return env


def cli_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "dispatch_notifier", *args]


@dataclass
class Service:
    """A process group we started; `stop()` ends it (SIGTERM, then SIGKILL) by its own id."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    port: int | None = None
    # What it logged at WARNING or above, read when it was stopped (its folder may be gone by
    # the time the script reports).
    warnings: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self, timeout: float = 20.0) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(5)
        self.warnings = [line for line in self.log_lines() if _WARNING.search(line)]

    def cpu_seconds(self) -> float:
        """User + system CPU the process has used so far (all its threads); 0 once it has ended."""
        try:
            with open(f"/proc/{self.process.pid}/stat") as stat:
                _name, ticks = _name_and_cpu_ticks(stat.read())
        except (OSError, IndexError):
            return 0.0
        return ticks / os.sysconf("SC_CLK_TCK")

    def log_lines(self) -> list[str]:
        try:
            return self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return []

    def log_tail(self, lines: int = 20) -> str:
        return "\n".join(self.log_lines()[-lines:])


def start(
    name: str, command: list[str], env: dict[str, str], folder: Path, port: int | None = None
) -> Service:
    log_path = folder / f"{name}-{uuid.uuid4().hex[:4]}.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            command,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # its own process group, so stop() reaches its children
            cwd=PROJECT_DIR,
        )
    service = Service(name, process, log_path, port)
    _STARTED.append(service)
    return service


# Every service this script started, for `report_warnings`.
_STARTED: list[Service] = []
# Our log lines and gunicorn's ("[WARNING]") at WARNING or above.
_WARNING = re.compile(r"\b(WARNING|ERROR|CRITICAL)\b")


def report_warnings() -> int:
    """Say whether any service this script started logged a warning or an error, with the first
    few lines; returns how many lines it logged. A service that complained while it was
    measured was not measured working as it should."""
    stopped = [service for service in _STARTED if service.process.poll() is not None]
    lines = [f"{service.name}: {line}" for service in stopped for line in service.warnings]
    if not lines:
        print(f"\nNone of the {len(stopped)} services this script started logged a warning.")
        return 0
    print(f"\n**{len(lines)} lines at WARNING or above** in the logs of the services:\n")
    for line in lines[:5]:
        print(f"    {line}")
    return len(lines)


def wait_http(service: Service, path: str = "/healthz", timeout: float = 30.0) -> None:
    """Wait until the service answers 200 on `path` (bounded by `timeout`)."""
    import requests

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if service.process.poll() is not None:
            raise RuntimeError(f"{service.name} exited early:\n{service.log_tail()}")
        with contextlib.suppress(requests.RequestException):
            if requests.get(service.url + path, timeout=1).status_code == 200:
                return
        time.sleep(0.1)
    service.stop()
    raise RuntimeError(f"{service.name} did not answer {path} in {timeout:.0f}s")


def start_serve(
    url: str, folder: Path, workers: int = 2, with_worker: bool = False, **settings: Any
) -> Service:
    """`dispatch-notifier serve` on a free port, ready to answer."""
    port = free_port()
    command = cli_command("serve", "--port", str(port), "--workers", str(workers))
    if not with_worker:
        command.append("--no-worker")
    service = start("serve", command, service_env(url, folder, **settings), folder, port)
    wait_http(service)
    return service


def start_baseline(kind: str, url: str, folder: Path, workers: int = 2) -> Service:
    """A bare Flask app (`ok` or `store`) under the very same gunicorn settings as `serve`."""
    port = free_port()
    command = [
        sys.executable,
        str(BENCH_DIR / "baseline_app.py"),
        kind,
        "--database-url",
        url,
        "--port",
        str(port),
        "--workers",
        str(workers),
    ]
    service = start(f"baseline-{kind}", command, service_env(url, folder), folder, port)
    wait_http(service)
    return service


def fake_dotdigital(latency: float = 0.0) -> FakeDotdigital:
    """The local fake Dotdigital, expecting the credentials `dotdigital_settings` gives."""
    return FakeDotdigital(user=DOTDIGITAL_USER, password=DOTDIGITAL_PASSWORD, latency=latency)


def dotdigital_settings(fake_url: str) -> dict[str, str]:
    return {
        "SMS_BACKEND": "dotdigital",
        "DOTDIGITAL_API_URL": fake_url,
        "DOTDIGITAL_USER": DOTDIGITAL_USER,
        "DOTDIGITAL_PASSWORD": DOTDIGITAL_PASSWORD,
    }


def cpu_seconds_of(command: str) -> float | None:
    """User + system CPU used so far by every process whose name is `command` (e.g. the local
    PostgreSQL server's processes); None if there is none on this machine to read."""
    total, found = 0, False
    for stat_path in Path("/proc").glob("[0-9]*/stat"):
        try:
            name, ticks = _name_and_cpu_ticks(stat_path.read_text())
        except (OSError, IndexError):
            continue
        if name == command:
            total, found = total + ticks, True
    return total / os.sysconf("SC_CLK_TCK") if found else None


def _name_and_cpu_ticks(stat: str) -> tuple[str, int]:
    """A process's name and its user + system CPU in clock ticks, from /proc/<pid>/stat."""
    head, _, rest = stat.rpartition(")")
    fields = rest.split()
    return head.partition("(")[2], int(fields[11]) + int(fields[12])


def machine_cpu() -> tuple[float, float, float]:
    """(busy, stolen, total) CPU seconds of the whole machine so far, from /proc/stat. Stolen is
    time a virtual machine's CPUs had work but the hypervisor ran other guests instead: a slower
    machine for a while, through no fault of what runs on it."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    stolen = fields[7]
    total = sum(fields[:8])  # guest time is already counted in user
    tick = os.sysconf("SC_CLK_TCK")
    return (total - idle - stolen) / tick, stolen / tick, total / tick


def stolen_share(before: tuple[float, float, float], after: tuple[float, float, float]) -> float:
    """The share of the machine's CPU time stolen between two `machine_cpu()` readings."""
    total = after[2] - before[2]
    return (after[1] - before[1]) / total if total > 0 else 0.0


def pressure_stalls() -> tuple[float, float] | None:
    """Seconds so far in which some task waited for a CPU, and in which some task waited on the
    disk (Linux's pressure stall information); None where the kernel keeps none. Over a run
    they show whether its tail came with more work than CPUs, or with the disk stalling."""
    try:
        return _stall_seconds("cpu"), _stall_seconds("io")
    except (OSError, IndexError, ValueError):
        return None


def _stall_seconds(resource: str) -> float:
    some = Path(f"/proc/pressure/{resource}").read_text().split("\n", 1)[0]
    return int(some.rsplit("total=", 1)[1]) / 1e6


class DiskWaits:
    """Reads, every few milliseconds while open, the seconds in which some task waited on the disk,
    so that any stretch of the run can be asked afterwards how much of it the disk held up.

    Machine-wide, as the kernel counts it: a part of a request with disk waits near its own length
    waited on a flush, its own or another's; one with none waited for something else.
    """

    def __init__(self, interval: float = 0.005) -> None:
        self.interval = interval
        self.samples: list[tuple[float, float]] = []  # (epoch seconds, disk-wait seconds so far)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> DiskWaits:
        if pressure_stalls() is not None:
            self._sample()
            self._thread = threading.Thread(target=self._run, name="disk-waits", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._sample()  # so that everything up to here can be asked about

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def _sample(self) -> None:
        with contextlib.suppress(OSError, IndexError, ValueError):
            self.samples.append((time.time(), _stall_seconds("io")))

    def ms_between(self, start: float, end: float) -> float | None:
        """Milliseconds of disk waits between two epoch times; None outside what was sampled."""
        return waited_ms_between(self.samples, start, end)


def waited_ms_between(
    samples: Sequence[tuple[float, float]], start: float, end: float
) -> float | None:
    """The growth of a cumulative count of seconds between two times, in milliseconds, read off
    `samples` of (time, count) in time order, straight between the samples on either side."""
    if not samples or start > end or start < samples[0][0] or end > samples[-1][0]:
        return None
    return (_count_at(samples, end) - _count_at(samples, start)) * 1000


def _count_at(samples: Sequence[tuple[float, float]], at: float) -> float:
    after = bisect.bisect_left(samples, at, key=lambda sample: sample[0])
    if samples[after][0] == at or after == 0:
        return samples[after][1]
    (t0, c0), (t1, c1) = samples[after - 1], samples[after]
    return c0 + (c1 - c0) * (at - t0) / (t1 - t0)


def rss_of_tree(pid: int) -> int:
    """Resident memory of a process and all its descendants, in bytes."""
    return memory_of_tree(pid, pss=False)[0]


def memory_of_tree(pid: int, pss: bool = True) -> tuple[int, int]:
    """(RSS, PSS) of a process and its descendants, in bytes. RSS counts pages that forked
    processes share once per process; PSS divides each shared page among its sharers."""
    import psutil

    try:
        root = psutil.Process(pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0, 0
    rss = proportional = 0
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            if pss:
                info = process.memory_full_info()
                rss += info.rss
                proportional += info.pss
            else:
                rss += process.memory_info().rss
    return rss, proportional


_PAGE_PRESENT = 1 << 63
_PAGE_FRAME = (1 << 55) - 1  # bits 0-54 of a /proc/PID/pagemap entry: the physical frame


def resident_frames(pid: int) -> set[int] | None:
    """The physical page frames `pid` has resident (Linux `/proc/PID/pagemap`). None where they
    cannot be read: another system, or not root (the kernel then reports every frame as 0)."""
    page = os.sysconf("SC_PAGE_SIZE")
    frames: set[int] = set()
    try:
        with open(f"/proc/{pid}/maps") as maps:
            regions = [line.split() for line in maps]
        fd = os.open(f"/proc/{pid}/pagemap", os.O_RDONLY)
    except OSError:
        return None
    try:
        for fields in regions:
            if fields[1].startswith("---") or fields[-1] == "[vsyscall]":
                continue  # guard and reserved regions hold no pages
            start, end = (int(address, 16) for address in fields[0].split("-"))
            entries = array.array("Q")
            with contextlib.suppress(OSError):  # a region unmapped since /maps was read
                entries.frombytes(os.pread(fd, (end - start) // page * 8, start // page * 8))
            frames.update(entry & _PAGE_FRAME for entry in entries if entry & _PAGE_PRESENT)
    finally:
        os.close(fd)
    return None if frames and max(frames) == 0 else frames


def resident_of_tree(pid: int) -> int | None:
    """Resident memory of a process and its descendants with each physical page counted once,
    however many of them map it: what the tree holds in RAM. None where frames cannot be read."""
    import psutil

    try:
        root = psutil.Process(pid)
        pids = [root.pid, *(child.pid for child in root.children(recursive=True))]
    except psutil.NoSuchProcess:
        return None
    union: set[int] = set()
    for each in pids:
        frames = resident_frames(each)
        if frames is None:
            if psutil.pid_exists(each):
                return None
            continue  # it ended while we looked
        union |= frames
    return len(union) * os.sysconf("SC_PAGE_SIZE")


# --- signed Shopify deliveries -----------------------------------------------------------------


@dataclass(frozen=True)
class Delivery:
    webhook_id: str
    hmac: str
    body: bytes

    def headers(self) -> dict[str, str]:
        return {
            "Content-Type": "application/json",
            "X-Shopify-Topic": "fulfillments/create",
            "X-Shopify-Hmac-Sha256": self.hmac,
            "X-Shopify-Webhook-Id": self.webhook_id,
            "X-Shopify-Shop-Domain": "bench.myshopify.com",
        }


def phone_for(index: int) -> str:
    """A distinct valid UK mobile number per index (the +447400 range is mobile)."""
    return f"+447400{index % 1_000_000:06d}"


def fulfillment_body(index: int, run: str) -> bytes:
    """A distinct `fulfillments/create` body: its own fulfillment id, order and phone."""
    payload = {
        "id": 7_000_000_000_000 + index,
        "order_id": 8_000_000_000_000 + index,
        "name": f"#B{index}.1",
        "status": "success",
        "tracking_company": "Royal Mail",
        "tracking_number": f"RM{index:09d}GB",
        "tracking_numbers": [f"RM{index:09d}GB"],
        "tracking_url": f"https://track.example.com/RM{index:09d}GB",
        "tracking_urls": [f"https://track.example.com/RM{index:09d}GB"],
        "destination": {
            "first_name": "Alex",
            "last_name": "Example",
            "name": "Alex Example",
            "phone": phone_for(index),
            "country_code": "GB",
        },
        "line_items": [{"id": 1, "title": "Linen shirt", "quantity": 1}],
        "note": f"bench run {run}",
    }
    return json.dumps(payload).encode()


def sign(body: bytes, webhook_id: str) -> Delivery:
    digest = base64.b64encode(hmac_sha256(SHOPIFY_SECRET, body)).decode()
    return Delivery(webhook_id, digest, body)


def distinct_deliveries(count: int, start: int = 0) -> list[Delivery]:
    """`count` deliveries, every one distinct: own webhook id, own fulfillment id, own phone."""
    run = uuid.uuid4().hex[:8]
    return [sign(fulfillment_body(i, run), f"bench-{run}-{i}") for i in range(start, start + count)]


def write_requests(path: Path, deliveries: Sequence[Delivery]) -> Path:
    """One delivery per line, `webhook id <TAB> signature <TAB> body`, for the wrk Lua script."""
    with open(path, "wb") as fh:
        for d in deliveries:
            assert b"\t" not in d.body and b"\n" not in d.body
            fh.write(f"{d.webhook_id}\t{d.hmac}\t".encode() + d.body + b"\n")
    return path


# --- wrk ---------------------------------------------------------------------------------------


def have_wrk() -> bool:
    return shutil.which("wrk") is not None


@dataclass
class LoadResult:
    """What a load run measured; latencies in milliseconds."""

    generator: str
    requests: int
    seconds: float
    non_2xx: int
    errors: int
    p50: float | None
    p90: float | None
    p99: float | None
    max: float | None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


def run_wrk(
    service: Service,
    requests_file: Path,
    *,
    duration: float,
    threads: int = 2,
    connections: int = 16,
    path: str = "/webhooks/shopify",
    repeat: bool = True,
    until: Callable[[], bool] | None = None,
) -> LoadResult:
    """Closed-loop load with wrk; each thread cycles through its own slice of `requests_file`.

    With `repeat=False` each thread stops after its slice, so no delivery is posted twice.
    """
    if not have_wrk():
        raise SystemExit(WRK_INSTALL_HINT)
    command = [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, round(duration))}s",
        "--timeout",
        "10s",
        "-s",
        str(LUA_SCRIPT),
        service.url + path,
        "--",
        str(requests_file),
        str(threads),
        "repeat" if repeat else "once",
    ]
    # wrk runs for its whole -d even when every thread has stopped, so when the caller can see
    # the work is done (`until()`), we end it early with SIGINT, on which it prints its summary.
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + duration + 120
    while process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
        if until is not None and until():
            time.sleep(0.3)  # let the last answers arrive
            process.send_signal(signal.SIGINT)
            break
    try:
        stdout, stderr = process.communicate(timeout=max(5.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        process.kill()
        stdout, stderr = process.communicate()
    line = next((x for x in stdout.splitlines() if x.startswith("WRKJSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk failed ({process.returncode}):\n{stdout}\n{stderr}")
    data = json.loads(line[len("WRKJSON ") :])
    seconds = data["duration_us"] / 1e6
    return LoadResult(
        "wrk",
        requests=int(data["webhook_responses"]),
        seconds=seconds,
        non_2xx=int(data["webhook_non2xx"]),
        errors=int(data["connect"] + data["read"] + data["write"] + data["timeout"]),
        p50=data["p50_us"] / 1000,
        p90=data["p90_us"] / 1000,
        p99=data["p99_us"] / 1000,
        max=data["max_us"] / 1000,
        extra={"filler": int(data["filler"]), "raw": data},
    )


# --- a bounded open-loop generator in Python (bench/loadgen.py) ---------------------------------


def _raw_request(host: str, port: int, path: str, delivery: Delivery) -> bytes:
    head = [f"POST {path} HTTP/1.1", f"Host: {host}:{port}"]
    head += [f"{k}: {v}" for k, v in delivery.headers().items()]
    head.append(f"Content-Length: {len(delivery.body)}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + delivery.body


@contextlib.contextmanager
def _no_collector_pauses() -> Iterator[None]:
    """No cyclic garbage collection in this process while it generates load.

    A full collection here took 60-90 ms (this process holds every delivery of the run): while it
    ran, no request was sent and no answer read, and the requests it delayed counted as the
    server's latency. A run allocates a few MB at most; the collector runs again afterwards.
    """
    gc.collect()
    gc.freeze()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
        gc.unfreeze()


def python_load(
    service: Service,
    deliveries: Sequence[Delivery],
    *,
    rate: float | None,
    duration: float,
    connections: int = 32,
    path: str = "/webhooks/shopify",
) -> LoadResult:
    """Open loop at `rate` requests/s (latency counted from each request's scheduled time, so a
    slow server cannot hide queueing), or closed loop when `rate` is None. Bounded by `duration`
    and by the number of deliveries given."""
    host, port = "127.0.0.1", service.port or 0
    raws = [_raw_request(host, port, path, d) for d in deliveries]
    with _no_collector_pauses():
        results, errors, seconds = loadgen.run(
            (host, port), raws, rate=rate, duration=duration, connections=connections
        )
    latencies = [(done - scheduled) * 1000 for scheduled, _noticed, _sent, done, _s in results]
    # Late: the generator's own loop saw the request due only then. Queued: every connection was
    # still waiting for an answer, so the request waited for one (the server's doing, not ours).
    lates = [(noticed - scheduled) * 1000 for scheduled, noticed, _sent, _done, _s in results]
    queued = [(sent - noticed) * 1000 for _scheduled, noticed, sent, _done, _s in results]
    non_2xx = sum(1 for *_rest, status in results if not 200 <= status < 300)
    return LoadResult(
        "python-open-loop" if rate else "python-closed-loop",
        requests=len(results),
        seconds=seconds,
        non_2xx=non_2xx,
        errors=errors,
        p50=percentile(latencies, 50),
        p90=percentile(latencies, 90),
        p99=percentile(latencies, 99),
        max=max(latencies) if latencies else None,
        extra={
            "target_rate": rate,
            "latencies": latencies,  # to pool several runs' percentiles
            "lates": lates,
            "queued": queued,
        },
    )


def generator_name(use_wrk: bool) -> str:
    return "wrk" if use_wrk else "python-closed-loop"


# --- a backlog written straight into the outbox ------------------------------------------------


def insert_backlog(url: str, count: int, start: int = 0, batch: int = 1000) -> None:
    """`count` pending notifications for the `shopify` source, each to its own number."""
    from dispatch_notifier.models import Notification, utcnow
    from dispatch_notifier.outbox import pending_row
    from dispatch_notifier.samples import SAMPLE_EVENT

    engine = create_engine(url)
    now = utcnow()
    try:
        with engine.begin() as connection:
            source_id = connection.execute(
                text("SELECT id FROM sources WHERE name = 'shopify'")
            ).scalar_one()
            rows = []
            for i in range(start, start + count):
                event = SAMPLE_EVENT.with_changes(
                    order_id=f"9{i:012d}",
                    shipment_id=f"7{i:012d}",
                    order_number=f"B{i}",
                    phones=(phone_for(i),),
                )
                rows.append(pending_row(source_id, None, event, now))
                if len(rows) >= batch:
                    connection.execute(Notification.__table__.insert(), rows)
                    rows = []
            if rows:
                connection.execute(Notification.__table__.insert(), rows)
    finally:
        engine.dispose()


def deliveries_processed(url: str) -> Callable[[], bool | int]:
    """A counter of webhook deliveries the service has handled (stored ones plus duplicates)."""
    engine = create_engine(url)

    def count() -> int:
        with engine.connect() as connection:
            return int(
                connection.execute(
                    text("SELECT count(*) + coalesce(sum(duplicates), 0) FROM deliveries")
                ).scalar()
                or 0
            )

    return count


def wake_workers(url: str) -> None:
    """Wake idle workers now, as a webhook does: NOTIFY on PostgreSQL; on SQLite they see the
    commit that queued the rows by themselves."""
    from dispatch_notifier.wake_ups import NOTIFY

    if not url.startswith("postgresql"):
        return
    engine = create_engine(url)
    try:
        with engine.begin() as connection:
            connection.execute(text(NOTIFY))
    finally:
        engine.dispose()


def clear_outbox(url: str) -> None:
    engine = create_engine(url)
    try:
        with engine.begin() as connection:
            connection.execute(text("DELETE FROM attempts"))
            connection.execute(text("DELETE FROM notifications"))
            connection.execute(text("DELETE FROM deliveries"))
    finally:
        engine.dispose()


def feature_in_code(setting: str, exclude: tuple[str, ...] = ("config.py",)) -> bool:
    """Whether any module other than the settings table reads `setting` (merged or not yet)."""
    import dispatch_notifier

    package = Path(dispatch_notifier.__file__).parent
    return any(
        setting in p.read_text(errors="replace")
        for p in package.rglob("*.py")
        if p.name not in exclude
    )
