"""The ingestion benchmark's reading of what held the machine (bench/common.py): the seconds in
which some task waited for a CPU, or on the disk, from Linux's pressure stall information."""

from __future__ import annotations

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
