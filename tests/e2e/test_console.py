"""The operator console and the API docs page in a real browser: headless Chromium driven by
Playwright (the system's Chromium: ``apt-get install chromium``; Playwright's own browser download
is not used). Screenshots of every page land in ``tests/artifacts/`` (not committed)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ledger_cli.scenarios import Checkout
from ledger_cli.send import SCENARIOS
from tests.support import (
    API_TOKEN,
    SECRET,
    RunningServer,
    StandIn,
    fulfillment_env,
    ledger_command,
    run_server,
    run_standin,
)

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"


def chromium() -> str:
    """The system's Chromium (``LEDGER_CHROMIUM`` names another)."""
    for candidate in (
        os.environ.get("LEDGER_CHROMIUM"),
        "/usr/bin/chromium",
        shutil.which("chromium"),
        shutil.which("chromium-browser"),
        shutil.which("google-chrome"),
    ):
        if candidate and Path(candidate).exists():
            return candidate
    missing = "no Chromium on this machine: install it (Debian: apt-get install chromium) to run the browser tests"
    if os.environ.get("LEDGER_REQUIRE_BROWSER"):  # CI: a browser test that cannot run is a failure
        pytest.fail(missing)
    pytest.skip(missing)


@pytest.fixture
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    executable = chromium()
    with sync_playwright() as p:
        args = ["--no-sandbox"] if os.geteuid() == 0 else []
        b = p.chromium.launch(executable_path=executable, args=args, headless=True)
        try:
            yield b
        finally:
            b.close()


def send(server: RunningServer, standin: StandIn, scenario: str, seed: int) -> Checkout:
    args = [
        "--seed",
        str(seed),
        "--secret",
        SECRET,
        "--url",
        server.url + "/webhooks/flex",
        "--flex-standin",
        standin.url,
    ]
    result = subprocess.run([ledger_command(), "send", scenario, *args], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    return Checkout(seed=seed, **SCENARIOS[scenario][0])


def wait_for(server: RunningServer, session_id: str, fulfillment: str) -> None:
    deadline = time.monotonic() + 60
    while server.get(f"/v1/orders/{session_id}").json().get("fulfillment", {}).get("status") != fulfillment:
        assert time.monotonic() < deadline, f"{session_id} never {fulfillment}"
        time.sleep(0.1)


class Watched:
    """What a page did that it must not: console errors, requests to anywhere but the service."""

    def __init__(self, page: Any, origin: str) -> None:
        self.errors: list[str] = []
        self.external: list[str] = []
        page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: self.errors.append(str(e)))
        page.on(
            "request",
            lambda r: None if r.url.startswith((origin, "data:", "blob:")) else self.external.append(r.url),
        )


