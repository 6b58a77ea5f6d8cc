"""The console and the read API against guessing and framing, over real HTTP: sign-out revokes
the session on the server, wrong credentials are limited per address, every console response
forbids framing, sniffing, caching and inline script, and no form field reaches the database
unchecked."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support import API_TOKEN, CONSOLE_CSRF, RunningServer, console_csrf, console_signed_in, run_server

_csrf = console_csrf
_signed_in = console_signed_in


@pytest.fixture(scope="module")
def guarded(module_db: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with run_server(tmp_path_factory.mktemp("guarded"), {"LEDGER_DATABASE_URL": module_db}) as running:
        yield running


@contextlib.contextmanager
def _limited(module_db: str, tmp_path: Path, window: float) -> Iterator[RunningServer]:
    env = {
        "LEDGER_DATABASE_URL": module_db,
        "LEDGER_AUTH_MAX_FAILURES": "10",
        "LEDGER_AUTH_FAILURE_WINDOW": str(window),
    }
    with run_server(tmp_path, env) as running:
        yield running


def test_a_cookie_copied_before_sign_out_stops_working_at_once(guarded: RunningServer) -> None:
    with _signed_in(guarded) as client, httpx.Client(base_url=guarded.url, cookies=dict(client.cookies)) as other:
        assert other.get("/console").status_code == 200  # the copy works while the session lives
        reply = client.post("/console/logout", data={"_csrf_token": _csrf(client, "/console")})
        assert reply.status_code == 303
        after = other.get("/console")
        assert after.status_code == 303
        assert after.headers["location"] == "/console/login"
        assert other.get("/console/fulfillment").status_code == 303
    with _signed_in(guarded) as again:  # signing in again opens a new session that works
        assert again.get("/console/projections").status_code == 200


def test_200_wrong_tokens_then_the_right_one_is_refused_unchecked(module_db: str, tmp_path: Path) -> None:
    with (
        _limited(module_db, tmp_path, window=60) as server,
        httpx.Client(base_url=server.url, timeout=30) as client,
    ):
        good = {"authorization": f"Bearer {API_TOKEN}"}
        for _ in range(30):
            assert client.get("/v1/projections", headers=good).status_code == 200  # valid tokens never count
        statuses = [
            client.get("/v1/projections", headers={"authorization": f"Bearer wrong-{i}"}).status_code
            for i in range(200)
        ]
        assert statuses[:10] == [401] * 10
        assert set(statuses[10:]) == {429}
        limited = client.get("/v1/projections", headers=good)  # the right one amid the guesses: not even compared
        assert limited.status_code == 429
        assert 1 <= int(limited.headers["retry-after"]) <= 60
        assert limited.json()["error"]["code"] == "rate_limited"
        # console sign-in shares the address's budget
        refused = client.post(
            "/console/login", data={"_csrf_token": _csrf(client, "/console/login"), "token": API_TOKEN}
        )
        assert refused.status_code == 429
        assert "retry-after" in refused.headers


def test_failed_sign_ins_are_limited_and_the_limit_passes(module_db: str, tmp_path: Path) -> None:
    with _limited(module_db, tmp_path, window=2) as server, httpx.Client(base_url=server.url, timeout=30) as client:
        token = _csrf(client, "/console/login")
        started = time.monotonic()
        codes = [
            client.post("/console/login", data={"_csrf_token": token, "token": f"guess-{i}"}).status_code
            for i in range(15)
        ]
        assert time.monotonic() - started < 2, "the guesses fit in one window"
        assert codes[:10] == [200] * 10  # the form again, saying the token is wrong
        assert set(codes[10:]) == {429}
        assert client.post("/console/login", data={"_csrf_token": token, "token": API_TOKEN}).status_code == 429
        time.sleep(2.2)  # the window passes: the right token is served again
        assert client.get("/v1/projections", headers={"authorization": f"Bearer {API_TOKEN}"}).status_code == 200
        with _signed_in(server) as signed:
            assert signed.get("/console").status_code == 200


@pytest.mark.parametrize("path", ["/console/login", "/console", "/console/orders", "/console/static/console.css"])
def test_every_console_response_forbids_framing_sniffing_caching_and_inline_script(
    guarded: RunningServer, path: str
) -> None:
    with _signed_in(guarded) as client, httpx.Client(base_url=guarded.url) as anonymous:
        for reply in (client.get(path), anonymous.get(path)):
            csp = reply.headers["content-security-policy"]
            assert "frame-ancestors 'none'" in csp
            assert "script-src 'self'" in csp
            assert "unsafe-inline" not in csp
            assert reply.headers["x-frame-options"] == "DENY"
            assert reply.headers["x-content-type-options"] == "nosniff"
            assert reply.headers["referrer-policy"] == "same-origin"
            assert reply.headers["cache-control"] == "no-store"


@pytest.mark.parametrize(
    ("path", "field"),
    [
        ("/console/fulfillment/retry", "session_id"),
        ("/console/destinations/retry", "destination_id"),
        ("/console/login", "token"),
        ("/console/logout", "anything"),
    ],
)
@pytest.mark.parametrize("value", ["a\x00b", "\x00", "x" * 100_000, "\u00ff\ufffd"])
def test_no_console_form_field_causes_a_500(guarded: RunningServer, path: str, field: str, value: str) -> None:
    with _signed_in(guarded) as client:
        reply = client.post(path, data={"_csrf_token": _csrf(client, "/console/fulfillment"), field: value})
        assert reply.status_code < 500, reply.text
        if path.endswith("/retry") and ("\x00" in value or len(value) > 255):
            assert reply.status_code == 400
            assert "control characters" in reply.text


def test_the_secure_flag_is_set_when_asked(module_db: str, tmp_path: Path) -> None:
    for secure in ("true", "false"):
        env = {"LEDGER_DATABASE_URL": module_db, "LEDGER_CONSOLE_SECURE_COOKIE": secure}
        with run_server(tmp_path, env) as server, httpx.Client(base_url=server.url, timeout=30) as client:
            form = client.get("/console/login")
            csrf_cookie = next(v for k, v in form.headers.multi_items() if k == "set-cookie")
            assert ("Secure" in csrf_cookie) == (secure == "true")
            # a browser sends a Secure cookie over HTTPS only; this client is told to send it anyway
            reply = client.post(
                "/console/login",
                data={"_csrf_token": CONSOLE_CSRF.search(form.text).group(1), "token": API_TOKEN},  # type: ignore[union-attr]
                headers={"cookie": csrf_cookie.split(";")[0]},
            )
            assert reply.status_code == 303
            session = next(
                v for k, v in reply.headers.multi_items() if k == "set-cookie" and v.startswith("ledger_console=")
            )
            assert "HttpOnly" in session
            assert ("Secure" in session) == (secure == "true")


def test_the_quarantine_page_reads_through_the_read_pool_never_ingests(module_db: str, tmp_path: Path) -> None:
    """With the only ingest connection held by an append waiting on a lock, the quarantine page
    still answers at once: it never takes the connections webhooks need (and never waits for them)."""
    import asyncio

    import asyncpg

    from tests.support import flex_event, signed_headers

    env = {"LEDGER_DATABASE_URL": module_db, "LEDGER_INGEST_POOL_SIZE": "1"}
    with run_server(tmp_path, env) as server, _signed_in(server) as client:

        async def scenario() -> float:
            conn = await asyncpg.connect(module_db)
            try:
                async with conn.transaction():
                    await conn.execute("SELECT * FROM ledger_head FOR UPDATE")  # every append waits
                    async with httpx.AsyncClient(timeout=60) as webhooks:
                        body = flex_event()
                        stuck = asyncio.create_task(
                            webhooks.post(server.url + "/webhooks/flex", content=body, headers=signed_headers(body))
                        )
                        await asyncio.sleep(0.5)  # the append holds the one ingest connection now
                        started = time.monotonic()
                        page = await asyncio.to_thread(client.get, "/console/quarantine")
                        took = time.monotonic() - started
                        assert page.status_code == 200, page.text
                    stuck.cancel()
                return took
            finally:
                await conn.close()

        assert asyncio.run(scenario()) < 2
