"""The memory benchmark's measures (bench/common.py): summed RSS, and the tree's resident pages
with each physical page counted once however many forked processes map it."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("psutil", reason="psutil is part of the test extra")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import common  # bench/ is not a package: on the path above

MB = 1024 * 1024
BUFFER_MB = 64

# A process that fills a buffer, then forks a child that keeps it without writing to it.
PARENT_AND_FORK = textwrap.dedent(f"""
    import os, sys, time
    buffer = bytearray(os.urandom({BUFFER_MB} * 1024 * 1024))
    if os.fork() == 0:
        time.sleep(60)
        os._exit(0)
    print("ready", flush=True)
    sys.stdin.read()
""")


@pytest.fixture
def forked_tree() -> Iterator[int]:
    process = subprocess.Popen(
        [sys.executable, "-c", PARENT_AND_FORK],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None and process.stdout.readline() == "ready\n"
        yield process.pid
    finally:
        import psutil

        for child in psutil.Process(process.pid).children(recursive=True):
            child.kill()
        process.kill()
        process.wait()


@pytest.mark.skipif(
    sys.platform != "linux" or os.geteuid() != 0,
    reason="physical page frames in /proc/PID/pagemap are readable only by root on Linux",
)
def test_pages_a_fork_shares_count_once_in_the_tree(forked_tree: int) -> None:
    summed_rss = common.rss_of_tree(forked_tree)
    resident = common.resident_of_tree(forked_tree)

    assert summed_rss >= 2 * BUFFER_MB * MB  # the buffer counted in both processes
    assert resident is not None
    assert BUFFER_MB * MB <= resident <= summed_rss - (BUFFER_MB - 8) * MB


def test_frames_of_a_process_that_is_gone_are_none() -> None:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    assert common.resident_frames(process.pid) is None