def shot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def test_an_operator_finds_an_order_travels_its_history_and_retries_a_fulfillment(
    db_dsn: str, tmp_path: Path, browser: Any
) -> None:
    with run_standin() as standin:
        env = {"LEDGER_DATABASE_URL": db_dsn, "LEDGER_RECONCILE_INTERVAL": "0", **fulfillment_env(standin.api_base)}
        with run_server(tmp_path, env) as server:
            refunded = send(server, standin, "partial-refund", 501)
            failing = Checkout(seed=502)
            standin.fault(failing.session_id, always={"status": 404})
            send(server, standin, "checkout", 502)
            wait_for(server, refunded.session_id, "fulfilled")
            wait_for(server, failing.session_id, "failed")
            standin.clear_faults()

            page = browser.new_page(viewport={"width": 1280, "height": 900})
            watched = Watched(page, server.url)
            page.goto(server.url + "/console")
            assert page.url.endswith("/console/login")  # not signed in: sent to sign in
            shot(page, "01-sign-in")
            page.fill("#token", "not-a-token")
            page.press("#token", "Enter")
            assert "not one of this service's API tokens" in page.text_content("main")
            page.fill("#token", API_TOKEN)
            page.press("#token", "Enter")  # the keyboard is enough
            page.wait_for_url(server.url + "/console")
            cookie = next(c for c in page.context.cookies() if c["name"] == "ledger_console")
            assert cookie["httpOnly"]
            assert cookie["sameSite"] == "Strict"
            assert page.text_content("[data-testid=head]").strip() == str(
                server.get("/v1/events?limit=1000").json()["data"][-1]["position"]
            )
            shot(page, "02-overview")

            page.click("nav >> text=Orders")
            page.fill("input[name=q]", refunded.email)
            page.press("input[name=q]", "Enter")
            page.wait_for_load_state()
            assert "Searched by email" in page.text_content("main")
            shot(page, "03-orders")
            page.click(f"a:has-text('{refunded.session_id}')")
            page.wait_for_url(re.compile(f"/console/orders/{refunded.session_id}$"))
            assert page.text_content("[data-testid=payment-status]").strip() == "partially_refunded"
            assert page.text_content("[data-testid=fulfillment]").strip() == "fulfilled"
            events = page.locator("ol.timeline > li")
            assert events.count() >= 6
            page.locator("ol.timeline details").first.click()  # the first event's raw body and headers
            assert "svix-signature" in page.locator("ol.timeline details").first.text_content()
            shot(page, "04-order")

            # the slider, by keyboard: Home is the order's first event
            page.focus("#step")
            page.keyboard.press("Home")
            page.wait_for_url(re.compile(r"step=0"))
            assert page.locator("[data-testid=as-of]").is_visible()
            # the first event is a payment's: the order did not exist yet
            assert page.locator("[data-testid=not-yet]").is_visible()
            for step in range(1, events.count()):  # on, an event at a time, to the completion: paid
                page.focus("#step")
                page.keyboard.press("ArrowRight")
                page.wait_for_url(re.compile(f"step={step}$"))
                if page.locator("[data-testid=payment-status]").count():
                    break
            assert page.text_content("[data-testid=payment-status]").strip() == "paid"
            assert page.text_content("[data-testid=status]").strip() == "complete"
            last = page.get_attribute("#step", "max")
            page.focus("#step")
            page.keyboard.press("End")
            page.wait_for_url(re.compile(f"step={last}$"))
            assert page.text_content("[data-testid=payment-status]").strip() == "partially_refunded"
            shot(page, "05-order-as-of")

            page.click("nav >> text=Fulfillment")
            assert failing.session_id in page.text_content("main")
            shot(page, "06-fulfillment-failed")
            page.click(f"button[aria-label='Retry {failing.session_id}']")
            page.wait_for_url(re.compile("retried="))
            assert "is queued again" in page.text_content("main")
            wait_for(server, failing.session_id, "fulfilled")
            page.goto(f"{server.url}/console/orders/{failing.session_id}")
            assert page.text_content("[data-testid=fulfillment]").strip() == "fulfilled"

            for name in ("quarantine", "inventory", "projections"):
                page.click(f"nav >> text={name.capitalize()}")
                page.wait_for_url(f"{server.url}/console/{name}")
                shot(page, f"07-{name}")

            phone = browser.new_page(viewport={"width": 390, "height": 844}, is_mobile=True)
            phone.context.add_cookies(page.context.cookies())
            Watched(phone, server.url)
            phone.goto(f"{server.url}/console/orders/{refunded.session_id}")
            width = phone.evaluate("document.documentElement.scrollWidth")
            assert width <= 390, f"the order page scrolls sideways on a phone ({width}px)"
            shot(phone, "08-order-phone")

            page.click("text=Sign out")
            page.wait_for_url(server.url + "/console/login")
            page.goto(server.url + "/console")
            assert page.url.endswith("/console/login")
            assert watched.errors == []
            assert watched.external == []


def test_a_form_without_its_csrf_token_is_refused(db_dsn: str, tmp_path: Path, browser: Any) -> None:
    with run_server(tmp_path, {"LEDGER_DATABASE_URL": db_dsn, "LEDGER_RECONCILE_INTERVAL": "0"}) as server:
        page = browser.new_page()
        page.goto(server.url + "/console/login")
        page.fill("#token", API_TOKEN)
        page.press("#token", "Enter")
        page.wait_for_url(server.url + "/console")
        # a forged post from the signed-in browser, without the form's token
        status = page.evaluate(
            """async () => (await fetch('/console/fulfillment/retry', {method: 'POST',
                 headers: {'content-type': 'application/x-www-form-urlencoded'}, body: 'session_id=fcs_x'})).status"""
        )
        assert status == 403


def test_the_api_docs_page_works_offline(db_dsn: str, tmp_path: Path, browser: Any) -> None:
    with run_server(tmp_path, {"LEDGER_DATABASE_URL": db_dsn, "LEDGER_RECONCILE_INTERVAL": "0"}) as server:
        page = browser.new_page()
        watched = Watched(page, server.url)
        page.goto(server.url + "/schema")
        page.locator(".opblock").first.wait_for(timeout=20_000)  # the operations, rendered by Swagger UI
        assert page.locator(".swagger-ui").count() == 1
        assert "/v1/orders/{checkout_session_id}/sync" in page.text_content(".swagger-ui")
        shot(page, "09-api-docs")
        assert watched.external == []
        assert watched.errors == []
