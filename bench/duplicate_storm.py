"""Benchmark 4, duplicate storm: every dispatch delivered 3 times at once; exactly one SMS each.

Copies 1 and 2 of a dispatch share a webhook id (a platform retry), copy 3 has its own (the same
shipment reported again). Baseline in the same run: the same server taking distinct deliveries.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common

from dispatch_notifier.testing.fake_dotdigital import FakeDotdigital

COPIES = 3


def main() -> None:
    parser = common.base_parser(__doc__ or "")
    parser.add_argument("--dispatches", type=int, default=2000)
    parser.add_argument("--connections-per-copy", type=int, default=4)
    parser.add_argument("--send-timeout", type=float, default=120.0, help="longest wait for SMS")
    args = parser.parse_args()
    if args.smoke:
        args.dispatches, args.send_timeout = 30, 30.0
    use_wrk = common.have_wrk()
    if not use_wrk:
        common.say(f"{common.WRK_INSTALL_HINT}; using the Python closed-loop generator instead")

    rows = [
        storm(run.db, run.url, run.folder, run.fake, args, use_wrk)
        for run in common.scratch_runs(args, fake_latency=0.0)
    ]
    common.print_table(
        f"Duplicate storm: {args.dispatches} dispatches × {COPIES} concurrent deliveries",
        [
            "database",
            "generator",
            "storm req/s",
            "baseline req/s (distinct)",
            "× baseline",
            "non-2xx",
            "accepted",
            "duplicate",
            "notifications",
            "SMS sent",
            "numbers texted",
            "exact (= dispatches)",
        ],
        rows,
    )


def post(
    service: common.Service,
    deliveries: list[common.Delivery],
    path: Path,
    threads: int,
    connections: int,
    use_wrk: bool,
    url: str,
) -> common.LoadResult:
    if use_wrk:
        common.write_requests(path, deliveries)
        processed = common.deliveries_processed(url)
        goal = processed() + len(deliveries)
        return common.run_wrk(
            service,
            path,
            duration=600,
            threads=threads,
            connections=connections,
            repeat=False,
            until=lambda: processed() >= goal,
        )
    return common.python_load(service, deliveries, rate=None, duration=600, connections=connections)


def storm(db: str, url: str, folder: Path, fake: FakeDotdigital, args, use_wrk: bool) -> list:  # type: ignore[no-untyped-def]
    fake.reset()
    service = common.start_serve(
        url, folder, workers=2, with_worker=True, **common.dotdigital_settings(fake.url)
    )
    connections = COPIES * args.connections_per_copy
    try:
        baseline_deliveries = common.distinct_deliveries(
            max(10, args.dispatches // 2), start=600_000
        )
        common.say(f"{db}: baseline, {len(baseline_deliveries)} distinct deliveries")
        base = post(
            service,
            baseline_deliveries,
            folder / f"base-{db}.tsv",
            COPIES,
            connections,
            use_wrk,
            url,
        )
        originals = common.distinct_deliveries(args.dispatches, start=500_000)
        # Line 3i+j is copy j of dispatch i: wrk thread j posts copy j, all threads in step.
        storm_deliveries = []
        for d in originals:
            storm_deliveries += [d, d, common.Delivery(f"{d.webhook_id}-again", d.hmac, d.body)]
        common.say(f"{db}: storm, {len(storm_deliveries)} deliveries")
        result = post(
            service, storm_deliveries, folder / f"storm-{db}.tsv", COPIES, connections, use_wrk, url
        )
        numbers = {common.phone_for(500_000 + i).lstrip("+") for i in range(args.dispatches)}
        wait_for_quiet(fake, numbers, args.send_timeout)
    finally:
        service.stop()
    texts = [s for s in fake.sent if s.number in numbers]
    counts = common.counts_by(url, "SELECT result, count(*) FROM deliveries GROUP BY result")
    storm_notifications = common.scalar(
        url,
        "SELECT count(*) FROM notifications WHERE shipment_id >= :lo AND shipment_id < :hi",
        lo=str(7_000_000_000_000 + 500_000),
        hi=str(7_000_000_000_000 + 500_000 + args.dispatches),
    )
    exact = len(texts) == args.dispatches and len({t.number for t in texts}) == args.dispatches
    return [
        db,
        result.generator,
        result.rate,
        base.rate,
        common.ratio(result.rate, base.rate),
        result.non_2xx + result.errors,
        counts.get("accepted", 0),
        counts.get("duplicate", 0),
        storm_notifications,
        len(texts),
        len({t.number for t in texts}),
        "yes" if exact else "NO",
    ]


def wait_for_quiet(fake: FakeDotdigital, numbers: set[str], timeout: float) -> None:
    """Until every number got its SMS (or `timeout`), then 2 s more to catch any extra one."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len({s.number for s in fake.sent if s.number in numbers}) >= len(numbers):
            break
        time.sleep(0.2)
    time.sleep(2.0)


if __name__ == "__main__":
    main()
    common.report_warnings()
