"""BigCommerce receiver and enrichment: Standard Webhooks, body-hash dedupe, the v2 API (faked)."""

from __future__ import annotations

import base64
import json
import threading
import time
import uuid
from typing import Any

import pytest

from dispatch_notifier.db import get_db
from dispatch_notifier.models import Delivery, Notification
from dispatch_notifier.platforms import bigcommerce
from dispatch_notifier.worker import Worker
from tests.fake_bigcommerce import FakeBigCommerce, Scripted
from tests.platform_helpers import (
    add_source,
    body_of,
    count,
    notifications,
    public_sample,
    race,
    standard_webhook_headers,
)

CLIENT_SECRET = "bc-app-client-secret-1234"
STORE = "abc123"


@pytest.fixture
def fake_bc():  # type: ignore[no-untyped-def]
    with FakeBigCommerce(store_hash=STORE) as fake:
        fake.add_order(251, 12)
        yield fake


@pytest.fixture
def app(app_factory, fake_bc):  # type: ignore[no-untyped-def]
    app = app_factory(RETRY_BASE_SECONDS=0.01)
    add_source(
        app,
        "bc-shop",
        "bigcommerce",
        [CLIENT_SECRET],
        credentials={"store_hash": STORE, "access_token": fake_bc.token, "api_url": fake_bc.url},
    )
    return app


def shipment_created(
    shipment_id: int = 12, order_id: int = 251, hash_: str | None = None, store: str = STORE
) -> dict[str, Any]:
    return {
        "scope": "store/shipment/created",
        "store_id": "1025646",
        "data": {"type": "shipment", "id": shipment_id, "orderId": order_id},
        "hash": hash_ if hash_ is not None else uuid.uuid4().hex,
        "created_at": int(time.time()),
        "producer": f"stores/{store}",
    }


def post_bc(client, payload, secret=CLIENT_SECRET, msg_id=None):  # type: ignore[no-untyped-def]
    body = body_of(payload)
    # As in BigCommerce's docs: the library gets base64(client secret).
    key = base64.b64encode(secret.encode()).decode()
    headers = standard_webhook_headers(key, body, msg_id or f"msg_{uuid.uuid4().hex}")
    return client.post("/webhooks/bc-shop", data=body, headers=headers)


def run_until_settled(app, rounds: int = 200) -> Notification:  # type: ignore[no-untyped-def]
    worker = Worker(app)
    for _ in range(rounds):
        worker.run_until_idle()
        [row] = notifications(app)
        if row.status not in ("pending", "retrying"):
            return row
        time.sleep(0.02)
    return row


# --- signatures ----------------------------------------------------------------------------


def test_a_valid_shipment_created_is_accepted_and_waits_for_enrichment(app, client):
    response = post_bc(client, shipment_created())
    assert response.status_code == 200
    assert response.json["status"] == "accepted"
    [row] = notifications(app)
    assert (row.order_id, row.shipment_id) == ("251", "12")
    assert row.event["needs_enrichment"] is True


def test_a_tampered_body_is_401(app, client):
    body = body_of(shipment_created())
    key = base64.b64encode(CLIENT_SECRET.encode()).decode()
    headers = standard_webhook_headers(key, body, "msg_1")
    response = client.post(
        "/webhooks/bc-shop",
        data=body.replace(b'"orderId": 251', b'"orderId": 252'),
        headers=headers,
    )
    assert response.status_code == 401
    assert count(app, Delivery) == 0


def test_a_wrong_client_secret_is_401(client):
    assert post_bc(client, shipment_created(), secret="another-app").status_code == 401


def test_missing_signature_headers_are_401(client):
    response = client.post("/webhooks/bc-shop", json=shipment_created())
    assert response.status_code == 401
    assert response.json["message"] == (
        "missing webhook-id, webhook-timestamp, webhook-signature headers"
    )


# --- topics --------------------------------------------------------------------------------


def test_the_order_status_sample_is_acknowledged_and_ignored(app, client):
    response = post_bc(client, public_sample("bigcommerce", "store_order_statusUpdated.json"))
    assert response.status_code == 200
    assert response.json["status"] == "ignored"
    assert count(app, Notification) == 0


@pytest.mark.parametrize("scope", ["store/shipment/updated", "store/order/created", "store/app/x"])
def test_other_scopes_are_ignored(app, client, scope):
    payload = shipment_created()
    payload["scope"] = scope
    assert post_bc(client, payload).json["status"] == "ignored"


