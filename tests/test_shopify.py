"""Shopify receiver: signatures, topics, body limits and idempotency, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import create_engine, event, func, insert, select, text
from sqlalchemy.dialects import postgresql

from dispatch_notifier.db import get_db
from dispatch_notifier.events import DispatchEvent
from dispatch_notifier.models import Delivery, Notification
from dispatch_notifier.outbox import _pair_insert_sql, pending_row
from dispatch_notifier.platforms.shopify import parse_fulfilled_order, parse_fulfillment
from tests.conftest import (
    SHARED,
    fulfilled_order,
    fulfillment,
    listening,
    post_shopify,
    shopify_headers,
)


def count(app, model) -> int:  # type: ignore[no-untyped-def]
    with get_db(app).session() as session:
        return session.scalar(select(func.count()).select_from(model))


# --- signatures and malformed input --------------------------------------------------------


def test_missing_signature_is_401_with_a_json_error(client):
    response = client.post(
        "/webhooks/shopify", json=fulfillment(), headers={"X-Shopify-Topic": "fulfillments/create"}
    )
    assert response.status_code == 401
    assert response.json["error"] == "invalid_signature"


def test_wrong_signature_is_401_and_stores_nothing(app, client):
    body = json.dumps(fulfillment()).encode()
    headers = shopify_headers(body, secret="not-the-secret")
    response = client.post("/webhooks/shopify", data=body, headers=headers)
    assert response.status_code == 401
    assert count(app, Delivery) == 0


def test_signature_over_a_different_body_is_rejected(client):
    body = json.dumps(fulfillment()).encode()
    headers = shopify_headers(body)
    tampered = body.replace(b"Royal Mail", b"Evil Mail!")
    assert client.post("/webhooks/shopify", data=tampered, headers=headers).status_code == 401


@pytest.mark.parametrize("body", [b"not json", b"[1, 2]", b'"text"', b"\xff\xfe"])
def test_a_body_that_is_not_a_json_object_is_400(client, body):
    response = post_shopify(client, body)
    assert response.status_code == 400
    assert response.json["error"] == "malformed_payload"


def test_a_fulfillment_without_ids_is_400(client):
    response = post_shopify(client, {"tracking_number": "X"})
    assert response.status_code == 400


def test_a_body_over_the_limit_is_413(app_factory):
    app = app_factory(MAX_BODY_BYTES=2048)
    body = json.dumps(fulfillment(note="x" * 4000)).encode()
    response = app.test_client().post("/webhooks/shopify", data=body, headers=shopify_headers(body))
    assert response.status_code == 413
    assert response.json["error"] == "payload_too_large"


def test_an_unknown_source_is_404(client):
    response = post_shopify(client, fulfillment(), source="no-such-shop")
    assert response.status_code == 404
    assert response.json["error"] == "unknown_source"


# --- topics --------------------------------------------------------------------------------


def test_fulfillment_create_is_accepted_and_queued(app, client):
    response = post_shopify(client, fulfillment())
    assert response.status_code == 200
    assert response.json["status"] == "accepted"
    with get_db(app).session() as session:
        row = session.scalars(select(Notification)).one()
        assert (row.order_id, row.shipment_id, row.order_number) == ("5501", "4401", "1001")
        assert row.status == "pending"


def test_an_accepted_delivery_is_stored_with_every_value_it_came_with(app, client):
    body = json.dumps(fulfillment()).encode()
    before = datetime.now(UTC)
    response = client.post(
        "/webhooks/shopify", data=body, headers=shopify_headers(body, webhook_id="w-1")
    )
    assert response.json["status"] == "accepted"
    with get_db(app).session() as session:
        delivery = session.scalars(select(Delivery)).one()
        row = session.scalars(select(Notification)).one()
    assert response.json["notifications"] == [row.id]
    assert (delivery.delivery_id, delivery.topic, delivery.result) == (
        "w-1",
        "fulfillments/create",
        "accepted",
    )
    assert delivery.payload == body.decode() and delivery.duplicates == 0
    assert before <= delivery.received_at <= datetime.now(UTC)
    assert (row.delivery_id, row.source_id) == (delivery.id, delivery.source_id)
    assert (row.kind, row.status, row.attempts) == ("dispatched", "pending", 0)
    assert row.created_at == row.updated_at == row.next_attempt_at == delivery.received_at
    event = DispatchEvent.from_json(row.event_json)
    assert (event.order_id, event.shipment_id, event.phones) == ("5501", "4401", ("+447911123456",))


def test_the_postgresql_pair_insert_refuses_to_leave_out_a_column_default():
    # Run as the driver's own SQL, nothing would fill in a default the row builder forgot.
    with pytest.raises(ValueError, match="attempts"):
        _pair_insert_sql(
            postgresql.psycopg.dialect(), ("source_id", "received_at"), ("source_id", "event")
        )


def test_other_topics_are_acknowledged_and_recorded_as_ignored(app, client):
    response = post_shopify(client, {"id": 1, "order_id": 2}, topic="orders/create")
    assert response.status_code == 200
    assert response.json["status"] == "ignored"
    assert count(app, Notification) == 0
    with get_db(app).session() as session:
        delivery = session.scalars(select(Delivery)).one()
        assert (delivery.topic, delivery.result) == ("orders/create", "ignored")


def test_orders_fulfilled_queues_one_notification_per_fulfillment(app, client):
    response = post_shopify(
        client, fulfilled_order(fulfillment_ids=(1, 2)), topic="orders/fulfilled"
    )
    assert response.status_code == 200
    assert count(app, Notification) == 2


def test_the_three_topics_for_one_fulfillment_make_one_notification(app, client):
    post_shopify(client, fulfillment(4401, 5501), topic="fulfillments/create")
    post_shopify(
        client, fulfillment(4401, 5501, tracking_number="NEW"), topic="fulfillments/update"
    )
    response = post_shopify(client, fulfilled_order(5501, (4401,)), topic="orders/fulfilled")
    assert response.json["status"] == "duplicate"
    assert count(app, Notification) == 1
    with get_db(app).session() as session:
        results = session.scalars(select(Delivery.result).order_by(Delivery.id)).all()
    assert results == ["accepted", "duplicate", "duplicate"]


# --- idempotency ---------------------------------------------------------------------------


def test_a_repeated_webhook_id_is_a_duplicate_delivery(app, client):
    first = post_shopify(client, fulfillment(), webhook_id="abc-1")
    second = post_shopify(client, fulfillment(), webhook_id="abc-1")
    assert first.status_code == second.status_code == 200
    assert second.json["status"] == "duplicate"
    with get_db(app).session() as session:
        delivery = session.scalars(select(Delivery)).one()
        assert delivery.duplicates == 1
        assert delivery.last_duplicate_at is not None


def test_duplicate_delivery_sends_one_sms(app, client, capsys):
    from dispatch_notifier.worker import Worker

    for _ in range(3):
        post_shopify(client, fulfillment(), webhook_id="same")
    post_shopify(client, fulfillment())  # same shipment, new delivery id
    Worker(app).run_until_idle()
    assert capsys.readouterr().out.count("--- SMS") == 1


@pytest.mark.parametrize("same_delivery_id", [True, False])
def test_concurrent_identical_deliveries_make_one_notification(app, same_delivery_id):
    body = json.dumps(fulfillment(9001, 9002)).encode()

    def deliver(i: int) -> int:
        webhook_id = "race" if same_delivery_id else f"race-{i}"
        response = app.test_client().post(
            "/webhooks/shopify", data=body, headers=shopify_headers(body, webhook_id=webhook_id)
        )
        return response.status_code

    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(deliver, range(24)))
    assert statuses == [200] * 24
    assert count(app, Notification) == 1
    with get_db(app).session() as session:
        results = session.scalars(select(Delivery.result)).all()
        duplicates = session.scalars(select(Delivery.duplicates)).all()
    if same_delivery_id:
        assert results == ["accepted"] and duplicates == [23]
    else:
        assert sorted(results) == ["accepted"] + ["duplicate"] * 23


@pytest.mark.parametrize("db_backend", [pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_a_delivery_waiting_on_a_row_lock_does_not_hold_up_the_next_one(app, database_url):
    # PostgreSQL takes concurrent writers: each delivery has its own transaction, so one that
    # waits (here on a unique key another session holds, uncommitted) delays nobody else.
    body = json.dumps(fulfillment(7001, 7002)).encode()
    other = json.dumps(fulfillment(7003, 7004)).encode()
    engine = create_engine(database_url)
    blocker = engine.connect()  # its transaction begins with the INSERT and stays open
    try:
        source_id = blocker.execute(text("SELECT id FROM sources WHERE name = 'shopify'"))
        blocker.execute(
            text(
                "INSERT INTO deliveries (source_id, delivery_id, result, received_at, duplicates)"
                " VALUES (:s, 'held', 'accepted', now(), 0)"
            ),
            {"s": source_id.scalar_one()},
        )
        with ThreadPoolExecutor(2) as pool:
            waiting = _post_from(pool, app, body, "held")
            _wait_for_a_lock_wait(blocker)
            free = _post_from(pool, app, other, "free")
            try:
                assert free.result(timeout=10).json["status"] == "accepted"
                assert not waiting.done()
            finally:
                blocker.rollback()  # the held key goes away: the waiting delivery goes in
            assert waiting.result(timeout=10).json["status"] == "accepted"
    finally:
        blocker.close()
        engine.dispose()
    assert count(app, Notification) == 2


def _statements_of(app, post):  # type: ignore[no-untyped-def]
    """What `post()` made the app run on its database: (SQL, whether in autocommit)."""
    ran: list[tuple[str, bool]] = []

    def record(connection, _cursor, statement, *_args) -> None:  # type: ignore[no-untyped-def]
        ran.append((" ".join(statement.split()), connection.connection.dbapi_connection.autocommit))

    engine = get_db(app).engine
    event.listen(engine, "before_cursor_execute", record)
    try:
        response = post()
    finally:
        event.remove(engine, "before_cursor_execute", record)
    assert response.status_code == 200, response.json
    return response, ran


@pytest.mark.parametrize("db_backend", [pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_on_postgresql_a_one_dispatch_webhook_is_stored_by_one_autocommitted_statement(
    app, client, database_url
):
    # Autocommit spares BEGIN and COMMIT, two round trips of three. The same statement wakes the
    # workers: a NOTIFY of its own would be another round trip. The source's last event,
    # recorded at most once a second, is a statement of its own.
    with listening(database_url) as woken:
        response, ran = _statements_of(app, lambda: post_shopify(client, fulfillment(8101, 8102)))
        assert woken() == 1
    assert response.json["status"] == "accepted"
    writes = [(" ".join(sql.split()[:2]), ac) for sql, ac in ran if sql[:6] != "SELECT"]
    assert writes == [("WITH new_delivery", True), ("UPDATE sources", True)]
    assert count(app, Notification) == 1


@pytest.mark.parametrize("db_backend", [pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_on_postgresql_only_a_delivery_that_created_a_notification_wakes_the_workers(
    app, app_factory, client, database_url
):
    # Another process stored the first delivery; this one's wake-up is still due.
    post_shopify(app_factory().test_client(), fulfillment(8111, 8112), webhook_id="first")
    get_db(app).wake_ups.interval = 60.0
    with listening(database_url) as woken:
        post_shopify(client, fulfillment(8111, 8112), webhook_id="first")  # a repeated delivery
        post_shopify(client, fulfillment(8111, 8112, tracking_number="NEW"), webhook_id="update")
        # Neither woke anybody, nor used up the wake-up due: the next new shipment takes it.
        post_shopify(client, fulfillment(8121, 8122), webhook_id="second")
        assert woken() == 1
    assert count(app, Notification) == 2


@pytest.mark.parametrize("db_backend", [pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_on_postgresql_a_burst_wakes_the_workers_at_its_start_and_once_more_for_the_rest(
    app, client, database_url
):
    # PostgreSQL commits transactions that NOTIFY one at a time, so a process wakes the workers
    # at most once an interval; a worker with work in hand keeps claiming without being woken.
    # The rows stored after the first wake-up get one soon after the interval is over: an
    # idle worker would otherwise not see them before its next poll.
    get_db(app).wake_ups.interval = 0.5
    with listening(database_url) as woken:
        for i in range(3):
            post_shopify(client, fulfillment(8131 + i, 8141 + i), webhook_id=f"burst-{i}")
        assert woken(timeout=0.3) == 1
        assert woken(timeout=1.5) == 1  # about 1 s after the first: two intervals
        assert woken(timeout=1.0) == 0
    assert count(app, Notification) == 3


@pytest.mark.parametrize("db_backend", [pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_on_postgresql_a_lone_webhook_wakes_the_workers_once(app, client, database_url):
    get_db(app).wake_ups.interval = 0.2
    with listening(database_url) as woken:
        post_shopify(client, fulfillment(8151, 8152))
        assert woken(timeout=1.0) == 1
    assert count(app, Notification) == 1


@pytest.mark.parametrize("db_backend", [pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_on_postgresql_a_webhook_with_several_dispatches_is_stored_in_one_transaction(app, client):
    response, ran = _statements_of(
        app,
        lambda: post_shopify(client, fulfilled_order(5601, (4601, 4602)), topic="orders/fulfilled"),
    )
    assert len(response.json["notifications"]) == 2
    writes = [autocommit for sql, autocommit in ran if sql[:6] != "SELECT"]
    assert writes and not any(writes), ran
    assert count(app, Notification) == 2


@pytest.mark.parametrize("db_backend", [pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_on_postgresql_a_shipment_notified_before_is_labelled_by_the_insert_itself(app, client):
    # In autocommit a second statement to label the delivery would leave it mislabelled, had
    # the process died between the two.
    post_shopify(client, fulfillment(8201, 8202), topic="fulfillments/create")
    response, ran = _statements_of(
        app,
        lambda: post_shopify(
            client, fulfillment(8201, 8202, tracking_number="NEW"), topic="fulfillments/update"
        ),
    )
    assert response.json["status"] == "duplicate"
    assert not any(sql.startswith("UPDATE deliveries") for sql, _ in ran), ran
    with get_db(app).session() as session:
        results = session.scalars(select(Delivery.result).order_by(Delivery.id)).all()
    assert results == ["accepted", "duplicate"]
    assert count(app, Notification) == 1


@pytest.mark.parametrize("db_backend", [pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_a_shipment_notified_by_a_delivery_still_in_flight_is_labelled_a_duplicate(
    app, database_url
):
    # The insert cannot see the other delivery's notification before it commits: it waits on
    # the unique key, does nothing, and the delivery is labelled after it.
    body = json.dumps(fulfillment(8301, 8302)).encode()
    engine = create_engine(database_url)
    other = engine.connect()  # its transaction begins with the INSERT and stays open
    try:
        source_id = other.execute(text("SELECT id FROM sources WHERE name = 'shopify'"))
        shipment = parse_fulfillment(json.loads(body), order=None, shop_domain=None)
        other.execute(
            insert(Notification.__table__).values(
                pending_row(source_id.scalar_one(), None, shipment, datetime.now(UTC))
            )
        )
        with ThreadPoolExecutor(1) as pool:
            waiting = _post_from(pool, app, body, "in-flight")
            _wait_for_a_lock_wait(other)
            other.commit()
            response = waiting.result(timeout=10)
    finally:
        other.close()
        engine.dispose()
    assert response.json["status"] == "duplicate"
    with get_db(app).session() as session:
        delivery = session.scalars(select(Delivery)).one()
    assert (delivery.delivery_id, delivery.result) == ("in-flight", "duplicate")
    assert count(app, Notification) == 1


def _post_from(pool: ThreadPoolExecutor, app, body: bytes, webhook_id: str):  # type: ignore[no-untyped-def]
    """A signed delivery posted from one of `pool`'s threads; its future answer."""
    return pool.submit(
        app.test_client().post,
        "/webhooks/shopify",
        data=body,
        headers=shopify_headers(body, webhook_id=webhook_id),
    )


