"""Webhooks while the sender drains: answer times of `serve` (web + embedded sender), idle and busy.

Webhooks are posted one at a time with short gaps, first while nothing else happens, then while
the embedded sender drains a backlog as fast as a fake Dotdigital that answers at once lets it
(the most writes per second it can make). The idle phase is the baseline in the same run. Not a
measure of issue 6: it guards the webhooks' share of the database against the sender's writes.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common
import requests

from dispatch_notifier.testing.fake_dotdigital import FakeDotdigital


def main() -> None:
    parser = common.base_parser(__doc__ or "")
    parser.add_argument("--backlog", type=int, default=20_000, help="notifications to drain")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each phase")
    parser.add_argument("--gap", type=float, default=0.02, help="seconds between two webhooks")
    parser.add_argument("--concurrency", type=int, default=8, help="DISPATCH_SEND_CONCURRENCY")
    parser.add_argument("--latency", type=float, default=0.0, help="the fake's answer delay (s)")
    args = parser.parse_args()
    if args.smoke:
        args.backlog, args.seconds = 300, 1.5

    rows = []
    for run in common.scratch_runs(args, fake_latency=args.latency):
        rows += run_database(run.db, run.url, run.folder, run.fake, args)
    common.print_table(
        f"Webhooks while the sender drains a backlog of {args.backlog} (one at a time, "
        f"{args.seconds:g} s each, sender concurrency {args.concurrency})",
        [
            "database",
            "phase",
            "webhooks",
            "p50 ms",
            "p99 ms",
            "max ms",
            "× idle (p99)",
            "non-2xx",
            "SMS/s meanwhile",
        ],
        rows,
    )


def run_database(db: str, url: str, folder: Path, fake: FakeDotdigital, args) -> list:  # type: ignore[no-untyped-def]
    service = common.start_serve(
        url,
        folder,
        with_worker=True,
        SEND_CONCURRENCY=args.concurrency,
        **common.dotdigital_settings(fake.url),
    )
    deliveries = iter(common.distinct_deliveries(int(2 * args.seconds / args.gap) + 10))
    try:
        with requests.Session() as session:
            idle = post_for(session, service, deliveries, args)
            fake.reset()
            common.insert_backlog(url, args.backlog, start=1_000_000)
            started, sent_before = time.monotonic(), len(fake.sent)
            busy = post_for(session, service, deliveries, args)
            rate = (len(fake.sent) - sent_before) / (time.monotonic() - started)
    finally:
        service.stop()
    idle_p99 = common.percentile(idle[0], 99)
    return [
        _row(db, "idle", idle, idle_p99, None),
        _row(db, "sender draining", busy, idle_p99, rate),
    ]


def post_for(session: requests.Session, service: common.Service, deliveries, args):  # type: ignore[no-untyped-def]
    """Post one webhook at a time for `args.seconds`; their times (ms) and the non-2xx count."""
    times: list[float] = []
    refused = 0
    end = time.monotonic() + args.seconds
    while time.monotonic() < end:
        delivery = next(deliveries)
        start = time.monotonic()
        response = session.post(
            f"{service.url}/webhooks/shopify",
            data=delivery.body,
            headers=delivery.headers(),
            timeout=30,
        )
        times.append((time.monotonic() - start) * 1000)
        refused += not 200 <= response.status_code < 300
        time.sleep(args.gap)
    return times, refused


def _row(db: str, phase: str, result, idle_p99: float | None, rate: float | None) -> list:  # type: ignore[no-untyped-def]
    times, refused = result
    p99 = common.percentile(times, 99)
    return [
        db,
        phase,
        len(times),
        common.percentile(times, 50),
        p99,
        max(times, default=None),
        common.ratio(p99, idle_p99),
        refused,
        "-" if rate is None else f"{rate:.0f}",
    ]


if __name__ == "__main__":
    main()
    common.report_warnings()