def test_a_shipment_without_ids_is_400(client):
    payload = shipment_created()
    payload["data"] = {"type": "shipment"}
    assert post_bc(client, payload).status_code == 400


def test_a_webhook_from_another_store_is_ignored_not_fetched(app, client, fake_bc):
    """One app secret signs for every store: another store's order must not be looked up here."""
    response = post_bc(client, shipment_created(store="otherstore"))
    assert response.json["status"] == "ignored"
    assert "otherstore" in response.json["reason"]
    assert count(app, Notification) == 0


# --- idempotency ---------------------------------------------------------------------------


def test_the_same_body_hash_is_a_duplicate_delivery(app, client):
    post_bc(client, shipment_created(hash_="h1"))
    second = post_bc(client, shipment_created(hash_="h1"))
    assert second.json["status"] == "duplicate"
    assert count(app, Delivery) == 1


def test_without_a_hash_the_webhook_id_is_the_delivery_key(app, client):
    payload = shipment_created()
    del payload["hash"]
    post_bc(client, payload, msg_id="msg_1")
    assert post_bc(client, payload, msg_id="msg_1").json["status"] == "duplicate"
    with get_db(app).session() as session:
        assert session.query(Delivery).one().delivery_id == "msg_1"


def test_the_same_shipment_twice_sends_one_sms(app, client, capsys):
    post_bc(client, shipment_created())
    assert post_bc(client, shipment_created()).json["status"] == "duplicate"
    Worker(app).run_until_idle()
    assert capsys.readouterr().out.count("--- SMS") == 1


@pytest.mark.parametrize("same_hash", [True, False])
def test_concurrent_identical_deliveries_make_one_notification(app, same_hash):
    def deliver(i: int) -> int:
        payload = shipment_created(99, 251, hash_="race" if same_hash else f"race-{i}")
        return post_bc(app.test_client(), payload).status_code

    assert race(deliver) == [200] * 24
    assert count(app, Notification) == 1


# --- enrichment through the (fake) API -----------------------------------------------------


def test_enrichment_fetches_shipment_order_and_products_and_renders(app, client, fake_bc, capsys):
    post_bc(client, shipment_created())
    Worker(app).run_until_idle()
    [row] = notifications(app)
    assert row.status == "sent"
    assert row.phone == "+447911123456"
    assert row.message == (
        "Your order 251 is on its way with Royal Mail. "
        "Track it: https://track.example.com/RM123456785GB"
    )
    assert row.message in capsys.readouterr().out
    assert fake_bc.paths() == [
        f"/stores/{STORE}/v2/orders/251/shipments/12",
        f"/stores/{STORE}/v2/orders/251",
        f"/stores/{STORE}/v2/orders/251/products",
    ]
    assert {r.token for r in fake_bc.requests} == {fake_bc.token}
    # The fetched details are kept with the notification.
    assert row.event["needs_enrichment"] is False
    assert row.event["items"] == [{"name": "Linen shirt", "quantity": 2}]
    assert row.event["customer_name"] == "Alex Example"


def test_the_public_shipment_sample_is_enriched_and_sent(app, client, fake_bc):
    response = post_bc(client, public_sample("bigcommerce", "store_shipment_created.json"))
    assert response.json["status"] == "accepted"
    Worker(app).run_until_idle()
    [row] = notifications(app)
    assert (row.order_number, row.status) == ("251", "sent")


def test_a_refused_token_fails_with_a_clear_reason(app, client, fake_bc):
    fake_bc.token = "rotated-elsewhere"
    post_bc(client, shipment_created())
    row = run_until_settled(app)
    assert row.status == "failed"
    assert "refused the API token (HTTP 401)" in row.error
    assert row.error_code == "enrichment"
    assert len(fake_bc.requests) == 1


def test_an_unknown_shipment_fails_with_a_clear_reason(app, client, fake_bc):
    post_bc(client, shipment_created(shipment_id=404404))
    row = run_until_settled(app)
    assert row.status == "failed"
    assert "shipment (order 251, shipment 404404): not found (HTTP 404)" in row.error


@pytest.mark.parametrize(
    "failure", [Scripted(status=503), Scripted(status=429), Scripted(drop=True)]
)
def test_transient_api_failures_are_retried_until_sent(app, client, fake_bc, failure):
    fake_bc.script(failure)
    post_bc(client, shipment_created())
    row = run_until_settled(app)
    assert row.status == "sent"
    assert row.attempts == 2  # the retried enrichment, then the send


