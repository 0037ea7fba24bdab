"""Console accounts and security: CLI user creation, login, rate limit, CSRF, cookies, headers."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

from sqlalchemy import select

from dispatch_notifier.db import get_db
from dispatch_notifier.models import LoginAttempt, User
from dispatch_notifier.users import MAX_FAILURES_PER_USER
from tests.console_helpers import PASSWORD, create_user, csrf_token, logged_in, login


def test_users_create_reads_the_password_from_stdin_and_stores_a_werkzeug_hash(app):
    runner = app.test_cli_runner()
    result = runner.invoke(args=["users", "create", "owner"], input="s3cret-password\n")
    assert result.exit_code == 0, result.output
    with get_db(app).session() as session:
        user = session.scalars(select(User)).one()
    assert user.username == "owner"
    assert user.password_hash.startswith("scrypt:")
    assert "s3cret-password" not in user.password_hash


def test_users_create_refuses_a_duplicate_and_a_short_password(app):
    runner = app.test_cli_runner()
    runner.invoke(args=["users", "create", "owner"], input="long-enough-pw\n")
    again = runner.invoke(args=["users", "create", "owner"], input="long-enough-pw\n")
    assert again.exit_code != 0 and "exists already" in again.output
    short = runner.invoke(args=["users", "create", "other"], input="short\n")
    assert short.exit_code != 0 and "at least 8 characters" in short.output


def test_admin_pages_require_login(client):
    for path in ("/admin/", "/admin/sources", "/admin/templates", "/admin/log", "/admin/log/1"):
        response = client.get(path)
        assert response.status_code == 302, path
        assert response.headers["Location"].startswith("/admin/login?next=")


def test_there_is_no_self_registration(client):
    assert client.get("/admin/register").status_code == 404
    assert client.get("/admin/signup").status_code == 404


def test_wrong_password_and_unknown_user_get_the_same_generic_error(app, client):
    create_user(app)
    token = csrf_token(client)
    wrong = client.post(
        "/admin/login", data={"username": "owner", "password": "nope", "csrf_token": token}
    )
    unknown = client.post(
        "/admin/login", data={"username": "nobody", "password": "nope", "csrf_token": token}
    )
    assert wrong.status_code == unknown.status_code == 401
    assert "Invalid username or password." in wrong.text
    assert "Invalid username or password." in unknown.text


def test_login_is_rate_limited_through_the_database_across_processes(app_factory):
    # Two apps with their own engines stand for two web processes sharing the database.
    first, second = app_factory(), app_factory()
    create_user(first)
    for _ in range(MAX_FAILURES_PER_USER):
        client = first.test_client()
        client.post(
            "/admin/login",
            data={"username": "owner", "password": "bad", "csrf_token": csrf_token(client)},
        )
    other = second.test_client()
    blocked = other.post(
        "/admin/login",
        data={"username": "owner", "password": PASSWORD, "csrf_token": csrf_token(other)},
    )
    assert blocked.status_code == 429
    assert "Too many failed attempts" in blocked.text
    with get_db(first).session() as session:
        assert session.scalars(select(LoginAttempt)).all()


def test_guesses_racing_each_other_get_no_more_tries_than_the_limit(app):
    # Each guess is counted before its (slow) password check, in the transaction that reads the
    # count; those transactions queue (SQLite's write lock, PostgreSQL's advisory locks), so a
    # burst cannot all slip under the limit.
    create_user(app)
    for _ in range(MAX_FAILURES_PER_USER - 1):
        client = app.test_client()
        data = {"username": "owner", "password": "bad", "csrf_token": csrf_token(client)}
        assert client.post("/admin/login", data=data).status_code == 401
    guessers = [app.test_client() for _ in range(8)]
    forms = [
        {"username": "owner", "password": f"guess-{i}", "csrf_token": csrf_token(c)}
        for i, c in enumerate(guessers)
    ]
    start = threading.Barrier(len(guessers))

    def guess(i: int) -> int:
        start.wait()
        return guessers[i].post("/admin/login", data=forms[i]).status_code

    with ThreadPoolExecutor(len(guessers)) as pool:
        answers = sorted(pool.map(guess, range(len(guessers))))
    assert answers == [401] + [429] * (len(guessers) - 1)


def test_a_successful_login_forgives_its_own_attempt_and_the_users_failures(app):
    create_user(app)
    client = app.test_client()
    data = {"username": "owner", "password": "bad", "csrf_token": csrf_token(client)}
    client.post("/admin/login", data=data)
    login(client)
    with get_db(app).session() as session:
        left = session.scalars(select(LoginAttempt.key)).all()
    assert left == ["addr:127.0.0.1"]  # the failed guess's address row, not the login's


def test_session_is_cleared_at_login_and_logout_ends_it(app, client):
    create_user(app)
    with client.session_transaction("/admin/") as session:
        session["planted"] = "by an attacker"
    login(client)
    with client.session_transaction("/admin/") as session:
        assert "planted" not in session
        assert session["user_id"]
    token = csrf_token(client, "/admin/")
    response = client.post("/admin/logout", data={"csrf_token": token})
    assert response.status_code == 302
    assert client.get("/admin/").status_code == 302


def test_login_redirects_only_inside_the_console(app, client):
    create_user(app)
    token = csrf_token(client)
    response = client.post(
        "/admin/login",
        data={
            "username": "owner",
            "password": PASSWORD,
            "csrf_token": token,
            "next": "https://evil.example/admin",
        },
    )
    assert response.headers["Location"] == "/admin/"


def test_a_post_without_csrf_token_is_refused(app):
    client, _token = logged_in(app)
    response = client.post("/admin/templates/dispatched/en", data={"body": "Hi {{ order_number }}"})
    assert response.status_code == 400
    assert "security token" in response.text
    login_post = app.test_client().post(
        "/admin/login", data={"username": "owner", "password": PASSWORD}
    )
    assert login_post.status_code == 400


def test_webhooks_and_api_are_exempt_from_csrf(app_factory):
    app = app_factory(API_TOKEN="t0ken")
    response = app.test_client().post(
        "/api/v1/sms/count", json={"text": "hi"}, headers={"Authorization": "Bearer t0ken"}
    )
    assert response.status_code == 200
    webhook = app.test_client().post("/webhooks/shopify", data=b"{}")
    assert webhook.status_code == 401  # refused for its signature, not for CSRF


def test_session_cookie_is_httponly_lax_and_secure_unless_plain_http_is_allowed(app_factory):
    for secure in (True, False):
        app = app_factory(SECURE_COOKIES=secure)
        create_user(app, name=f"u{int(secure)}")
        client = app.test_client()
        response = client.post(
            "/admin/login",
            data={
                "username": f"u{int(secure)}",
                "password": PASSWORD,
                "csrf_token": csrf_token(client),
            },
        )
        cookie = response.headers["Set-Cookie"]
        assert "HttpOnly" in cookie
        assert "SameSite=Lax" in cookie
        assert ("Secure" in cookie) is secure


def test_admin_pages_send_security_headers_and_csp_without_inline_script(app):
    client, _ = logged_in(app)
    response = client.get("/admin/templates/dispatched/en")
    csp = response.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert "frame-ancestors 'none'" in csp
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert "<script>" not in response.text  # scripts only as files
    assert 'src="/static/admin.js"' in response.text


def test_every_answer_gets_the_security_headers_and_a_views_own_value_wins(app_factory):
    app = app_factory(SECURE_COOKIES=True)

    @app.get("/admin/probe")
    def probe():  # type: ignore[no-untyped-def]
        # Lower-case names: a view's own header counts whatever its spelling.
        return "ok", {"x-frame-options": "SAMEORIGIN", "cache-control": "private"}

    client = app.test_client()
    page = client.get("/admin/probe")
    assert page.headers.getlist("X-Frame-Options") == ["SAMEORIGIN"]
    assert page.headers.getlist("Cache-Control") == ["private"]
    assert page.headers["X-Content-Type-Options"] == "nosniff"
    assert page.headers["Referrer-Policy"] == "same-origin"
    assert "frame-ancestors 'none'" in page.headers["Content-Security-Policy"]
    assert page.headers["Strict-Transport-Security"] == "max-age=31536000"
    assert client.get("/admin/login").headers["Cache-Control"] == "no-store"

    webhook = client.post("/webhooks/nobody", data=b"{}")
    assert webhook.headers.getlist("X-Frame-Options") == ["DENY"]
    assert webhook.headers["Strict-Transport-Security"] == "max-age=31536000"
    assert "Cache-Control" not in webhook.headers  # no-store is for the console's pages

    plain = app_factory(SECURE_COOKIES=False).test_client().get("/healthz")
    assert "Strict-Transport-Security" not in plain.headers
    assert plain.headers["X-Frame-Options"] == "DENY"


def test_webhooks_and_the_api_never_read_or_set_a_session_cookie(app_factory):
    # A browser that carries the console's session cookie.
    client, _ = logged_in(app_factory(API_TOKEN="t0ken"))
    for response in (
        client.post("/webhooks/nobody", data=b"{}"),
        client.get("/api/v1/notifications"),
        client.get("/healthz"),
    ):
        assert "Set-Cookie" not in response.headers
        assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert client.get("/api/v1/notifications").status_code == 401  # the cookie is no API login
    assert client.get("/admin/").status_code == 200  # and the console session is intact
