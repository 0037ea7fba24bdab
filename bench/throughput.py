"""Benchmark 3, send throughput: a backlog drained by `dispatch-notifier worker` processes.

The fake Dotdigital answers after 100 ms, so the limit is C × workers / 0.1 s; a plain client with
the same number of threads calling the fake directly is the baseline measured in the same run.
Every configuration runs once per round and the rounds are interleaved, so a machine whose speed
drifts moves all of them alike; the median round is reported, with each round beside it.
"""

from __future__ import annotations

import statistics
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common
import requests

from dispatch_notifier.testing.fake_dotdigital import FakeDotdigital

TARGET_VS_LIMIT = 0.85


def main() -> None:
    parser = common.base_parser(__doc__ or "", databases="postgresql")
    parser.add_argument("--backlog", type=int, default=1000, help="notifications per run")
    parser.add_argument("--latency", type=float, default=0.1, help="the fake's answer delay (s)")
    parser.add_argument(
        "--configs", default="8x1,8x2,32x1,32x2", help="CONCURRENCYxWORKERS, comma-separated"
    )
    parser.add_argument("--rounds", type=int, default=3, help="drains of each configuration")
    parser.add_argument("--rate-limit", default="20/second", help="DISPATCH_SMS_RATE_LIMIT check")
    parser.add_argument("--rate-limit-seconds", type=float, default=6.0)
    args = parser.parse_args()
    if args.smoke:
        args.backlog, args.configs, args.rate_limit_seconds, args.rounds = 40, "8x1", 2.0, 1
    configs = [tuple(int(x) for x in c.split("x")) for c in args.configs.split(",")]

    rows, limit_rows = [], []
    for run in common.scratch_runs(args, fake_latency=args.latency):
        db, url, folder, fake = run.db, run.url, run.folder, run.fake
        drains: dict[tuple[int, int], list[Drain]] = {c: [] for c in configs}
        for number in range(args.rounds):
            for concurrency, workers in configs:
                common.say(f"{db}: round {number + 1}/{args.rounds}")
                drains[(concurrency, workers)].append(
                    drain(db, url, folder, fake, concurrency, workers, args)
                )
        rows += [_row(db, c, w, drains[(c, w)], args) for c, w in configs]
        limit_rows.append(rate_limit_check(db, url, folder, fake, args))
    rounds = "1 round" if args.rounds == 1 else f"{args.rounds} interleaved rounds"
    common.print_table(
        f"Send throughput: backlog of {args.backlog}, fake latency {args.latency * 1000:.0f} ms,"
        f" {rounds}: medians",
        [
            "database",
            "C",
            "workers",
            "limit /s",
            "baseline /s (direct client)",
            "SMS/s",
            "× limit",
            "× limit each round",
            "× baseline",
            "CPU ms / SMS: workers",
            "PostgreSQL",
            "fake + bench",
            "machine CPU busy",
            "CPU stolen",
            "sent",
            "recorded `sent`",
            "worker warnings",
            "target ≥ 0.85 × limit",
        ],
        rows,
    )
    common.print_table(
        "Shared rate limit (DISPATCH_SMS_RATE_LIMIT), as seen at the fake",
        [
            "database",
            "setting",
            "sent",
            "bursts begun in a window's last tenth",
            "max per window",
            "allowed",
            "result",
        ],
        limit_rows,
    )


@dataclass
class Drain:
    """One drain of the backlog: its steady rate, the baseline taken just before it, and the CPU
    (seconds) each party used between 10 % and 90 % of the backlog."""

    rate: float | None
    baseline: float
    sent: int
    recorded: int  # rows the database holds as `sent` afterwards
    warnings: list[str]  # lines the workers logged at WARNING or above
    cpu: dict[str, float | None]  # workers, postgres, harness, machine busy, stolen and total
    sends: int  # SMS sent while `cpu` was measured