def _wait_for_a_lock_wait(connection) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + 10
    query = text(
        "SELECT count(*) FROM pg_stat_activity"
        " WHERE wait_event_type = 'Lock' AND datname = current_database()"
    )
    while connection.execute(query).scalar_one() == 0:
        assert time.monotonic() < deadline, "the first delivery never waited on the held key"
        time.sleep(0.02)


# --- parsing -------------------------------------------------------------------------------


def test_fulfillment_parsing_takes_destination_phone_and_tracking():
    event = parse_fulfillment(fulfillment(), order=None, shop_domain="x.myshopify.com")
    assert event.phones == ("+447911123456",)
    assert event.carrier == "Royal Mail"
    assert event.tracking_url == "https://track.example.com/RM123456785GB"
    assert event.order_number == "1001"
    assert event.country == "GB"


def test_order_phone_preference_is_shipping_then_order_then_customer_then_billing():
    order = fulfilled_order()
    order["phone"] = "+447911000001"
    order["customer"]["phone"] = "+447911000002"
    [event] = parse_fulfilled_order(order, shop_domain=None)
    assert event.phones == ("+447911123456", "+447911000001", "+447911000002", "+447911000000")


def test_cancelled_fulfillments_in_an_order_are_not_dispatches():
    order = fulfilled_order(fulfillment_ids=(1, 2))
    order["fulfillments"][0]["status"] = "cancelled"
    assert [e.shipment_id for e in parse_fulfilled_order(order, None)] == ["2"]


