"""Benchmark 2, end-to-end latency: webhook received -> SMS accepted by a local fake Dotdigital.

One idle `serve` (web + embedded worker); deliveries posted one at a time with idle gaps between,
then in pairs: the second posted 0-30 ms after the first is answered (a shop fulfilling two
orders at once; it may come while the first's wake-up of the workers holds the next one back).
The baseline in the same run is the webhook's own answer time plus one direct call to the fake.
"""

from __future__ import annotations

import random
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common
import requests
from sqlalchemy import create_engine, func, select

from dispatch_notifier.models import Attempt, Notification
from dispatch_notifier.testing.fake_dotdigital import FakeDotdigital

TARGET_P50_MS, TARGET_P99_MS = 100.0, 300.0


def main() -> None:
    parser = common.base_parser(__doc__ or "")
    parser.add_argument("--samples", type=int, default=40, help="deliveries per database")
    parser.add_argument("--pairs", type=int, default=50, help="pairs per database, after those")
    parser.add_argument("--gap", type=float, default=0.4, help="mean idle seconds between posts")
    parser.add_argument(
        "--poll-interval", type=float, default=None, help="DISPATCH_POLL_INTERVAL (default: unset)"
    )
    parser.add_argument("--timeout", type=float, default=10.0, help="longest wait for one SMS")
    parser.add_argument(
        "--slow-ms", type=float, default=100.0, help="split the time of every SMS slower than this"
    )
    args = parser.parse_args()
    if args.smoke:
        args.samples, args.pairs, args.gap = 3, 2, 0.1

    rows, slow_rows = [], []
    for run in common.scratch_runs(args, fake_latency=0.0):
        measured = run_database(run.db, run.url, run.folder, run.fake, args)
        rows += [_row(run.db, posted, m) for posted, m in measured]
        slow_rows += where_the_time_went(run.db, run.url, measured)
    common.print_table(
        "End-to-end latency: POST received -> SMS accepted by the fake (idle serve; 1 at a time,"
        " then pairs 0-30 ms apart)",
        [
            "database",
            "posted",
            "samples",
            "ack p50 ms",
            "e2e p50 ms",
            "e2e p99 ms",
            "e2e max ms",
            "over 100 ms",
            "baseline p50 ms (ack + direct send)",
            "× baseline (p50)",
            "lost",
            "target p50 ≤ 100, p99 ≤ 300",
        ],
        rows,
    )
    print(f"worker wake-up on this build: {wake_up_mode()}")
    if slow_rows:
        common.print_table(
            f"The SMS over {args.slow_ms:.0f} ms: where the time went"
            " (the service's own attempt rows)",
            [
                "database",
                "posted",
                "e2e ms",
                "webhook answered after ms",
                "disk waits in it ms",
                "answer -> send began ms",
                "disk waits in it ms",
                "send began -> accepted ms",
                "disk waits in it ms",
            ],
            slow_rows,
        )
        print(
            "A commit waiting on the disk shows in the webhook's answer or before the send began;"
            " a wake-up the worker missed, before the send began (up to the poll interval)."
            " Disk waits: the milliseconds of each part in which some task on the machine waited"
            " on the disk (Linux's pressure stall information; - where it keeps none): near the"
            " part's own length, the disk held it up; none, something else did."
        )
    else:
        print(f"\nNo SMS took over {args.slow_ms:.0f} ms.")


def wake_up_mode() -> str:
    """Whether the worker listens for new work (issue 4) or only polls."""
    import dispatch_notifier

    package = Path(dispatch_notifier.__file__).parent
    listens = any(
        "LISTEN" in p.read_text() and "NOTIFY" in p.read_text()
        for p in package.rglob("*.py")
        if p.name not in ("outbox.py",)
    )
    return "LISTEN/NOTIFY present" if listens else "polling only (DISPATCH_POLL_INTERVAL)"


def run_database(  # type: ignore[no-untyped-def]
    db: str, url: str, folder: Path, fake: FakeDotdigital, args
) -> list[tuple[str, Measured]]:
    fake.reset()
    settings = common.dotdigital_settings(fake.url)
    if args.poll_interval is not None:
        settings["POLL_INTERVAL"] = str(args.poll_interval)
    service = common.start_serve(url, folder, workers=2, with_worker=True, **settings)
    rng = random.Random(6)
    deliveries = common.distinct_deliveries(3 + args.samples + 2 * args.pairs, start=400_000)
    http = requests.Session()
    disk = common.DiskWaits()
    try:
        # Warm-up: the first sends open connections and load templates.
        for d in deliveries[:3]:
            http.post(
                service.url + "/webhooks/shopify", data=d.body, headers=d.headers(), timeout=10
            )
        fake.wait_for_sent(3, timeout=args.timeout + 5)
        common.say(f"{db}: {args.samples} deliveries one at a time, {args.pairs} pairs")
        singles = list(enumerate(deliveries[3 : 3 + args.samples], start=3))
        paired = list(enumerate(deliveries[3 + args.samples :], start=3 + args.samples))
        with disk:
            measured = [
                ("1 at a time", measure(service, fake, http, singles, 1, rng, args)),
                ("pairs", measure(service, fake, http, paired, 2, rng, args)),
            ]
    finally:
        service.stop()
    for _posted, m in measured:
        m.disk = disk
    return measured


