"""Benchmark 6, memory: resident memory of `serve` (master, web workers, sender worker) under load.

Posts distinct deliveries that the embedded worker sends to a local fake; samples the process tree's
RSS throughout. Baseline in the same run: the same tree idle right after start.

Forked processes share most of their pages, and RSS counts a shared page once in every process that
maps it; so beside the summed RSS the table shows the tree's resident pages with each physical page
counted once (what the tree holds in RAM, read from /proc/PID/pagemap: Linux, as root) and PSS.
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common

from dispatch_notifier.testing.fake_dotdigital import FakeDotdigital

TARGET_PEAK_MB = 150.0
GROWTH_TOLERANCE = 0.05  # allocator noise; more than 5% between checkpoints counts as growth
MB = 1024 * 1024


class Sampler:
    """Samples the RSS and PSS of a process tree every `interval` seconds, and its pages counted
    once every `resident_every` samples (reading every page table costs more), keeping the peaks."""

    def __init__(self, pid: int, interval: float = 0.25, resident_every: int = 4) -> None:
        self.pid = pid
        self.interval = interval
        self.resident_every = resident_every
        self.peak = 0
        self.peak_pss = 0
        self.peak_resident: int | None = None
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            rss, pss = common.memory_of_tree(self.pid)
            self.peak, self.peak_pss = max(self.peak, rss), max(self.peak_pss, pss)
            if self.samples % self.resident_every == 0:
                self.add_resident(common.resident_of_tree(self.pid))
            self.samples += 1

    def add_resident(self, resident: int | None) -> None:
        if resident is not None:
            self.peak_resident = max(self.peak_resident or 0, resident)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def main() -> None:
    parser = common.base_parser(__doc__ or "", databases="sqlite")
    parser.add_argument("--events", type=int, default=5000, help="deliveries in total")
    parser.add_argument(
        "--checkpoint",
        type=int,
        default=None,
        help="growth is measured from here to the end (default: events / 5)",
    )
    parser.add_argument("--drain-timeout", type=float, default=900.0)
    parser.add_argument("--workers", type=int, default=2, help="serve --workers (web processes)")
    args = parser.parse_args()
    if args.smoke:
        args.events = 100
    args.checkpoint = args.checkpoint or max(1, args.events // 5)
    if not common.have_wrk():
        common.say(f"{common.WRK_INSTALL_HINT}; using the Python closed-loop generator instead")

    rows, parts = [], []
    for scratch in common.scratch_runs(args, fake_latency=0.0):
        row, part = run(scratch.db, scratch.url, scratch.folder, scratch.fake, args)
        rows.append(row)
        parts += part
    common.print_table(
        f"Memory of `serve` (all its processes) over {args.events:,} events",
        [
            "database",
            "web workers",
            "idle RSS MB (baseline)",
            f"RSS after {args.checkpoint:,}",
            f"RSS after {args.events:,}",
            "growth MB",
            "peak RSS MB (summed)",
            "peak × idle",
            "peak PSS MB",
            "peak resident MB, each page once",
            "SMS sent",
            "target ≤ 150 MB, no growth: on summed RSS",
            "on each page once",
        ],
        rows,
    )
    common.print_table(
        "Memory by process at the end (USS: pages no other process maps)",
        ["database", "process", "RSS MB", "PSS MB", "USS MB"],
        parts,
    )


def role_of(proc, root) -> str:  # type: ignore[no-untyped-def]
    """The sender is forked from the master and names itself `dn-sender` (older builds ran it as
    `python -m dispatch_notifier worker`); the other children are gunicorn's web workers."""
    if proc.pid == root.pid:
        return "gunicorn master"
    cmd = " ".join(proc.cmdline()[2:5])
    if proc.name() == "dn-sender" or ("worker" in cmd and "serve" not in cmd):
        return "sender worker"
    return "web worker"


def post(service: common.Service, url: str, folder: Path, deliveries, name: str) -> None:  # type: ignore[no-untyped-def]
    if common.have_wrk():
        path = common.write_requests(folder / f"{name}.tsv", deliveries)
        processed = common.deliveries_processed(url)
        goal = processed() + len(deliveries)
        common.run_wrk(
            service,
            path,
            duration=3600,
            threads=2,
            connections=8,
            repeat=False,
            until=lambda: processed() >= goal,
        )
    else:
        common.python_load(service, deliveries, rate=None, duration=3600, connections=8)


def drained(fake: FakeDotdigital, count: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while len(fake.sent) < count and time.monotonic() < deadline:
        time.sleep(0.25)
    time.sleep(1.0)  # let the worker record the last outcomes


def run(db: str, url: str, folder: Path, fake: FakeDotdigital, args) -> tuple[list, list]:  # type: ignore[no-untyped-def]
    import psutil

    fake.reset()
    service = common.start_serve(
        url, folder, workers=args.workers, with_worker=True, **common.dotdigital_settings(fake.url)
    )
    try:
        time.sleep(2.0)  # the worker child imports and connects
        idle = common.rss_of_tree(service.process.pid)
        sampler = Sampler(service.process.pid)
        first = common.distinct_deliveries(args.checkpoint, start=700_000)
        common.say(f"{db}: {args.checkpoint:,} events")
        post(service, url, folder, first, f"first-{db}")
        drained(fake, args.checkpoint, args.drain_timeout)
        at_checkpoint = common.rss_of_tree(service.process.pid)
        rest = common.distinct_deliveries(
            args.events - args.checkpoint, start=700_000 + args.checkpoint
        )
        common.say(f"{db}: {len(rest):,} more events")
        post(service, url, folder, rest, f"rest-{db}")
        drained(fake, args.events, args.drain_timeout)
        at_end = common.rss_of_tree(service.process.pid)
        sampler.stop()
        sampler.add_resident(common.resident_of_tree(service.process.pid))
        root = psutil.Process(service.process.pid)
        parts = []
        for proc in [root, *root.children(recursive=True)]:
            info = proc.memory_full_info()
            role = f"{role_of(proc, root)} (pid {proc.pid})"
            parts.append([db, role, info.rss / MB, info.pss / MB, info.uss / MB])
    finally:
        service.stop()
    peak = max(sampler.peak, at_end, at_checkpoint)
    growth = at_end - at_checkpoint
    no_growth = growth <= GROWTH_TOLERANCE * at_checkpoint
    resident = sampler.peak_resident
    return [
        db,
        args.workers,
        idle / MB,
        at_checkpoint / MB,
        at_end / MB,
        growth / MB,
        peak / MB,
        common.ratio(peak, idle),
        sampler.peak_pss / MB,
        "n/a (needs Linux, root)" if resident is None else resident / MB,
        len(fake.sent),
        common.verdict(peak / MB <= TARGET_PEAK_MB and no_growth),
        common.verdict(None if resident is None else resident / MB <= TARGET_PEAK_MB and no_growth),
    ], parts


if __name__ == "__main__":
    main()
    common.report_warnings()
