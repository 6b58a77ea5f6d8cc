"""The service as an operator meets it: settings errors, the database going away, ledger verify."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from tests.support import EmbeddedServer, flex_event, ledger_command, run_server


def run_ledger(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [ledger_command(), *args], env={**os.environ, **env}, capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize(
    ("env", "reason"),
    [
        ({"LEDGER_WEBHOOK_SECRETS": ""}, "LEDGER_WEBHOOK_SECRETS is not set"),
        ({"LEDGER_WEBHOOK_SECRETS": "whsec_not*base64"}, "not valid base64"),
        (
            {"LEDGER_WEBHOOK_SECRETS": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "LEDGER_WEBHOOK_MAX_BYTES": "big"},
            "LEDGER_WEBHOOK_MAX_BYTES",
        ),
        ({"LEDGER_WEBHOOK_SECRETS": "nonsense"}, "entry 1 of 1 decodes to 6 bytes, fewer than 16"),
        ({"LEDGER_WEBHOOK_SECRETS": "whsec_c2hvcnQ="}, "entry 1 of 1 decodes to 5 bytes, fewer than 16"),
    ],
)
def test_serve_refuses_bad_settings_with_one_line(env: dict[str, str], reason: str) -> None:
    result = run_ledger("serve", env=env)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert reason in lines[0]


def test_database_down_gives_503_then_recovers_without_restart(embedded_server: EmbeddedServer, tmp_path: Path) -> None:
    with run_server(tmp_path, {"LEDGER_DATABASE_URL": embedded_server.dsn}) as server:
        assert server.post_event(flex_event()).status_code == 200

        embedded_server.stop()
        reply = server.post_event(flex_event())
        assert reply.status_code == 503, reply.text
        assert int(reply.headers["retry-after"]) > 0
        assert reply.json()["error"]["code"] == "database_unavailable"
        assert httpx.get(server.url + "/readyz").status_code == 503
        assert httpx.get(server.url + "/healthz").status_code == 200
        metrics = httpx.get(server.url + "/metrics").text
        assert 'ledger_webhook_requests_total{outcome="unavailable",reason=""} 1.0' in metrics

        embedded_server.start()
        deadline = time.monotonic() + 30
        while True:
            reply = server.post_event(flex_event())
            if reply.status_code == 200 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert reply.status_code == 200, reply.text
        assert reply.json()["position"] == 2, "the event refused with 503 was not stored"
        assert httpx.get(server.url + "/readyz").status_code == 200
        assert server.process.poll() is None


def test_a_stuck_appender_gives_503_not_a_hang(db_dsn: str, tmp_path: Path) -> None:
    async def hold_head_lock(ready: asyncio.Event, release: asyncio.Event) -> None:
        conn = await asyncpg.connect(db_dsn)
        try:
            async with conn.transaction():
                await conn.execute("SELECT * FROM ledger_head FOR UPDATE")
                ready.set()
                await release.wait()
        finally:
            await conn.close()

    with run_server(tmp_path, {"LEDGER_DATABASE_URL": db_dsn}) as server:

        async def scenario() -> tuple[int, float]:
            ready, release = asyncio.Event(), asyncio.Event()
            holder = asyncio.create_task(hold_head_lock(ready, release))
            await ready.wait()
            started = time.monotonic()
            async with httpx.AsyncClient() as client:
                body = flex_event()
                from tests.support import signed_headers

                reply = await client.post(
                    server.url + "/webhooks/flex", content=body, headers=signed_headers(body), timeout=60
                )
            elapsed = time.monotonic() - started
            release.set()
            await holder
            return reply.status_code, elapsed

        status, elapsed = asyncio.run(scenario())
        assert status == 503
        assert elapsed < 15
        assert server.post_event(flex_event()).status_code == 200


def test_verify_command_intact_then_tampered(db_dsn: str, tmp_path: Path) -> None:
    with run_server(tmp_path, {"LEDGER_DATABASE_URL": db_dsn}) as server:
        for _ in range(5):
            assert server.post_event(flex_event()).status_code == 200
    env = {"LEDGER_DATABASE_URL": db_dsn}
    ok = run_ledger("verify", env=env)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "intact: 5 events" in ok.stdout

    async def tamper() -> None:
        conn = await asyncpg.connect(db_dsn)
        try:
            async with conn.transaction():
                await conn.execute("SET LOCAL session_replication_role = replica")
                await conn.execute("UPDATE events SET raw_body = raw_body || ' '::bytea WHERE position = 4")
        finally:
            await conn.close()

    asyncio.run(tamper())
    broken = run_ledger("verify", env=env)
    assert broken.returncode == 1
    assert "position 4" in broken.stdout


def test_embedded_default_generates_and_prints_a_token(tmp_path: Path) -> None:
    """No LEDGER_DATABASE_URL, no LEDGER_API_TOKENS: the embedded server and a generated token."""
    env = {"LEDGER_API_TOKENS": "", "LEDGER_DATABASE_URL": ""}
    with run_server(tmp_path, env) as server:
        reply = server.post_event(flex_event())
        assert reply.status_code == 200
        token = (tmp_path / "data" / "api_token").read_text().strip()
        assert token in server.log()
        assert httpx.get(server.url + "/v1/events", headers={"authorization": "Bearer nope"}).status_code == 401
        page = httpx.get(server.url + "/v1/events", headers={"authorization": f"Bearer {token}"}).json()
        assert len(page["data"]) == 1


def _postgres_running_on(pgdata: Path) -> bool:
    import psutil

    for proc in psutil.process_iter(["name", "cmdline"]):
        if proc.info["name"] == "postgres" and str(pgdata) in " ".join(proc.info["cmdline"] or []):
            return True
    return False


def test_after_sigkill_the_next_start_works_and_stops_the_embedded_server(tmp_path: Path) -> None:
    env = {"LEDGER_DATABASE_URL": ""}
    pgdata = (tmp_path / "data" / "pgdata").resolve()
    with run_server(tmp_path, env) as first:
        assert first.post_event(flex_event()).status_code == 200
        first.process.kill()
        first.process.wait()
    assert _postgres_running_on(pgdata), "SIGKILL leaves the embedded server running"
    with run_server(tmp_path, env) as second:
        reply = second.post_event(flex_event())
        assert reply.json() == {"status": "accepted", "position": 2}
    assert not _postgres_running_on(pgdata), "a clean stop must stop the embedded server"


def test_fifty_concurrent_deliveries_of_ten_events_over_http(db_dsn: str, tmp_path: Path) -> None:
    from tests.support import signed_headers

    bodies = [flex_event(event_id=f"evt_concurrent_{i}") for i in range(10)]

    async def deliver_all() -> list[httpx.Response]:
        async with httpx.AsyncClient(limits=httpx.Limits(max_connections=50)) as client:
            return await asyncio.gather(
                *(
                    client.post(server.url + "/webhooks/flex", content=body, headers=signed_headers(body), timeout=30)
                    for body in bodies * 5
                )
            )

    with run_server(tmp_path, {"LEDGER_DATABASE_URL": db_dsn}) as server:
        replies = asyncio.run(deliver_all())
    assert all(r.status_code == 200 for r in replies)
    assert sorted(r.json()["status"] for r in replies).count("accepted") == 10

    async def stored() -> list[tuple[int, str]]:
        conn = await asyncpg.connect(db_dsn)
        try:
            return [(r[0], r[1]) for r in await conn.fetch("SELECT position, event_id FROM events ORDER BY position")]
        finally:
            await conn.close()

    rows = asyncio.run(stored())
    assert [p for p, _ in rows] == list(range(1, 11))
    assert sorted(e for _, e in rows) == sorted(f"evt_concurrent_{i}" for i in range(10))
    position_of = {e: p for p, e in rows}
    for body, reply in zip(bodies * 5, replies, strict=True):
        assert reply.json()["position"] == position_of[__import__("json").loads(body)["event_id"]]


def test_sigterm_under_load_loses_nothing_acknowledged(db_dsn: str, tmp_path: Path) -> None:
    from tests.support import signed_headers

    bodies = [flex_event(event_id=f"evt_shutdown_{i}") for i in range(300)]

    with run_server(tmp_path, {"LEDGER_DATABASE_URL": db_dsn}) as server:

        async def load() -> list[tuple[str, int | None, dict[str, Any] | None]]:
            async with httpx.AsyncClient(limits=httpx.Limits(max_connections=32)) as client:

                async def one(body: str) -> tuple[str, int | None, dict[str, Any] | None]:
                    event_id = __import__("json").loads(body)["event_id"]
                    try:
                        r = await client.post(server.url + "/webhooks/flex", content=body, headers=signed_headers(body))
                    except httpx.HTTPError:
                        return event_id, None, None
                    return event_id, r.status_code, r.json() if r.status_code == 200 else None

                tasks = [asyncio.create_task(one(b)) for b in bodies]
                # SIGTERM mid-load: once the first replies are in (not after a fixed time, which a
                # loaded machine may spend before answering anything), while most are in flight.
                deadline = time.monotonic() + 10
                while not any(t.done() for t in tasks) and time.monotonic() < deadline:
                    await asyncio.sleep(0.01)
                server.process.send_signal(signal.SIGTERM)
                return await asyncio.gather(*tasks)

        import signal

        results = asyncio.run(load())
        # uvicorn re-raises the signal after its graceful shutdown, so the exit status names it
        assert server.process.wait(30) in (0, -signal.SIGTERM)

    acknowledged = {e: doc["position"] for e, status, doc in results if status == 200 and doc}
    assert acknowledged, "some deliveries were answered before the shutdown"
    assert all(status in (200, 503, None) for _, status, _ in results)

    async def stored() -> dict[str, int]:
        conn = await asyncpg.connect(db_dsn)
        try:
            return {r["event_id"]: r["position"] for r in await conn.fetch("SELECT event_id, position FROM events")}
        finally:
            await conn.close()

    log = asyncio.run(stored())
    assert {e: log.get(e) for e in acknowledged} == acknowledged
