"""The machine probe (bench/machine.py): it tells a disk that stalls on its own from a machine
that pauses as a whole, and counts the stalls it saw."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import machine  # bench/ is not a package: on the path above

from tests.test_bench_smoke import run_bench


def test_summary_counts_stalls_over_each_bound_and_per_minute() -> None:
    flushes = [0.1] * 995 + [25.0, 30.0, 150.0, 0.2, 0.3]
    row = machine.summary_row("flush", flushes, seconds=30)
    name, count, p50, _p99, p999, worst, over_20, over_100, per_minute = row
    assert (name, count, p50, worst) == ("flush", 1000, 0.1, 150.0)
    assert p999 == 30.0
    assert (over_20, over_100) == (3, 1)
    assert per_minute == 6.0


def test_summary_of_nothing_has_no_figures() -> None:
    name, count, *figures, over_20, over_100, per_minute = machine.summary_row("flush", [], 2)
    assert (name, count, figures) == ("flush", 0, [None] * 4)
    assert (over_20, over_100, per_minute) == (0, 0, 0.0)


def test_a_flush_far_slower_than_any_late_wake_up_is_the_disk_alone() -> None:
    said = machine.verdict([0.1, 25.0, 320.0, 0.2], worst_wake_ms=8.1)
    assert said.startswith("The disk stalled on its own: 2 flushes over 20 ms, the longest 320 ms")
    assert "8.1 ms late" in said
    assert machine.verdict([0.1, 58.0], worst_wake_ms=4.3).startswith(
        "The disk stalled on its own: 1 flush over 20 ms, the longest 58 ms"
    )


def test_a_wake_up_as_late_as_the_flush_is_the_whole_machine_pausing() -> None:
    assert machine.verdict([0.1, 120.0], worst_wake_ms=90.0).startswith("The whole machine paused")


def test_flushes_under_the_stall_bound_say_so() -> None:
    assert machine.verdict([0.1, 4.0], worst_wake_ms=30.0) == (
        "The disk never took over 20 ms to flush."
    )


def test_probe_flushes_and_sleeps_and_leaves_no_file(tmp_path: Path) -> None:
    flushes, lateness, stolen = machine.probe(tmp_path, seconds=0.3)
    assert flushes and lateness
    assert all(ms >= 0 for ms in flushes + lateness)
    assert 0.0 <= stolen <= 1.0
    assert list(tmp_path.iterdir()) == []


def test_machine_probe_runs_in_smoke_mode_and_prints_its_table() -> None:
    output = run_bench("machine.py")
    assert "### The idle machine for 2 s" in output
    assert re.search(r"\| `fdatasync` of 8 KB, back to back \| \d+ \|", output), output
    assert re.search(r"\| a thread sleeping 1 ms: how late it woke \| \d+ \|", output), output
    assert re.search(r"^The (disk|whole machine)", output, re.MULTILINE), output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--seconds", "0"], "--seconds: must be a number of seconds above 0, not '0'"),
        (["--seconds", "soon"], "--seconds: must be a number of seconds above 0, not 'soon'"),
        (["--dir", "/no/such/folder"], "--dir: '/no/such/folder' is not a folder"),
    ],
)
def test_bad_arguments_are_refused_by_name(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        machine._parser().parse_args(args)
    assert exited.value.code == 2
    assert message in capsys.readouterr().err