# --- the public samples (when ../shared is present) ----------------------------------------

SAMPLES = SHARED / "samples" / "shopify"


def _sample(name: str) -> dict:
    path = SAMPLES / name
    if not path.exists():
        pytest.skip(f"public sample {path} not present (it lives outside the repository)")
    data = json.loads(path.read_text())
    # REST fixtures come in an envelope ({"fulfillment": {...}}); webhooks send the inner object.
    return data.get("fulfillment") or data.get("order") or data


def test_published_fulfillments_create_sample_is_skipped_for_its_fake_phone(app, client):
    from dispatch_notifier.worker import Worker

    response = post_shopify(client, _sample("fulfillments-create.webhook-sample.json"))
    assert response.status_code == 200 and response.json["status"] == "accepted"
    Worker(app).run_until_idle()
    with get_db(app).session() as session:
        row = session.scalars(select(Notification)).one()
        # "555-555-SHIP" is not a usable number: skipped, with the reason.
        assert row.status == "skipped"
        assert row.error in ("invalid phone number", "not a mobile number")


def test_rest_fulfillment_fixture_is_accepted(client):
    response = post_shopify(client, _sample("fulfillment.rest-fixture.json"))
    assert response.status_code == 200
    assert response.json["status"] == "accepted"


def test_rest_order_fixture_as_orders_fulfilled(app, client):
    order = _sample("order.rest-fixture.json")
    # The fixture's only fulfillment has status "failure": nothing was shipped.
    response = post_shopify(client, order, topic="orders/fulfilled")
    assert response.json["status"] == "ignored"
    for f in order["fulfillments"]:
        f["status"] = "success"
    response = post_shopify(client, order, topic="orders/fulfilled")
    assert response.json["status"] == "accepted"
    assert count(app, Notification) == len(order["fulfillments"])
    with get_db(app).session() as session:
        row = session.scalars(select(Notification)).first()
        assert row.event["order_number"] == str(order["order_number"])


def test_fulfillment_event_fixture_is_ignored(client):
    response = post_shopify(
        client, _sample("fulfillment_event.rest-fixture.json"), topic="fulfillment_events/create"
    )
    assert response.json["status"] == "ignored"


def test_samples_folder_location_is_outside_the_repository():
    assert not Path(SHARED).resolve().is_relative_to(Path(__file__).resolve().parent.parent)