@dataclass
class Measured:
    acks: list[float] = field(default_factory=list)
    e2e: list[float] = field(default_factory=list)
    baseline: list[float] = field(default_factory=list)
    lost: int = 0
    # The SMS over --slow-ms: number, posted and accepted (epoch seconds), webhook answer ms.
    slow: list[tuple[str, float, float, float]] = field(default_factory=list)
    disk: common.DiskWaits | None = None  # what the disk held up while these ran


def measure(service, fake, http, deliveries, burst, rng, args) -> Measured:  # type: ignore[no-untyped-def]
    """Post `deliveries` `burst` at a time, 0-30 ms apart, with an idle gap before each group."""
    direct = requests.Session()
    direct.auth = (common.DOTDIGITAL_USER, common.DOTDIGITAL_PASSWORD)
    out = Measured()
    for first in range(0, len(deliveries), burst):
        time.sleep(rng.uniform(0.5, 1.5) * args.gap)  # the worker is idle when they arrive
        posted = []
        for index, d in deliveries[first : first + burst]:
            if posted:
                time.sleep(rng.uniform(0.0, 0.03))
            started = time.time()
            answer = http.post(
                service.url + "/webhooks/shopify", data=d.body, headers=d.headers(), timeout=10
            )
            ack = (time.time() - started) * 1000
            if answer.status_code != 200:
                out.lost += 1
                continue
            posted.append((common.phone_for(400_000 + index).lstrip("+"), started, ack))
        for number, started, ack in posted:
            sms = wait_for(fake, number, args.timeout)
            if sms is None:
                out.lost += 1
                continue
            out.acks.append(ack)
            out.e2e.append((sms - started) * 1000)
            if out.e2e[-1] > args.slow_ms:
                out.slow.append((number, started, sms, ack))
            # Baseline: the same webhook answer time plus one direct send to the fake, now.
            t = time.time()
            direct.post(
                f"{fake.url}/v2/sms-messages/send-to/447400999999",
                json={"message": "baseline"},
                timeout=10,
            )
            out.baseline.append(ack + (time.time() - t) * 1000)
    return out


def _row(db: str, posted: str, m: Measured) -> list:  # type: ignore[type-arg]
    p50 = common.percentile(m.e2e, 50)
    p99 = common.percentile(m.e2e, 99)
    ok = bool(m.e2e) and m.lost == 0 and p50 <= TARGET_P50_MS and p99 <= TARGET_P99_MS  # type: ignore[operator]
    base50 = common.percentile(m.baseline, 50)
    return [
        db,
        posted,
        len(m.e2e),
        common.percentile(m.acks, 50),
        p50,
        p99,
        max(m.e2e) if m.e2e else None,
        sum(1 for ms in m.e2e if ms > 100),
        base50,
        common.ratio(p50, base50),
        m.lost,
        common.verdict(ok),
    ]


def where_the_time_went(db: str, url: str, measured: list[tuple[str, Measured]]) -> list[list]:  # type: ignore[type-arg]
    """Each slow SMS split at the webhook's answer and at its attempt's start (the service's
    own clock, the same machine's as ours and the fake's)."""
    numbers = ["+" + number for _posted, m in measured for number, *_rest in m.slow]
    if not numbers:
        return []
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            began = dict(
                connection.execute(
                    select(Notification.phone, func.min(Attempt.started_at))
                    .join(Attempt, Attempt.notification_id == Notification.id)
                    .where(Notification.phone.in_(numbers))
                    .group_by(Notification.phone)
                ).all()
            )
    finally:
        engine.dispose()
    rows = []
    for posted, m in measured:
        for number, started, accepted, ack in m.slow:
            at = began.get("+" + number)
            answered = started + ack / 1000
            send_began = None if at is None else _epoch(at)
            rows.append(
                [
                    db,
                    posted,
                    (accepted - started) * 1000,
                    ack,
                    _disk_ms(m, started, answered),
                    None if send_began is None else (send_began - answered) * 1000,
                    None if send_began is None else _disk_ms(m, answered, send_began),
                    None if send_began is None else (accepted - send_began) * 1000,
                    None if send_began is None else _disk_ms(m, send_began, accepted),
                ]
            )
    return rows


def _disk_ms(m: Measured, start: float, end: float) -> float | None:
    if m.disk is None or not m.disk.samples:  # a kernel without pressure stall information
        return None
    # The service can begin the send before our client has read the answer: nothing between.
    return 0.0 if end <= start else m.disk.ms_between(start, end)


def _epoch(at: datetime) -> float:
    """SQLite hands back naive datetimes; the service writes UTC."""
    return (at if at.tzinfo else at.replace(tzinfo=UTC)).timestamp()


def wait_for(fake: FakeDotdigital, number: str, timeout: float) -> float | None:
    """When the fake accepted the SMS to `number` (its own clock), or None after `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = fake.sent_to(number)
        if found:
            return found[0].at
        time.sleep(0.002)
    return None


if __name__ == "__main__":
    main()
    common.report_warnings()