def _row(db: str, concurrency: int, workers: int, drains: list[Drain], args) -> list:  # type: ignore[no-untyped-def]
    limit = concurrency * workers / args.latency
    ranked = sorted(drains, key=lambda d: d.rate or 0.0)
    median = ranked[(len(ranked) - 1) // 2]  # the lower middle one for an even count
    each = " ".join(f"{(d.rate or 0.0) / limit:.2f}" for d in drains)
    # A fast drain counts only if every SMS went out once, was recorded, and nothing complained.
    exact = all(d.sent == d.recorded == args.backlog and not d.warnings for d in drains)
    ok = median.rate is not None and median.rate >= TARGET_VS_LIMIT * limit and exact
    return [
        db,
        concurrency,
        workers,
        limit,
        median.baseline,
        median.rate,
        common.ratio(median.rate, limit),
        each,
        statistics.median(common.ratio(d.rate, d.baseline) or 0.0 for d in drains),
        _per_send(median, "workers"),
        _per_send(median, "postgres"),
        _per_send(median, "harness"),
        _share(median, "busy"),
        _share(median, "stolen"),
        " ".join(f"{d.sent}" for d in drains) + f" of {args.backlog}",
        " ".join(f"{d.recorded}" for d in drains),
        " ".join(f"{len(d.warnings)}" for d in drains),
        common.verdict(ok),
    ]


def _per_send(run: Drain, party: str) -> float | None:
    seconds = run.cpu.get(party)
    return None if seconds is None or run.sends <= 0 else seconds * 1000 / run.sends


def _share(run: Drain, part: str) -> str:
    """The machine's CPU `part` ("busy": this machine's own work; "stolen": by the hypervisor)."""
    seconds, total = run.cpu.get(part), run.cpu.get("total")
    return "-" if seconds is None or not total else f"{seconds / total:.0%}"


def steady_rate(times: list[float]) -> float | None:
    """Sends per second between the 10th and 90th percentile send (start-up and tail excluded)."""
    times = sorted(times)
    if len(times) < 10:
        return (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 else None
    lo, hi = int(len(times) * 0.1), int(len(times) * 0.9)
    span = times[hi] - times[lo]
    return (hi - lo) / span if span > 0 else None


class CpuMeter:
    """CPU seconds used so far by the workers, the PostgreSQL server (when it runs on this
    machine), this process (the fake and the sampling) and the whole machine."""

    def __init__(self, procs: list) -> None:  # type: ignore[type-arg]
        self.procs = procs

    def read(self) -> dict[str, float | None]:
        busy, stolen, total = common.machine_cpu()
        return {
            "workers": sum(p.cpu_seconds() for p in self.procs),
            "postgres": common.cpu_seconds_of("postgres"),
            "harness": time.process_time(),
            "busy": busy,
            "stolen": stolen,
            "total": total,
        }


def _between(start: dict[str, float | None], end: dict[str, float | None]) -> dict:  # type: ignore[type-arg]
    return {
        key: None if start[key] is None or end[key] is None else end[key] - start[key]  # type: ignore[operator]
        for key in start
    }


def direct_baseline(fake: FakeDotdigital, threads: int, seconds: float) -> float:
    """Sends per second a plain threaded client gets from the fake: the reachable ceiling."""
    fake.reset()
    stop = time.monotonic() + seconds
    done = [0] * threads

    def client(slot: int) -> None:
        with requests.Session() as session:
            session.auth = (common.DOTDIGITAL_USER, common.DOTDIGITAL_PASSWORD)
            while time.monotonic() < stop:
                session.post(
                    f"{fake.url}/v2/sms-messages/send-to/447400999999",
                    json={"message": "baseline"},
                    timeout=10,
                )
                done[slot] += 1

    started = time.monotonic()
    pool = [threading.Thread(target=client, args=(i,)) for i in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    rate = sum(done) / (time.monotonic() - started)
    fake.reset()
    return rate


def start_workers(url: str, folder: Path, fake: FakeDotdigital, workers: int, **settings) -> list:  # type: ignore[no-untyped-def]
    env = common.service_env(url, folder, **common.dotdigital_settings(fake.url), **settings)
    return [
        common.start(f"worker{i}", common.cli_command("worker"), env, folder)
        for i in range(workers)
    ]


def drain(
    db: str, url: str, folder: Path, fake: FakeDotdigital, concurrency: int, workers: int, args
) -> Drain:  # type: ignore[no-untyped-def]
    limit = concurrency * workers / args.latency
    baseline = direct_baseline(fake, concurrency * workers, 1.0 if args.smoke else 3.0)
    common.clear_outbox(url)
    common.insert_backlog(url, args.backlog)
    fake.reset()
    common.say(f"{db}: C={concurrency} workers={workers}: draining {args.backlog}")
    procs = start_workers(url, folder, fake, workers, SEND_CONCURRENCY=concurrency)
    meter = CpuMeter(procs)
    # Bounded: at a tenth of the limit it would still finish; beyond that, report what was sent.
    deadline = time.monotonic() + 20 + args.backlog / (0.1 * limit)
    marks: list[tuple[int, dict[str, float | None]]] = []  # at 10 % and at 90 % of the backlog
    try:
        while time.monotonic() < deadline:
            sent_so_far = len(fake.sent)
            if sent_so_far >= args.backlog:
                break
            if any(p.process.poll() is not None for p in procs):
                raise RuntimeError("a worker exited:\n" + procs[0].log_tail())
            if len(marks) < 2 and sent_so_far >= args.backlog * (0.1 if not marks else 0.9):
                marks.append((sent_so_far, meter.read()))
            time.sleep(0.05)
    finally:
        for p in procs:
            p.stop()
    sent = fake.sent
    recorded = common.scalar(url, "SELECT count(*) FROM notifications WHERE status = 'sent'")
    warnings = [line for p in procs for line in p.warnings]
    for line in warnings[:3]:
        common.say(f"worker warning: {line}")
    if len(marks) == 2:
        cpu, sends = _between(marks[0][1], marks[1][1]), marks[1][0] - marks[0][0]
    else:
        cpu, sends = {}, 0
    return Drain(
        steady_rate([s.at for s in sent]), baseline, len(sent), recorded, warnings, cpu, sends
    )


def parse_limit(setting: str) -> tuple[int, float]:
    count, _, unit = setting.partition("/")
    seconds = {"second": 1.0, "minute": 60.0, "hour": 3600.0}.get(unit.strip().lower())
    if seconds is None:
        seconds = float(unit)
    return int(count), seconds


# Where in a window the late bursts of the rate-limit check begin (fractions of the window).
LATE_BURST_STARTS = (0.90, 0.92, 0.94, 0.96, 0.98)


def rate_limit_check(db: str, url: str, folder: Path, fake: FakeDotdigital, args) -> list:  # type: ignore[no-untyped-def]
    """Two workers with the limit set: a backlog drained for `--rate-limit-seconds`, then (for
    windows of a second or less) bursts woken in a window's last moments, where a slot taken
    late reaches the fake in the next window, the case a steady backlog rarely shows (its
    windows fill at their start). Every SMS the fake accepted is counted by calendar window."""
    if not common.feature_in_code("SMS_RATE_LIMIT"):
        return [db, args.rate_limit, "-", "-", "-", "-", common.NOT_AVAILABLE]
    count, window = parse_limit(args.rate_limit)
    backlog = int(count * (args.rate_limit_seconds / window + 2))
    bursts = LATE_BURST_STARTS if window <= 1.0 and not args.smoke else ()
    common.clear_outbox(url)
    common.insert_backlog(url, backlog, start=500_000)
    fake.reset()
    fake.latency = 0.0
    procs = start_workers(url, folder, fake, 2, SEND_CONCURRENCY=8, SMS_RATE_LIMIT=args.rate_limit)

    def died() -> list:  # type: ignore[type-arg]
        return [db, args.rate_limit, "-", "-", "-", "-", f"worker exited: {procs[0].log_tail(3)}"]

    try:
        expected = backlog
        if not wait_for_fake(fake, expected, args.rate_limit_seconds + 10, procs):
            return died()
        for number, fraction in enumerate(bursts):
            size = int(count * 2.5)
            # Sleep until `fraction` of the way into the next window, then queue and wake.
            time.sleep(window - time.time() % window + window * fraction)
            common.insert_backlog(url, size, start=600_000 + number * 1000)
            common.wake_workers(url)
            expected += size
            if not wait_for_fake(fake, expected, size / count * window + 10, procs):
                return died()
    finally:
        for p in procs:
            p.stop()
        fake.latency = args.latency
    windows: dict[int, int] = {}
    for sms in fake.sent:
        key = int(sms.at // window)
        windows[key] = windows.get(key, 0) + 1
    worst = max(windows.values(), default=0)
    ok = len(fake.sent) == expected and worst <= count + 1
    verdict = common.verdict(ok)
    return [db, args.rate_limit, len(fake.sent), len(bursts), worst, f"{count} + 1", verdict]


def wait_for_fake(fake: FakeDotdigital, total: int, seconds: float, procs: list) -> bool:  # type: ignore[type-arg]
    """Wait until the fake has accepted `total` SMS (or `seconds` pass); False if a worker died."""
    end = time.monotonic() + seconds
    while time.monotonic() < end and len(fake.sent) < total:
        if any(p.process.poll() is not None for p in procs):
            return False
        time.sleep(0.02)
    return True


if __name__ == "__main__":
    main()
    common.report_warnings()
