"""On SQLite, reading never takes the write lock: every console page, the send log's CSV export,
the API and /readyz go on while a writer holds it, and webhooks while the log is being read or a
test SMS is on its way."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import select

from dispatch_notifier import migrate, outbox, users
from dispatch_notifier.db import get_db
from dispatch_notifier.models import Delivery, Source
from dispatch_notifier.sender import Sender
from dispatch_notifier.sms import backend_for
from dispatch_notifier.sms.dotdigital import DotdigitalClient
from dispatch_notifier.testing.fake_dotdigital import FakeDotdigital, slow
from tests.conftest import fulfillment, post_shopify
from tests.console_helpers import PASSWORD, add_notification, create_user, csrf_token, logged_in

TOKEN = "reader-test-token"


@pytest.fixture
def db_backend() -> str:
    return "sqlite"  # PostgreSQL readers never took a lock that writers wait on


@pytest.fixture
def app(app_factory: Any) -> Flask:
    return app_factory(API_TOKEN=TOKEN)


@contextmanager
def write_lock_held(app: Flask) -> Iterator[None]:
    """Another process's writer in the middle of its transaction, as far as SQLite can tell."""
    path = get_db(app).engine.url.database
    other = sqlite3.connect(path, isolation_level=None, timeout=0)
    try:
        other.execute("BEGIN IMMEDIATE")
        yield
    finally:
        other.execute("ROLLBACK")
        other.close()


def test_readyz_answers_ready_while_a_writer_holds_the_lock(app: Flask) -> None:
    with write_lock_held(app):
        response = app.test_client().get("/readyz")
    assert response.status_code == 200, response.json
    assert response.json["status"] == "ready"


def test_the_console_and_the_api_answer_while_a_writer_holds_the_lock(app: Flask) -> None:
    add_notification(app, order="1001")
    console, _token = logged_in(app)
    api = app.test_client()
    headers = {"Authorization": f"Bearer {TOKEN}"}
    with write_lock_held(app):
        dashboard = console.get("/admin/")
        page = console.get("/admin/log")
        listed = api.get("/api/v1/notifications", headers=headers)
        one = api.get(f"/api/v1/notifications/{listed.json['items'][0]['id']}", headers=headers)
        sources = api.get("/api/v1/sources", headers=headers)
    assert dashboard.status_code == 200
    assert page.status_code == 200 and "1001" in page.text
    assert [item["order"] for item in listed.json["items"]] == ["1001"]
    assert one.status_code == 200 and one.json["order"] == "1001"
    assert sources.status_code == 200


@pytest.mark.parametrize(
    "path",
    [
        "/admin/sources",
        "/admin/templates",
        "/admin/templates/dispatched/en",
        "/admin/templates/dispatched/de",  # a new language, started from the default text
        "/admin/templates/dispatched/en/versions/1",
        "/admin/log/{id}",
        "/admin/log/{id}/resend",
    ],
)
def test_every_console_page_answers_while_a_writer_holds_the_lock(app: Flask, path: str) -> None:
    notification_id = add_notification(app, order="1001", status="failed")
    console, _token = logged_in(app)
    with write_lock_held(app):
        page = console.get(path.format(id=notification_id))
    assert page.status_code == 200, page.text[:300]


@pytest.mark.parametrize(
    "args",
    [
        ["sources", "list"],
        ["templates", "list"],
        ["templates", "preview", "dispatched"],
        ["templates", "export", "--dir", "{tmp}"],
        ["suppress", "list"],
        ["users", "list"],
        ["log"],
    ],
)
def test_commands_that_only_read_run_while_a_writer_holds_the_lock(
    app: Flask, args: list[str], tmp_path: Any
) -> None:
    with write_lock_held(app):
        result = app.test_cli_runner().invoke(args=[a.format(tmp=tmp_path) for a in args])
    assert result.exit_code == 0, result.output


def test_the_sender_reads_a_claim_while_a_writer_holds_the_lock(app: Flask) -> None:
    for number in range(3):
        post_shopify(app.test_client(), fulfillment(fulfillment_id=9910 + number))
    db = get_db(app)
    with db.session() as session:
        ids = outbox.claim(session, "w1", 10, timedelta(seconds=60))
    sender = Sender(app, db, backend_for(app), "w1")
    with write_lock_held(app):
        rows = sender.load(ids)
    assert sorted(rows) == sorted(ids) and len(ids) == 3


def test_db_current_reads_while_a_writer_holds_the_lock(app: Flask) -> None:
    with write_lock_held(app):
        result = app.test_cli_runner().invoke(args=["db", "current"])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == migrate.head_revision()


