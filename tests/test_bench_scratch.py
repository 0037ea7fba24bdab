"""The benchmarks' scratch runs (bench/common.py): each database `--db` names, fresh and migrated,
and nothing of them left behind however the run ends."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import common  # bench/ is not a package: on the path above


def _args(db: str, postgres_url: str = common.DEFAULT_POSTGRES_URL) -> argparse.Namespace:
    return argparse.Namespace(db=db, postgres_url=postgres_url, keep=False)


def _shopify_sources(url: str) -> int:
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            return connection.execute(
                text("SELECT count(*) FROM sources WHERE name = 'shopify'")
            ).scalar_one()
    finally:
        engine.dispose()


def test_each_run_is_a_migrated_database_with_the_shopify_source(
    capsys: pytest.CaptureFixture[str],
) -> None:
    runs = []
    for run in common.scratch_runs(_args("sqlite"), fake_latency=0.0):
        assert _shopify_sources(run.url) == 1
        assert run.fake is not None and run.fake.url.startswith("http://127.0.0.1:")
        runs.append(run)
    assert [run.db for run in runs] == ["sqlite"]
    assert capsys.readouterr().out.startswith("machine: ")


def test_no_fake_is_started_unless_asked_for() -> None:
    for run in common.scratch_runs(_args("sqlite")):
        assert run.fake is None


def test_the_scratch_folder_goes_when_the_benchmark_raises() -> None:
    folders = []
    with pytest.raises(RuntimeError, match="benchmark failed"):
        for run in common.scratch_runs(_args("sqlite")):
            folders.append(run.folder)
            raise RuntimeError("benchmark failed")
    assert folders and not folders[0].exists()


def test_the_postgresql_database_is_dropped_when_the_benchmark_raises(
    postgres_server_url: str,
) -> None:
    names = []
    with pytest.raises(RuntimeError, match="benchmark failed"):
        for run in common.scratch_runs(_args("postgresql", postgres_server_url)):
            assert _shopify_sources(run.url) == 1
            names.append(run.url.rsplit("/", 1)[1])
            raise RuntimeError("benchmark failed")
    admin = create_engine(postgres_server_url)
    try:
        with admin.connect() as connection:
            left = connection.execute(
                text("SELECT count(*) FROM pg_database WHERE datname = :name"), {"name": names[0]}
            ).scalar_one()
    finally:
        admin.dispose()
    assert left == 0


def test_an_unknown_database_is_refused_by_name() -> None:
    with pytest.raises(SystemExit, match="unknown database mysql"):
        list(common.scratch_runs(_args("sqlite,mysql")))


def test_a_service_that_logged_a_warning_is_reported_after_it_stopped(tmp_path, capsys):
    lines = (
        "2026-11-27 17:00:00,000 INFO dispatch_notifier.worker: started",
        "2026-11-27 17:00:00,001 WARNING dispatch_notifier.sender: notification 1: lease lost",
        "[2026-11-27 17:00:00 +0000] [7] [ERROR] Worker (pid:8) was sent SIGKILL!",
    )
    script = "; ".join(f"print({line!r})" for line in lines)
    common._STARTED.clear()  # only this test's services
    quiet = common.start("quiet", [sys.executable, "-c", "print('all well')"], {}, tmp_path)
    loud = common.start("loud", [sys.executable, "-c", script], {}, tmp_path)
    for service in (quiet, loud):
        service.process.wait(10)
        service.stop()
    assert common.report_warnings() == 2
    out = capsys.readouterr().out
    assert "**2 lines at WARNING or above**" in out
    assert "loud: 2026-11-27 17:00:00,001 WARNING dispatch_notifier.sender" in out
    assert "loud: [2026-11-27 17:00:00 +0000] [7] [ERROR] Worker" in out
    common._STARTED.clear()
    assert common.report_warnings() == 0
    assert "None of the 0 services" in capsys.readouterr().out
