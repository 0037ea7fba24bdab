"""The delivery rules around a send: shared rate limit, 429 pause, quiet hours, suppression,
lease heartbeat, graceful stop and LISTEN/NOTIFY wake-ups."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import select, update

from dispatch_notifier import gate, outbox, quiet
from dispatch_notifier.db import get_db
from dispatch_notifier.models import Notification, SendGate, Source, utcnow
from dispatch_notifier.testing.fake_dotdigital import rate_limited
from dispatch_notifier.worker import Worker
from tests.conftest import fulfillment, post_shopify

DOTDIGITAL = {
    "SMS_BACKEND": "dotdigital",
    "DOTDIGITAL_USER": "apiuser-test@apiconnector.com",
    "DOTDIGITAL_PASSWORD": "test-password",
    "RETRY_BASE_SECONDS": 0.01,
}


def dd_app(app_factory, fake, **overrides):  # type: ignore[no-untyped-def]
    return app_factory(**DOTDIGITAL, DOTDIGITAL_API_URL=fake.url, **overrides)


def queue(app, n: int, start: int = 0) -> None:  # type: ignore[no-untyped-def]
    client = app.test_client()
    for i in range(start, start + n):
        phone = f"+4479111{i:05d}"
        response = post_shopify(client, fulfillment(7000 + i, 8000 + i, phone=phone))
        assert response.status_code == 200


def rows(app) -> list[Notification]:  # type: ignore[no-untyped-def]
    with get_db(app).session() as session:
        return list(session.scalars(select(Notification).order_by(Notification.id)))


def statuses(app) -> dict[str, int]:  # type: ignore[no-untyped-def]
    counts: dict[str, int] = {}
    for row in rows(app):
        counts[row.status] = counts.get(row.status, 0) + 1
    return counts


def wait_for_a_send_in_flight(app, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while "sending" not in statuses(app):
        assert time.monotonic() < deadline, "no send started"
        time.sleep(0.02)


# --- the rate limit setting ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "count", "seconds"),
    [
        ("35/minute", 35, 60),
        ("2/second", 2, 1),
        ("1000/hour", 1000, 3600),
        ("10/5minutes", 10, 300),
    ],
)
def test_rate_limits_are_read_in_plain_words(text, count, seconds):
    limit = gate.parse_rate_limit(text)
    assert limit is not None
    assert (limit.count, limit.window.total_seconds()) == (count, seconds)


@pytest.mark.parametrize("text", ["35", "35 per minute", "0/minute", "3/fortnight", "x/second"])
def test_an_unreadable_rate_limit_is_refused_with_the_expected_form(text):
    with pytest.raises(ValueError, match="35/minute"):
        gate.parse_rate_limit(text)


def test_no_rate_limit_is_the_default():
    assert gate.parse_rate_limit(None) is None
    assert gate.parse_rate_limit("") is None


# --- shared gate across workers ----------------------------------------------------------------


def test_the_rate_limit_holds_across_workers_with_their_own_connections(
    app_factory, fake_dotdigital
):
    apps = [dd_app(app_factory, fake_dotdigital, SMS_RATE_LIMIT="3/minute") for _ in range(2)]
    # Windows are aligned to the clock: keep the run inside one minute.
    if (second := utcnow().second) >= 55:
        time.sleep(60.5 - second)
    queue(apps[0], 8)
    workers = [Worker(app, name=f"w{i}") for i, app in enumerate(apps)]
    threads = [threading.Thread(target=w.run_until_idle) for w in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(fake_dotdigital.sent) == 3
    waiting = [r for r in rows(apps[0]) if r.status == "pending"]
    assert len(waiting) == 5
    # Held by the gate: not an attempt, handed back, and no worker claims until the window ends.
    assert all(r.attempts == 0 and r.lease_owner is None for r in waiting)
    with get_db(apps[1]).session() as session:
        opens = gate.wait_until(session, gate.parse_rate_limit("3/minute"))
    # Windows are aligned to the clock: this one ends on the next minute.
    assert opens is not None and 0 < (opens - utcnow()).total_seconds() <= 60
    assert (opens.second, opens.microsecond) == (0, 0)


def test_a_worker_held_by_a_full_window_sends_again_when_the_next_one_opens(
    app_factory, fake_dotdigital
):
    # A long poll interval: a worker that waited for it, rather than for the window, would send
    # the second SMS 5 s after the first instead of when the next window opens.
    app = dd_app(app_factory, fake_dotdigital, SMS_RATE_LIMIT="1/second", POLL_INTERVAL=5.0)
    queue(app, 2)
    worker = Worker(app)
    thread = threading.Thread(target=worker.run)
    thread.start()
    try:
        fake_dotdigital.wait_for_sent(2, timeout=10)
    finally:
        worker.stop()
        thread.join(15)
    first, second = (sms.at for sms in fake_dotdigital.sent)
    assert second - first < 2.0


@pytest.mark.parametrize(
    ("text", "now", "start"),
    [
        ("20/second", "2026-06-01T10:00:05.750", "2026-06-01T10:00:05"),
        ("35/minute", "2026-06-01T10:07:59.999", "2026-06-01T10:07:00"),
        ("10/5minutes", "2026-06-01T10:07:30", "2026-06-01T10:05:00"),
        ("1000/day", "2026-06-01T23:59:00", "2026-06-01T00:00:00"),
    ],
)
def test_rate_limit_windows_are_aligned_to_the_clock(text, now, start):
    limit = gate.parse_rate_limit(text)
    moment = datetime.fromisoformat(now).replace(tzinfo=UTC)
    assert gate.window_start(moment, limit.window) == datetime.fromisoformat(start).replace(
        tzinfo=UTC
    )


def test_a_window_hands_out_no_slot_in_its_last_moments(app):
    # The provider counts a request when it arrives, a commit and an HTTP call after its slot
    # was taken: a slot taken just before the window ends would land in the next one, which
    # may be full already.
    limit = gate.parse_rate_limit("20/second")
    second = datetime(2026, 6, 1, 10, 0, 5, tzinfo=UTC)
    db = get_db(app)
    with db.session() as session:
        assert gate.acquire(session, limit, now=second + timedelta(milliseconds=940)) is None
        session.commit()
    with db.session() as session:
        closing = second + timedelta(milliseconds=960)
        assert gate.acquire(session, limit, now=closing) == second + timedelta(seconds=1)
        session.rollback()
        # The worker loop waits for the next window instead of claiming rows to hand back.
        assert gate.wait_until(session, limit, now=closing) == second + timedelta(seconds=1)
        assert gate.wait_until(session, limit, now=second + timedelta(milliseconds=940)) is None
    with db.session() as session:
        assert gate.acquire(session, limit, now=second + timedelta(seconds=1)) is None
        session.commit()
    with db.session() as session:
        assert session.get(SendGate, gate.GATE_NAME).window_count == 1


@pytest.mark.parametrize(
    ("text", "milliseconds"),
    [("20/second", 50), ("2/second", 50), ("35/minute", 250), ("1000/day", 250)],
)
def test_a_windows_last_moments_are_a_twentieth_of_it_and_at_most_250_ms(text, milliseconds):
    limit = gate.parse_rate_limit(text)
    assert gate.closing_time(limit.window) == timedelta(milliseconds=milliseconds)


def test_a_429_pauses_every_worker_until_the_providers_reset_time(app_factory, fake_dotdigital):
    first, second = (dd_app(app_factory, fake_dotdigital) for _ in range(2))
    queue(first, 1)
    fake_dotdigital.script(rate_limited(reset_in=30))
    Worker(first, name="first").run_until_idle()
    [row] = rows(first)
    assert row.status == "retrying"
    queue(first, 3, start=1)
    with get_db(first).session() as session:
        session.execute(update(Notification).values(next_attempt_at=utcnow()))
        session.commit()
    Worker(second, name="second").run_until_idle()
    assert fake_dotdigital.sent == []  # the second worker never called the provider
    with get_db(second).session() as session:
        opens = gate.wait_until(session, None)
    assert opens is not None and 20 < (opens - utcnow()).total_seconds() <= 31
    assert {r.attempts for r in rows(first)} == {0, 1}  # waiting is not an attempt


# --- quiet hours -------------------------------------------------------------------------------


def test_quiet_hours_that_cross_midnight_end_the_next_morning():
    window = quiet.parse_quiet_hours("21:00-08:00")
    london = ZoneInfo("Europe/London")
    assert window.end_if_inside(datetime(2026, 6, 1, 22, 30, tzinfo=london)) == datetime(
        2026, 6, 2, 8, 0, tzinfo=london
    )
    assert window.end_if_inside(datetime(2026, 6, 2, 7, 59, tzinfo=london)) == datetime(
        2026, 6, 2, 8, 0, tzinfo=london
    )
    assert window.end_if_inside(datetime(2026, 6, 2, 8, 0, tzinfo=london)) is None
    assert window.end_if_inside(datetime(2026, 6, 2, 20, 59, tzinfo=london)) is None


def test_quiet_hours_follow_the_recipients_zone_not_the_servers():
    window = quiet.parse_quiet_hours("21:00-08:00")
    now = datetime(2026, 6, 1, 13, 30, tzinfo=UTC)  # 23:30 in Sydney, 14:30 in London
    assert quiet.hold_until(window, "+447911123456", None, now) is None
    until = quiet.hold_until(window, "+61412345678", "Australia/Sydney", now)
    assert until == datetime(2026, 6, 2, 8, 0, tzinfo=ZoneInfo("Australia/Sydney"))


@pytest.mark.parametrize("text", ["21-08", "25:00-08:00", "9pm-8am", "08:00-08:00"])
def test_unreadable_quiet_hours_are_refused(text):
    with pytest.raises(ValueError):
        quiet.parse_quiet_hours(text)


def test_a_dispatch_inside_quiet_hours_waits_for_the_window_to_end(app, runner):
    london_now = utcnow().astimezone(ZoneInfo("Europe/London"))
    start = (london_now - timedelta(hours=1)).strftime("%H:%M")
    end = (london_now + timedelta(hours=1)).strftime("%H:%M")
    result = runner.invoke(args=["sources", "quiet-hours", "shopify", f"{start}-{end}"])
    assert result.exit_code == 0, result.output
    queue(app, 1)
    Worker(app).run_until_idle()
    [row] = rows(app)
    assert row.status == "pending" and row.attempts == 0
    assert row.error_code == "quiet_hours"
    expected = (london_now + timedelta(hours=1)).replace(second=0, microsecond=0)
    assert abs((row.next_attempt_at - expected).total_seconds()) < 61


def test_unreadable_quiet_hours_send_and_are_logged_once(app, caplog):
    # Only a hand edit of the database can store such a window; the CLI refuses it.
    with get_db(app).session() as session:
        session.execute(update(Source).values(quiet_hours="9pm-8am"))
        session.commit()
    queue(app, 1)
    with caplog.at_level("WARNING", logger="dispatch_notifier.sender"):
        Worker(app).run_until_idle()
    assert statuses(app) == {"sent": 1}
    assert caplog.text.count("ignoring unreadable quiet hours") == 1


def test_quiet_hours_are_off_by_default(app):
    queue(app, 1)
    Worker(app).run_until_idle()
    assert statuses(app) == {"sent": 1}


def test_setting_quiet_hours_checks_the_window_and_the_zone(runner):
    bad = runner.invoke(args=["sources", "quiet-hours", "shopify", "9pm-8am"])
    assert bad.exit_code != 0 and "21:00-08:00" in bad.output
    bad_zone = runner.invoke(args=["sources", "quiet-hours", "shopify", "--timezone", "Mars/Base"])
    assert bad_zone.exit_code != 0 and "unknown time zone" in bad_zone.output
    off = runner.invoke(args=["sources", "quiet-hours", "shopify", "off"])
    assert off.exit_code == 0 and "quiet hours off" in off.output


# --- suppression -------------------------------------------------------------------------------


def test_a_suppressed_number_is_skipped_and_listed_masked(app, runner):
    added = runner.invoke(args=["suppress", "add", "07911 123456", "--reason", "asked to stop"])
    assert added.exit_code == 0 and "+44 •••• ••3456" in added.output
    listed = runner.invoke(args=["suppress", "list"])
    assert "+44 •••• ••3456" in listed.output and "7911123456" not in listed.output
    post_shopify(app.test_client(), fulfillment(phone="+447911123456"))
    Worker(app).run_until_idle()
    [row] = rows(app)
    assert (row.status, row.error) == ("skipped", "suppressed")


def test_removing_a_suppression_lets_the_number_be_texted_again(app, runner):
    runner.invoke(args=["suppress", "add", "+447911123456"])
    removed = runner.invoke(args=["suppress", "remove", "+447911123456"])
    assert removed.exit_code == 0
    again = runner.invoke(args=["suppress", "remove", "+447911123456"])
    assert again.exit_code != 0 and "not on the suppression list" in again.output
    post_shopify(app.test_client(), fulfillment(phone="+447911123456"))
    Worker(app).run_until_idle()
    assert statuses(app) == {"sent": 1}


def test_suppressing_something_that_is_not_a_mobile_number_is_refused(runner):
    result = runner.invoke(args=["suppress", "add", "12345"])
    assert result.exit_code != 0 and "invalid phone number" in result.output


# --- leases and stopping -----------------------------------------------------------------------


def test_a_slow_send_keeps_its_lease_and_is_not_declared_unknown(app_factory, fake_dotdigital):
    app = dd_app(app_factory, fake_dotdigital, LEASE_SECONDS=1.2, DOTDIGITAL_READ_TIMEOUT=6.0)
    # The send outlasts the lease several times over; only the heartbeat keeps it.
    fake_dotdigital.latency = 3.0
    queue(app, 1)
    worker = Worker(app)
    thread = threading.Thread(target=worker.run)
    thread.start()
    swept: list[int] = []
    try:
        deadline = time.monotonic() + 10
        while not fake_dotdigital.requests and time.monotonic() < deadline:
            with get_db(app).session() as session:
                swept += outbox.sweep_abandoned(session)
            time.sleep(0.1)
        fake_dotdigital.wait_for_sent(1, timeout=10)
        time.sleep(0.3)
    finally:
        worker.stop()
        thread.join(15)
    assert swept == []
    assert statuses(app) == {"sent": 1}


def test_stop_finishes_in_flight_sends_and_claims_nothing_new(app_factory, fake_dotdigital):
    app = dd_app(app_factory, fake_dotdigital, SEND_CONCURRENCY=2)
    fake_dotdigital.latency = 0.8
    queue(app, 6)
    worker = Worker(app)
    thread = threading.Thread(target=worker.run)
    thread.start()
    wait_for_a_send_in_flight(app)
    worker.stop()
    thread.join(15)
    assert not thread.is_alive()
    counts = statuses(app)
    assert counts.get("sent") == len(fake_dotdigital.sent) <= 2
    assert counts.get("pending") == 6 - counts["sent"]
    assert all(r.lease_owner is None for r in rows(app))


def test_stop_gives_up_waiting_after_the_stop_timeout(app_factory, fake_dotdigital):
    app = dd_app(app_factory, fake_dotdigital, STOP_TIMEOUT=0.5, DOTDIGITAL_READ_TIMEOUT=5.0)
    fake_dotdigital.latency = 3.0
    queue(app, 1)
    worker = Worker(app)
    result: list[bool] = []
    thread = threading.Thread(target=lambda: result.append(worker.run()))
    thread.start()
    wait_for_a_send_in_flight(app)
    stopped_at = time.monotonic()
    worker.stop()
    thread.join(10)
    assert result == [False]
    assert time.monotonic() - stopped_at < 2.0
    [row] = rows(app)
    assert row.status == "sending"  # left to the lease sweep, which will call it `unknown`


# --- wake-ups ----------------------------------------------------------------------------------


@pytest.mark.parametrize("db_backend", [pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_postgres_wakes_an_idle_worker_within_about_100_ms(app_factory, fake_dotdigital):
    # A long poll interval: only LISTEN/NOTIFY can make this fast.
    app = dd_app(app_factory, fake_dotdigital, POLL_INTERVAL=10.0)
    worker = Worker(app)
    thread = threading.Thread(target=worker.run)
    thread.start()
    client = app.test_client()
    latencies = []
    try:
        time.sleep(1.0)  # the listener connects
        for i in range(5):
            started = time.monotonic()
            post_shopify(client, fulfillment(9100 + i, 9200 + i, phone=f"+4479112{i:05d}"))
            fake_dotdigital.wait_for_sent(i + 1, timeout=5)
            latencies.append(time.monotonic() - started)
            time.sleep(0.2)
    finally:
        worker.stop()
        thread.join(15)
    latencies.sort()
    print(f"webhook -> SMS on an idle worker: median {latencies[2] * 1000:.0f} ms")
    assert latencies[2] < 0.5


def test_a_source_timezone_is_used_when_the_number_has_none(app):
    with get_db(app).session() as session:
        source = session.scalars(select(Source)).one()
        assert source.timezone is None
    zones = quiet.recipient_zones(None, "Asia/Tokyo")
    assert [z.key for z in zones] == ["Asia/Tokyo"]
    assert [z.key for z in quiet.recipient_zones(None, None)] == ["UTC"]


@pytest.mark.parametrize("db_backend", [pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_a_deliberate_resend_wakes_an_idle_postgres_worker(app_factory, fake_dotdigital):
    from dispatch_notifier.resend import resend_notification

    app = dd_app(app_factory, fake_dotdigital, POLL_INTERVAL=30.0)
    post_shopify(app.test_client(), fulfillment())
    Worker(app).run_until_idle()
    assert len(fake_dotdigital.sent) == 1
    worker = Worker(app)
    thread = threading.Thread(target=worker.run)
    thread.start()
    try:
        time.sleep(1.0)  # the listener connects; the worker then idles for 30 s
        with get_db(app).session() as session:
            [row] = session.scalars(select(Notification)).all()
            resend_notification(session, row.id, "test")
        fake_dotdigital.wait_for_sent(2, timeout=5)
    finally:
        worker.stop()
        thread.join(15)
    assert len(fake_dotdigital.sent) == 2


@pytest.mark.parametrize("db_backend", [pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_postgres_wakes_an_idle_worker_for_a_shipment_stored_while_wake_ups_are_held_back(
    app_factory, fake_dotdigital
):
    # The second webhook comes too soon after the first for a wake-up of its own; the worker,
    # idle again after the first SMS, must still hear of it long before its 30 s poll.
    app = dd_app(app_factory, fake_dotdigital, POLL_INTERVAL=30.0)
    get_db(app).wake_ups.interval = 1.0
    worker = Worker(app)
    thread = threading.Thread(target=worker.run)
    thread.start()
    client = app.test_client()
    try:
        time.sleep(1.0)  # the listener connects
        post_shopify(client, fulfillment(9501, 9601, phone="+447911200001"))
        fake_dotdigital.wait_for_sent(1, timeout=5)
        time.sleep(0.1)  # the worker finds nothing more and waits
        stored_at = time.monotonic()
        post_shopify(client, fulfillment(9502, 9602, phone="+447911200002"))
        fake_dotdigital.wait_for_sent(2, timeout=5)
        waited = time.monotonic() - stored_at
    finally:
        worker.stop()
        thread.join(15)
    assert waited < 3.0  # at most two 1 s intervals, not the 30 s poll


@pytest.mark.parametrize("db_backend", ["sqlite"])
def test_sqlite_wakes_an_idle_worker_when_another_process_commits(app_factory, fake_dotdigital):
    # A long poll interval: only the data_version watcher can make this fast.
    app = dd_app(app_factory, fake_dotdigital, POLL_INTERVAL=30.0)
    worker = Worker(app)
    thread = threading.Thread(target=worker.run)
    thread.start()
    try:
        time.sleep(0.5)
        for i in range(3):
            post_shopify(app.test_client(), fulfillment(9300 + i, 9400 + i))
            fake_dotdigital.wait_for_sent(i + 1, timeout=5)
    finally:
        worker.stop()
        thread.join(15)
    assert len(fake_dotdigital.sent) == 3


def test_a_worker_on_sqlite_does_not_import_psycopg(tmp_path):
    """psycopg is only for PostgreSQL (its LISTEN connection): ~10 MB a SQLite worker can skip."""
    import subprocess
    import sys

    from dispatch_notifier import migrate

    url = f"sqlite:///{tmp_path / 'w.sqlite3'}"
    migrate.upgrade(url)
    code = (
        "import sys\n"
        "from dispatch_notifier import create_app\n"
        "from dispatch_notifier.worker import Worker\n"
        f"app = create_app({{'DATABASE_URL': {url!r}, 'INSTANCE_PATH': {str(tmp_path)!r}}})\n"
        "worker = Worker(app)\n"
        "watcher = worker._start_listener()\n"
        "worker.run_until_idle()\n"
        "watcher.stop()\n"
        "print(type(watcher).__name__, 'psycopg' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["DataVersionWatcher", "False"]