def test_simulate_reads_its_source_while_a_writer_holds_the_lock(app: Flask) -> None:
    closed = "http://127.0.0.1:9"  # nothing listens: the post fails, after the read
    with write_lock_held(app):
        result = app.test_cli_runner().invoke(args=["simulate", "shopify", "--url", closed])
    assert result.exit_code != 0
    assert "could not reach" in result.output, result.output


def test_a_webhook_is_stored_while_a_test_sms_is_on_its_way(
    app_factory: Any, fake_dotdigital: FakeDotdigital, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = app_factory(
        SMS_BACKEND="dotdigital",
        DOTDIGITAL_API_URL=fake_dotdigital.url,
        DOTDIGITAL_USER=fake_dotdigital.user,
        DOTDIGITAL_PASSWORD=fake_dotdigital.password,
        DOTDIGITAL_READ_TIMEOUT=30.0,
    )
    fake_dotdigital.script(slow(5))  # Dotdigital takes its time to answer the test SMS
    sending = threading.Event()
    real_send = DotdigitalClient.send

    def noting_the_start(client: DotdigitalClient, e164: str, message: str) -> Any:
        sending.set()
        return real_send(client, e164, message)

    monkeypatch.setattr(DotdigitalClient, "send", noting_the_start)
    console, token = logged_in(app)
    tested: list[int] = []
    test_send = threading.Thread(
        target=lambda: tested.append(
            console.post(
                "/admin/templates/dispatched/en/test",
                data={"number": "07911 123456", "csrf_token": token},
            ).status_code
        )
    )
    test_send.start()
    try:
        assert sending.wait(10), "the test SMS was never sent"
        answer = post_shopify(app.test_client(), fulfillment(fulfillment_id=9902))
        # Answered while the test SMS still waits for Dotdigital, not after it.
        assert answer.status_code == 200 and test_send.is_alive()
    finally:
        test_send.join(30)
    assert tested == [302] and len(fake_dotdigital.sent) == 1


@pytest.mark.parametrize("password", [PASSWORD, "a wrong password"])
def test_a_webhook_is_stored_while_a_login_checks_its_password(
    app: Flask, monkeypatch: pytest.MonkeyPatch, password: str
) -> None:
    create_user(app)
    webhooks: list[int] = []
    real_check = users.check_password_hash

    def slow_check(password_hash: str, candidate: str) -> bool:
        # scrypt takes ~100 ms: a webhook arriving meanwhile must not wait for it.
        webhooks.append(post_shopify(app.test_client(), fulfillment(9903)).status_code)
        return real_check(password_hash, candidate)

    monkeypatch.setattr(users, "check_password_hash", slow_check)
    client = app.test_client()
    token = csrf_token(client)
    response = client.post(
        "/admin/login", data={"username": "owner", "password": password, "csrf_token": token}
    )
    assert webhooks == [200]
    assert response.status_code == (302 if password == PASSWORD else 401)


def test_a_post_to_an_unknown_source_answers_404_while_a_writer_holds_the_lock(app: Flask) -> None:
    # Anyone can post to any name: looking it up must not queue for (or take) the write lock.
    with write_lock_held(app):
        response = app.test_client().post("/webhooks/no-such-shop", data=b"{}")
    assert response.status_code == 404
    assert response.json["error"] == "unknown_source"


def test_a_webhook_is_stored_while_the_send_log_csv_is_streaming(app: Flask) -> None:
    for number in range(3):
        add_notification(app, order=str(1001 + number))
    console, _token = logged_in(app)
    export = console.get("/admin/log.csv", buffered=False)
    chunks = iter(export.response)
    # The header, then the first row: the export's transaction is open, the rest unread.
    first = next(chunks) + next(chunks)
    assert b"100" in first

    answers: list[int] = []
    thread = threading.Thread(
        target=lambda: answers.append(
            post_shopify(app.test_client(), fulfillment(fulfillment_id=9901)).status_code
        )
    )
    thread.start()
    thread.join(60)
    rest = b"".join(chunks)
    export.close()

    assert answers == [200]
    assert b"1003" in first + rest
    with get_db(app).session() as session:
        results = session.scalars(select(Delivery.result)).all()
    assert results == ["accepted"]


@pytest.mark.parametrize(
    "db_backend", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
)
def test_a_read_only_session_refuses_to_write(app: Flask) -> None:
    with get_db(app).read_session() as session:
        session.add(Source(name="sneaky", platform="shopify"))
        with pytest.raises(RuntimeError, match="read-only"):
            session.flush()
