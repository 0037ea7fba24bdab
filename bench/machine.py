"""The machine under the benchmarks: does its disk stall on its own, or the whole machine pause?

Not an issue measure. Run on the idle machine before the others, it tells whether a tail in their
tables came from the disk or the hypervisor rather than from what they measure.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import common

STALL_MS = (20.0, 100.0)
SLEEP_S = 0.001
BLOCK = b"\0" * 8192  # one PostgreSQL WAL page: about what a small commit flushes


def main() -> None:
    args = _parser().parse_args()
    seconds = 2.0 if args.smoke else args.seconds
    print(f"machine: {common.machine_line()}")
    common.say(f"fdatasync back to back, beside a thread sleeping 1 ms, for {seconds:g} s")

    flushes, lateness, stolen = probe(args.dir, seconds)

    rows = [
        summary_row("`fdatasync` of 8 KB, back to back", flushes, seconds),
        summary_row("a thread sleeping 1 ms: how late it woke", lateness, seconds),
    ]
    common.print_table(
        f"The idle machine for {seconds:g} s: the disk's flushes, and the machine's own pauses",
        [
            "measure",
            "count",
            "p50 ms",
            "p99 ms",
            "p99.9 ms",
            "max ms",
            *(f"over {int(ms)} ms" for ms in STALL_MS),
            f"over {int(STALL_MS[0])} ms a minute",
        ],
        rows,
    )
    worst_flush, worst_wake = max(flushes, default=0.0), max(lateness, default=0.0)
    print(
        f"Worst flush × worst late wake-up: {_times(worst_flush, worst_wake)}; "
        f"CPU stolen meanwhile: {stolen:.0%}."
    )
    print(verdict(flushes, worst_wake))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=_positive, default=60.0, help="how long to probe (60)")
    parser.add_argument(
        "--dir",
        type=_folder,
        default=tempfile.gettempdir(),
        help="a folder on the disk to probe (default: where the benchmarks' scratch folders go)",
    )
    parser.add_argument("--smoke", action="store_true", help="probe for 2 s")
    # run_all.sh passes its extra arguments to every script; these mean nothing here.
    parser.add_argument("--db", help=argparse.SUPPRESS)
    parser.add_argument("--postgres-url", help=argparse.SUPPRESS)
    parser.add_argument("--keep", action="store_true", help=argparse.SUPPRESS)
    return parser


def _positive(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        seconds = float("nan")
    if not seconds > 0:
        raise argparse.ArgumentTypeError(f"must be a number of seconds above 0, not {value!r}")
    return seconds


def _folder(value: str) -> Path:
    if not Path(value).is_dir():
        raise argparse.ArgumentTypeError(f"{value!r} is not a folder")
    return Path(value)


def probe(folder: Path, seconds: float) -> tuple[list[float], list[float], float]:
    """Flush durations and sleep lateness (ms) over `seconds`, and the share of CPU stolen.
    (No disk pressure share: the flushing loop itself waits on the disk all the time.)"""
    lateness: list[float] = []
    stop = threading.Event()
    sleeper = threading.Thread(target=_sleep_lateness, args=(stop, lateness), daemon=True)
    cpu_before = common.machine_cpu()
    sleeper.start()
    try:
        flushes = _flush_durations(folder, time.monotonic() + seconds)
    finally:
        stop.set()
        sleeper.join()
    return flushes, lateness, common.stolen_share(cpu_before, common.machine_cpu())


def _flush_durations(folder: Path, deadline: float) -> list[float]:
    durations: list[float] = []
    fd, path = tempfile.mkstemp(prefix="dn-bench-flush-", dir=folder)
    try:
        while time.monotonic() < deadline:
            os.pwrite(fd, BLOCK, 0)
            start = time.perf_counter()
            os.fdatasync(fd)
            durations.append((time.perf_counter() - start) * 1000)
    finally:
        os.close(fd)
        os.unlink(path)
    return durations


def _sleep_lateness(stop: threading.Event, lateness: list[float]) -> None:
    while not stop.is_set():
        start = time.perf_counter()
        time.sleep(SLEEP_S)
        lateness.append(max(0.0, (time.perf_counter() - start - SLEEP_S) * 1000))


def summary_row(name: str, values_ms: Sequence[float], seconds: float) -> list[object]:
    """One table row: the distribution of `values_ms` and how often it passed each stall bound."""
    over = [sum(1 for v in values_ms if v > bound) for bound in STALL_MS]
    return [
        name,
        len(values_ms),
        *(common.percentile(values_ms, p) for p in (50, 99, 99.9)),
        max(values_ms, default=None),
        *over,
        round(over[0] * 60 / seconds, 1) if seconds > 0 else None,
    ]


def verdict(flushes_ms: Sequence[float], worst_wake_ms: float) -> str:
    """What the flushes and the worst late wake-up say together, in one sentence."""
    stalls = [ms for ms in flushes_ms if ms > STALL_MS[0]]
    if not stalls:
        return f"The disk never took over {STALL_MS[0]:g} ms to flush."
    if worst_wake_ms * 2 >= max(stalls):
        return "The whole machine paused: a sleeping thread woke as late as the disk flushed."
    flushes = "1 flush" if len(stalls) == 1 else f"{len(stalls)} flushes"
    return (
        f"The disk stalled on its own: {flushes} over {STALL_MS[0]:g} ms, the "
        f"longest {max(stalls):.0f} ms, while a sleeping thread never woke more than "
        f"{worst_wake_ms:.1f} ms late. Every commit in flight waits through such a stall."
    )


def _times(value: float, base: float) -> str:
    return f"{value / base:.1f}" if base > 0 else "-"


if __name__ == "__main__":
    main()
