"""The ingestion benchmark's reading of what held the machine (bench/common.py): the seconds in
which some task waited for a CPU, or on the disk, from Linux's pressure stall information."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import common  # bench/ is not a package: on the path above

pytestmark = pytest.mark.skipif(
    common.pressure_stalls() is None,
    reason="this kernel keeps no pressure stall information (/proc/pressure)",
)

SPIN = "import time\nend = time.monotonic() + 0.5\nwhile time.monotonic() < end:\n    pass\n"


def test_more_busy_processes_than_cpus_count_as_waiting_for_a_cpu() -> None:
    before = common.pressure_stalls()
    started = time.monotonic()
    spinners = [
        subprocess.Popen([sys.executable, "-c", SPIN]) for _ in range((os.cpu_count() or 1) + 2)
    ]
    for spinner in spinners:
        spinner.wait()
    elapsed = time.monotonic() - started
    after = common.pressure_stalls()

    assert before is not None and after is not None
    waited_for_cpu = after[0] - before[0]
    # Two spinners more than CPUs: for most of their half second one of them had none.
    assert 0.1 < waited_for_cpu <= elapsed + 0.05  # seconds, never more than the time passed
    assert after[1] >= before[1]


SAMPLES = [(10.0, 1.0), (10.1, 1.0), (10.2, 1.08), (10.3, 1.1)]


def test_disk_waits_between_two_times_are_read_straight_between_the_samples() -> None:
    assert common.waited_ms_between(SAMPLES, 10.0, 10.1) == pytest.approx(0.0)
    assert common.waited_ms_between(SAMPLES, 10.1, 10.2) == pytest.approx(80.0)
    # Half way into the stall and out again: half of each sample's growth.
    assert common.waited_ms_between(SAMPLES, 10.15, 10.25) == pytest.approx(40.0 + 10.0)
    assert common.waited_ms_between(SAMPLES, 10.0, 10.3) == pytest.approx(100.0)


def test_disk_waits_outside_what_was_sampled_are_unknown_not_zero() -> None:
    assert common.waited_ms_between(SAMPLES, 9.9, 10.2) is None
    assert common.waited_ms_between(SAMPLES, 10.1, 10.4) is None
    assert common.waited_ms_between(SAMPLES, 10.2, 10.1) is None
    assert common.waited_ms_between([], 10.0, 10.1) is None


def test_disk_waits_are_sampled_while_open_and_never_run_backwards() -> None:
    with common.DiskWaits(interval=0.001) as disk:
        started = time.time()
        time.sleep(0.05)
        ended = time.time()
    assert len(disk.samples) >= 10
    assert all(a[0] <= b[0] and a[1] <= b[1] for a, b in itertools.pairwise(disk.samples))
    waited = disk.ms_between(started, ended)
    assert waited is not None and 0.0 <= waited <= (ended - started) * 1000 + 1
