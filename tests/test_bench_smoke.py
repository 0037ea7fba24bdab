"""Smoke test of the benchmarks in bench/: each script runs in its tiny mode and prints its table.

Nothing here asserts a time or a rate: figures on a shared CI machine mean nothing.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
POSTGRES_URL = os.environ.get(
    "DISPATCH_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


def run_bench(script: str, *args: str) -> str:
    completed = subprocess.run(
        [sys.executable, str(BENCH / script), "--smoke", "--postgres-url", POSTGRES_URL, *args],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    return completed.stdout


# The ingestion verdict carries the unrounded median: 0.697 shows as 0.70 in the ratio column.
INGEST_VERDICT = r"≥ 0\.7 × \(b\): (met|MISSED) \(\d\.\d{3}\)"
# At half rate the storage baseline (b) runs at the app's rate too, and the app's p99 is set
# against it: the tail a commit alone gives on that machine.
INGEST_HALF_RATE_STORE = (
    r"\| sqlite \| \(b\) bare Flask INSERT\+commit \| [\d,.]+ \| \d+ "
    r"\| [\d.]+ \| [\d.]+ \| 1\.00 \|"
)
# Each half-rate round shows how much CPU the hypervisor took from the machine meanwhile, and
# how much of the time some task waited for a CPU and on the disk ("n/a" where Linux keeps no
# pressure stall information).
INGEST_HALF_RATE_STOLEN = (
    r"\| sqlite \| dispatch-notifier serve \| [\d,.]+ \| \d+ \| [\d.]+ \| [\d.]+ \| [\d.]+ "
    r"\| [\d. ]+ \| \d+( \d+)* \| (\d+( \d+)*|n/a) \| (\d+( \d+)*|n/a) \| [\d.]+ \|"
)
# The closed-loop rounds show the CPU stolen and the time some task waited on the disk: a miss of
# × (b) that came with the disk stalling says so.
INGEST_CLOSED_LOOP_STOLEN = (
    r"\| sqlite \| dispatch-notifier serve \| \w+ \| [\d,.]+ \| [\d.]+ \| [\d.]+ \| [\d. ]+ "
    r"\| \d+( \d+)* \| (\d+( \d+)*|n/a) \| [\d.]+ \|"
)
# Too small a backlog to meter the CPU in smoke mode: the column is there, with "-".
THROUGHPUT_STOLEN = (
    r"\| machine CPU busy \| CPU stolen \| sent \| recorded `sent` \| worker warnings \|"
)
# Every SMS of the smoke backlog reached the fake, was recorded `sent`, and no worker warned.
THROUGHPUT_EXACT = r"\| 40 of 40 \| 40 \| 0 \|"


# Each SMS over --slow-ms (here every one) has its time split at the webhook's answer and at the
# start of its attempt, as the service recorded it, each part with the disk waits in it: all seven
# figures, none missing (the disk's only where the kernel keeps pressure stall information).
def _kernel_counts_disk_waits() -> bool:
    try:
        return "total=" in Path("/proc/pressure/io").read_text()
    except OSError:
        return False


_DISK = r"[\d.]+" if _kernel_counts_disk_waits() else "-"
E2E_SLOW_SPLIT = (
    r"where the time went[^\n]*\n\n\| database \| posted \| e2e ms \|[^\n]*\n\|[-|]+\n"
    rf"\| sqlite \| 1 at a time \| [\d.]+ \| [\d.]+ \| {_DISK} \| -?[\d.]+ \| {_DISK} \| "
    rf"-?[\d.]+ \| {_DISK} \|\n"
)

# Webhooks are timed with nobody reading the log and while a client pages through it.
LOG_WEBHOOKS_WHILE_READING = (
    r"\| sqlite \| nobody \| \d+ \|[^\n]*\n\| sqlite \| one client paging \| \d+ \|"
)

# Memory is judged on the summed RSS and on the tree's pages counted once; only root on Linux can
# read the physical frames that the second needs.
CAN_READ_FRAMES = sys.platform == "linux" and os.geteuid() == 0
MEMORY_BOTH_VERDICTS = (
    r"\| sqlite \| 2 \| (?:[\d.]+ \| ){8}\d+ \| (met|MISSED) \| (met|MISSED) \|"
    if CAN_READ_FRAMES
    else r"\| n/a \(needs Linux, root\) \| \d+ \| (met|MISSED) \| n/a \|"
)


# Webhooks are timed idle, then while the sender drains: the second row is set against the first.
DRAINING = (
    r"\| sqlite \| idle \| \d+ \|[^\n]*\| 1\.00 \| 0 \| - \|\n"
    r"\| sqlite \| sender draining \| \d+ \|[^\n]*\| \d+ \| \d+ \|"
)


@pytest.mark.parametrize(
    ("script", "args", "table", "patterns"),
    [
        (
            "ingest.py",
            ["--db", "sqlite"],
            "Webhook ingestion",
            [
                INGEST_VERDICT,
                INGEST_HALF_RATE_STORE,
                INGEST_HALF_RATE_STOLEN,
                INGEST_CLOSED_LOOP_STOLEN,
            ],
        ),
        (
            "e2e_latency.py",
            ["--db", "sqlite", "--slow-ms", "0"],
            "End-to-end latency",
            [E2E_SLOW_SPLIT],
        ),
        (
            "throughput.py",
            ["--db", "sqlite"],
            "Send throughput",
            [THROUGHPUT_STOLEN, THROUGHPUT_EXACT],
        ),
        ("duplicate_storm.py", ["--db", "sqlite"], "Duplicate storm", None),
        ("log_scale.py", ["--db", "sqlite"], "Send log with", [LOG_WEBHOOKS_WHILE_READING]),
        ("memory.py", ["--db", "sqlite"], "Memory of `serve`", [MEMORY_BOTH_VERDICTS]),
        ("drain_latency.py", ["--db", "sqlite"], "Webhooks while the sender drains", [DRAINING]),
    ],
)
def test_benchmark_runs_in_smoke_mode_and_prints_its_table(
    script: str, args: list[str], table: str, patterns: list[str] | None
) -> None:
    if script == "memory.py":
        pytest.importorskip("psutil", reason="the bench extra is not installed")
    output = run_bench(script, *args)
    assert f"### {table}" in output
    assert "| database |" in output
    assert re.search(r"None of the \d+ services this script started logged a warning", output)
    for pattern in patterns or []:
        assert re.search(pattern, output), output


@pytest.mark.postgres
def test_throughput_smoke_on_postgresql_records_every_sms_without_a_warning(
    postgres_server_url: str,  # skips (fails under CI) when no PostgreSQL is reachable
) -> None:
    """The sender's PostgreSQL path differs from SQLite's (one statement per outcome)."""
    output = run_bench("throughput.py", "--db", "postgresql")
    assert re.search(r"\| postgresql \| 8 \| 1 \|[^\n]*" + THROUGHPUT_EXACT, output), output
    assert "None of the 3 services this script started logged a warning" in output, output


@pytest.mark.postgres
def test_ingest_smoke_on_postgresql_stores_every_delivery_without_a_warning(
    postgres_server_url: str,  # skips (fails under CI) when no PostgreSQL is reachable
) -> None:
    """The webhook's PostgreSQL path differs from SQLite's (one autocommitted statement), and
    so does (b)'s when asked to run in autocommit."""
    output = run_bench("ingest.py", "--db", "postgresql", "--store-autocommit")
    assert "(b) ran its INSERT in autocommit on PostgreSQL" in output, output
    assert re.search(INGEST_VERDICT, output), output
    # Every delivery stored was accepted and made its notification.
    assert re.search(r"\| postgresql \| \d+ \| (\d+) \| \1 \| 0 \| \1 \|", output), output
    assert "None of the 3 services this script started logged a warning" in output, output


@pytest.mark.postgres
def test_e2e_smoke_on_postgresql_splits_every_slow_sms(
    postgres_server_url: str,  # skips (fails under CI) when no PostgreSQL is reachable
) -> None:
    """PostgreSQL hands back the attempt's start with its time zone, SQLite without one."""
    output = run_bench("e2e_latency.py", "--db", "postgresql", "--slow-ms", "0")
    assert re.search(E2E_SLOW_SPLIT.replace("sqlite", "postgresql"), output), output
    assert "None of the 1 services this script started logged a warning" in output, output