def test_a_slow_api_is_a_retry_not_a_hang(app, client, fake_bc, monkeypatch, caplog):
    monkeypatch.setattr(bigcommerce, "TIMEOUT", (1.0, 0.2))
    fake_bc.script(Scripted(delay=0.6))
    post_bc(client, shipment_created())
    started = time.monotonic()
    row = run_until_settled(app)
    assert row.status == "sent"
    assert time.monotonic() - started < 5
    assert "retrying (BigCommerce shipment (order 251, shipment 12): ReadTimeout)" in caplog.text
    assert len(fake_bc.requests) == 4  # the timed-out shipment fetch, then all three again


def test_webhooks_are_stored_while_the_worker_waits_for_the_api(app, client, fake_bc, monkeypatch):
    """A fetch from the shop's API can take seconds: no database lock is held across it.

    On SQLite a transaction that has written (or, here, is about to) holds every other writer up,
    webhooks included.
    """
    monkeypatch.setattr(bigcommerce, "TIMEOUT", (3.0, 60.0))  # the fetch waits for `answered`
    fake_bc.add_order(252, 13)
    answered = threading.Event()
    fake_bc.script(Scripted(hold=answered))
    post_bc(client, shipment_created())
    worker = threading.Thread(target=Worker(app).run_until_idle)
    worker.start()
    try:
        deadline = time.monotonic() + 10
        while not fake_bc.requests and time.monotonic() < deadline:
            time.sleep(0.01)
        assert fake_bc.paths() == [f"/stores/{STORE}/v2/orders/251/shipments/12"]
        # The worker is inside that fetch, which the fake holds unanswered until told.
        statuses: list[int] = []
        webhook = threading.Thread(
            target=lambda: statuses.append(
                post_bc(app.test_client(), shipment_created(13, 252)).status_code
            )
        )
        webhook.start()
        webhook.join(30)
        assert statuses == [200]
        assert not answered.is_set() and worker.is_alive()
    finally:
        answered.set()
        worker.join(30)
    Worker(app).run_until_idle()
    rows = sorted(notifications(app), key=lambda row: row.order_id)
    assert [(row.order_id, row.status) for row in rows] == [("251", "sent"), ("252", "sent")]
    assert rows[0].event["customer_name"] == "Alex Example"


def test_a_missing_products_list_does_not_hold_the_sms(app, client, fake_bc):
    del fake_bc.products["251"]
    post_bc(client, shipment_created())
    Worker(app).run_until_idle()
    [row] = notifications(app)
    assert row.status == "sent"
    assert row.event["items"] == [{"name": "item", "quantity": 2}]


def test_a_source_without_api_credentials_fails_and_says_how_to_fix_it(app_factory):
    app = app_factory(BIGCOMMERCE_SECRET=CLIENT_SECRET)
    body = body_of(shipment_created())
    key = base64.b64encode(CLIENT_SECRET.encode()).decode()
    response = app.test_client().post(
        "/webhooks/bigcommerce", data=body, headers=standard_webhook_headers(key, body, "m1")
    )
    assert response.json["status"] == "accepted"
    Worker(app).run_until_idle()
    [row] = notifications(app)
    assert row.status == "failed"
    assert "sources update bigcommerce --credential store_hash=" in row.error


def test_tracking_falls_back_to_the_generated_link_and_provider():
    from dispatch_notifier.events import DispatchEvent

    event = DispatchEvent(order_id="1", shipment_id="2", order_number="1", needs_enrichment=True)
    shipment = {
        "tracking_number": "1Z999",
        "tracking_carrier": "",
        "shipping_provider": "ups",
        "tracking_link": "",
        "generated_tracking_link": "https://www.ups.com/track?tracknum=1Z999",
        "shipping_address": {"first_name": "", "phone": ""},
        "items": [],
    }
    order = {"id": 1, "billing_address": {"first_name": "Jo", "phone": "+14155552671"}}
    merged = bigcommerce.merge(event, shipment, order, [])
    assert (merged.carrier, merged.tracking_url) == (
        "UPS",
        "https://www.ups.com/track?tracknum=1Z999",
    )
    assert merged.phones == ("+14155552671",)
    assert merged.customer_name == "Jo"


def test_samples_are_read_from_the_shared_folder_unchanged():
    raw = public_sample("bigcommerce", "store_shipment_created.json")
    assert json.loads(raw)["producer"] == "stores/{store_hash}"
