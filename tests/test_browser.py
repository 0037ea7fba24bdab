"""The console in a real browser: headless Debian Chromium driven by Playwright.

Runs on SQLite only: these tests exercise the pages; the database rules are covered elsewhere.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect
from sqlalchemy import select
from werkzeug.serving import make_server

from dispatch_notifier.db import get_db
from dispatch_notifier.models import Notification
from dispatch_notifier.worker import Worker
from tests.conftest import IN_CI, fulfillment, post_shopify
from tests.console_helpers import PASSWORD, add_notification, create_user

pytestmark = pytest.mark.browser

CHROMIUM = os.environ.get("DISPATCH_TEST_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture
def db_backend() -> str:
    return "sqlite"


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        reason = f"Chromium not found at {CHROMIUM} (apt-get install chromium; .ci/run does it)"
        if IN_CI:
            pytest.fail(f"{reason} (CI=true: browser tests must run)")
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def live_app(app_factory: Any) -> Iterator[tuple[Any, str]]:
    """The app served by a real HTTP server on a free loopback port."""
    app = app_factory(SECURE_COOKIES=False, TESTING=False)
    create_user(app)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield app, f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    thread.join(5)


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(10_000)
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.console_errors = errors
    yield page
    context.close()


def shot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def log_in(page: Any, base: str) -> None:
    page.goto(f"{base}/admin/")
    assert "/admin/login" in page.url
    shot(page, "login")
    page.fill("input[name=username]", "owner")
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(f"{base}/admin/")


def test_edit_template_counter_turns_ucs2_fix_save_and_roll_back(live_app, page):
    _app, base = live_app
    log_in(page, base)
    page.goto(f"{base}/admin/templates/dispatched/en")
    encoding = page.locator("#count-encoding")
    expect(encoding).to_have_text("GSM-7")
    original = page.input_value("#body")

    page.click("#body")
    page.keyboard.press("Control+End")
    page.keyboard.type(" We’re on it!")
    expect(encoding).to_have_text("UCS-2")
    assert page.locator("#preview-text mark").first.inner_text() == "’"
    assert page.locator("#unicode-warning").is_visible()
    assert "U+2019" in page.inner_text("#unicode-list")
    assert page.locator("#minimum-note").is_visible()
    shot(page, "template-editor-ucs2")

    page.click("#gsm-safe")
    expect(encoding).to_have_text("GSM-7")
    assert page.input_value("#body").endswith(" We're on it!")
    assert page.locator("#unicode-warning").is_hidden()
    assert page.locator("#gsm-safe").is_disabled()

    page.fill("input[name=note]", "friendlier")
    page.click("#save")
    page.wait_for_selector("text=Saved as version 2.")
    assert page.input_value("#body").endswith("We're on it!")
    shot(page, "template-editor")

    page.click("[data-testid=restore-1]")
    page.wait_for_selector("text=Version 1 restored as version 3.")
    assert page.input_value("#body") == original
    page.click("#versions >> text=View changes >> nth=0")  # version 3, the rollback
    page.wait_for_selector("#diff")
    assert "on it!" in page.inner_text("#diff del")
    shot(page, "template-version")
    assert page.console_errors == []


def test_saving_a_broken_template_shows_the_reason(live_app, page):
    _app, base = live_app
    log_in(page, base)
    page.goto(f"{base}/admin/templates/dispatched/en")
    page.fill("#body", "Hi {{ nickname }}")
    expect(page.locator("#problems")).to_contain_text("unknown variables: nickname")
    page.click("#save")
    assert "unknown variables: nickname" in page.inner_text("#save-problems")


def test_filter_send_log_and_resend_with_confirmation(live_app, page):
    app, base = live_app
    add_notification(app, status="sent", order="1001")
    failed = add_notification(
        app,
        status="failed",
        order="2002",
        error="no SMS credit",
        error_code="ERROR_SMS_SENDNOTPERMITTED",
    )
    # One row through the real pipeline: webhook in, console backend out, attempt recorded.
    post_shopify(app.test_client(), fulfillment(phone="+447911000777"))
    Worker(app).run_until_idle()
    with get_db(app).session() as session:
        sent = session.scalar(select(Notification.id).where(Notification.phone_tail == "0777"))
    log_in(page, base)
    shot(page, "dashboard")
    assert page.locator("text=Needs your attention").is_visible()

    page.goto(f"{base}/admin/log")
    shot(page, "send-log")
    page.select_option("select[name=status]", "failed")
    page.click("#filters button[type=submit]")
    page.wait_for_url("**status=failed**")
    rows = page.locator("#log-table tbody tr")
    assert rows.count() == 1 and "2002" in rows.first.inner_text()
    page.fill("input[name=phone]", "0777")
    page.select_option("select[name=status]", "")
    page.click("#filters button[type=submit]")
    page.wait_for_url("**phone=0777**")
    assert page.locator("#log-table tbody tr").count() == 1
    assert "+44 •••• ••0777" in page.inner_text("#log-table")

    page.click(f"#log-table a[href='/admin/log/{sent}']")
    assert "console" in page.inner_text("#attempts")
    assert "X-Shopify" not in page.inner_text("#raw-event")  # the body, not the headers
    shot(page, "send-log-detail")
    page.click("#resend")
    assert page.locator("#resend-warning").is_visible()
    assert "already sent" in page.inner_text("#resend-warning")
    shot(page, "resend-confirm")
    page.click("#confirm-resend")
    page.wait_for_selector(f"text=Notification {sent} is queued to be sent again.")
    assert "pending" in page.inner_text("h1")

    page.goto(f"{base}/admin/log/{failed}/resend")
    assert page.locator("#resend-warning").count() == 0
    assert page.console_errors == []


def test_a_post_without_csrf_token_is_refused_in_the_browser(live_app, page):
    _app, base = live_app
    log_in(page, base)
    page.goto(f"{base}/admin/templates/dispatched/en")
    status = page.evaluate(
        """async () => {
            const body = new URLSearchParams({body: 'Hacked {{ order_number }}'});
            const r = await fetch('/admin/templates/dispatched/en', {method: 'POST', body});
            return r.status;
        }"""
    )
    assert status == 400
    page.reload()
    assert "Hacked" not in page.input_value("#body")


def test_sources_page_and_phone_layout(live_app, page, browser):
    _app, base = live_app
    log_in(page, base)
    page.goto(f"{base}/admin/sources")
    assert f"{base}/webhooks/shopify" in page.inner_text("[data-testid=webhook-url]")
    page.click("text=Reveal")
    assert page.inner_text("[data-testid=secret]") == "test-shopify-secret"
    shot(page, "sources")
    page.goto(f"{base}/admin/templates")
    shot(page, "templates")

    phone = browser.new_context(viewport={"width": 375, "height": 740}, is_mobile=True)
    mobile = phone.new_page()
    mobile.goto(f"{base}/admin/login")
    mobile.fill("input[name=username]", "owner")
    mobile.fill("input[name=password]", PASSWORD)
    mobile.click("button[type=submit]")
    for path, name in (
        ("/admin/", "phone-dashboard"),
        ("/admin/templates/dispatched/en", "phone-template-editor"),
        ("/admin/log", "phone-send-log"),
        ("/admin/sources", "phone-sources"),
    ):
        mobile.goto(base + path)
        # Readable on a phone: nothing wider than the screen makes the page scroll sideways.
        width = mobile.evaluate("document.documentElement.scrollWidth")
        assert width <= 375, f"{path} is {width}px wide"
        shot(mobile, name)
    phone.close()
