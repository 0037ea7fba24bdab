"""Benchmark 1, webhook ingestion: distinct signed Shopify deliveries against `serve --no-worker`.

Baselines in the same run and under the same gunicorn settings: (a) bare Flask answering 200,
(b) bare Flask storing the raw body with one INSERT+commit; then p99 at half our maximum rate.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common

TARGET_VS_STORE = 0.7
TARGET_P99_MS = 25.0


def main() -> None:
    parser = common.base_parser(__doc__ or "")
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per closed-loop run")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument("--workers", type=int, default=2, help="web processes (each 4 threads)")
    parser.add_argument("--half-rate-duration", type=float, default=8.0)
    parser.add_argument(
        "--generator",
        choices=["auto", "wrk", "python"],
        default="auto",
        help="closed-loop generator: wrk (default when installed) or the Python one",
    )
    args = parser.parse_args()
    if args.smoke:
        args.duration, args.half_rate_duration = 1.0, 1.0
    use_wrk = args.generator == "wrk" or (args.generator == "auto" and common.have_wrk())
    if args.generator == "wrk" and not common.have_wrk():
        sys.exit(common.WRK_INSTALL_HINT)
    if not use_wrk:
        common.say(f"{common.WRK_INSTALL_HINT}; using the Python closed-loop generator instead")

    print(f"machine: {common.machine_line()}")
    rows, half_rows, checks = [], [], []
    with common.workdir(args.keep) as folder:
        for db in common.databases(args):
            with common.scratch_database(db, args.postgres_url, folder) as url:
                result = run_database(db, url, folder, args, use_wrk)
            rows.extend(result["rows"])
            half_rows.extend(result["half"])
            checks.append(result["check"])

    common.print_table(
        "Webhook ingestion, closed loop (maximum rate)",
        [
            "database",
            "server",
            "generator",
            "req/s",
            "× (a) bare",
            "× (b) store",
            "p50 ms",
            "p99 ms",
            "non-2xx",
            "target",
        ],
        rows,
    )
    common.print_table(
        "Acknowledgement latency at half our maximum rate (open loop, from scheduled send time)",
        [
            "database",
            "server",
            "rate req/s",
            "sent",
            "p50 ms",
            "p99 ms",
            "max ms",
            "generator lag p99 ms",
            "non-2xx",
            "target p99 ≤ 25 ms",
        ],
        half_rows,
    )
    common.print_table(
        "Every delivery distinct (server-side counts after the run)",
        [
            "database",
            "2xx answers (warm-up + runs)",
            "deliveries stored",
            "accepted",
            "duplicate",
            "notifications",
        ],
        checks,
    )
    print(
        "Stored can exceed answered by up to the connection count: requests still in flight when"
        " wrk stops its clock are stored, but their answers are not counted."
    )


def run_database(db: str, url: str, folder: Path, args, use_wrk: bool) -> dict:  # type: ignore[no-untyped-def]
    # Enough distinct deliveries that no closed-loop run can wrap around (a bound, not a guess:
    # wrk stops each thread at the end of its slice).
    per_run = 200 if args.smoke else int(12_000 * args.duration)
    closed = common.distinct_deliveries(per_run)
    closed_file = common.write_requests(folder / f"closed-{db}.tsv", closed)
    warm = common.distinct_deliveries(100 if not args.smoke else 20, start=10_000_000)
    results: dict[str, common.LoadResult] = {}
    for server in ("bare", "store", "app"):
        service = (
            common.start_serve(url, folder, workers=args.workers)
            if server == "app"
            else common.start_baseline(
                "ok" if server == "bare" else "store", url, folder, workers=args.workers
            )
        )
        try:
            common.say(f"{db}: {server}: warming up, then {args.duration:.0f}s closed loop")
            # Warm-up deliveries are distinct too (they are stored by the app and the baseline).
            common.python_load(service, warm, rate=None, duration=5, connections=4)
            if use_wrk:
                results[server] = common.run_wrk(
                    service,
                    closed_file,
                    duration=args.duration,
                    threads=args.threads,
                    connections=args.connections,
                    repeat=False,
                )
            else:
                results[server] = common.python_load(
                    service,
                    closed,
                    rate=None,
                    duration=args.duration,
                    connections=args.connections,
                )
            if server == "app":
                half_rows = half_rate(db, service, results, folder, args)
        finally:
            service.stop()
        if not args.smoke and results[server].requests >= len(closed) - args.connections:
            common.say(f"{db}: {server}: used every prepared delivery; raise the per-run count")

    bare, store, app = results["bare"], results["store"], results["app"]
    rows = []
    for name, label in (
        ("bare", "(a) bare Flask 200"),
        ("store", "(b) bare Flask INSERT+commit"),
        ("app", "dispatch-notifier serve"),
    ):
        r = results[name]
        ok = None
        if name == "app":
            ok = r.rate >= TARGET_VS_STORE * store.rate and r.non_2xx == 0 and r.errors == 0
        rows.append(
            [
                db,
                label,
                r.generator,
                r.rate,
                common.ratio(r.rate, bare.rate),
                common.ratio(r.rate, store.rate),
                r.p50,
                r.p99,
                r.non_2xx + r.errors,
                f"≥ 0.7 × (b): {common.verdict(ok)}" if name == "app" else "",
            ]
        )
    counts = common.counts_by(url, "SELECT result, count(*) FROM deliveries GROUP BY result")
    check = [
        db,
        len(warm) + app.requests - app.non_2xx + int(app.extra.get("half_ok", 0)),
        sum(counts.values()),
        counts.get("accepted", 0),
        counts.get("duplicate", 0),
        common.scalar(url, "SELECT count(*) FROM notifications"),
    ]
    return {"rows": rows, "half": half_rows, "check": check}


def half_rate(db: str, service: common.Service, results, folder: Path, args) -> list[list]:  # type: ignore[no-untyped-def]
    """Open-loop runs at half the app's maximum rate: against the app, and against a bare Flask
    app at the same rate to show the generator is not what limits the figure."""
    rate = max(1.0, results["app"].rate / 2)
    count = int(rate * args.half_rate_duration) + 10
    common.say(f"{db}: open loop at {rate:.0f} req/s for {args.half_rate_duration:.0f}s")
    app_run = common.python_load(
        service,
        common.distinct_deliveries(count, start=20_000_000),
        rate=rate,
        duration=args.half_rate_duration,
    )
    results["app"].extra["half_ok"] = app_run.requests - app_run.non_2xx
    bare = common.start_baseline("ok", "sqlite://", folder, workers=args.workers)
    try:
        bare_run = common.python_load(
            bare,
            common.distinct_deliveries(count, start=30_000_000),
            rate=rate,
            duration=args.half_rate_duration,
        )
    finally:
        bare.stop()
    rows = []
    for label, r in (
        ("dispatch-notifier serve", app_run),
        ("(a) bare Flask 200, same rate", bare_run),
    ):
        ok = (r.p99 or 0) <= TARGET_P99_MS and r.non_2xx == 0 and r.errors == 0
        rows.append(
            [
                db,
                label,
                rate,
                r.requests,
                r.p50,
                r.p99,
                r.max,
                r.extra["send_lag_p99"],
                r.non_2xx + r.errors,
                common.verdict(ok) if label.startswith("dispatch") else "",
            ]
        )
    return rows


if __name__ == "__main__":
    main()
