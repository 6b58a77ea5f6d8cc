"""Fulfillment over real HTTP: the installed server, the project's Flex stand-in, real signatures."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from ledger_cli.flex_standin import made_up_line_items
from ledger_cli.scenarios import Checkout, checkout_events
from tests.support import (
    FLEX_KEY,
    RunningServer,
    StandIn,
    free_port,
    fulfillment_env,
    ledger_command,
    run_server,
    run_standin,
    signed_headers,
)


def complete(server: RunningServer, seed: int, **kwargs: object) -> tuple[Checkout, int]:
    c = Checkout(seed=seed, **kwargs)  # type: ignore[arg-type]
    last = 0
    with httpx.Client(timeout=30) as client:
        for event in checkout_events(c):
            body = json.dumps(event)
            reply = client.post(server.url + "/webhooks/flex", content=body, headers=signed_headers(body))
            assert reply.status_code == 200, reply.text
            last = reply.json()["position"]
    return c, last


def wait_fulfillment(server: RunningServer, session_id: str, status: str, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        reply = server.get(f"/v1/orders/{session_id}")
        if reply.status_code == 200 and reply.json()["fulfillment"]["status"] == status:
            return dict(reply.json())
        if time.monotonic() > deadline:
            raise AssertionError(f"{session_id} did not reach {status}: {reply.text}")
        time.sleep(0.05)


def adjustments(server: RunningServer, session_id: str | None = None) -> list[dict[str, Any]]:
    """The feed as of everything logged so far (projections catch up independently: the order may
    show its fulfillment before the inventory projection has applied the same commit)."""
    head = server.get("/v1/projections").json()["data"][0]["head"]
    reply = server.get("/v1/inventory/adjustments", params={"limit": 1000, "min_position": head})
    assert reply.headers["ledger-projection-fresh"] == "true"
    data = reply.json()["data"]
    return [a for a in data if session_id is None or a["checkout_session_id"] == session_id]


def assert_fulfilled_once(server: RunningServer, session_id: str) -> None:
    order = wait_fulfillment(server, session_id, "fulfilled")
    items = made_up_line_items(session_id)
    mine = adjustments(server, session_id)
    assert sorted(a["line_item_id"] for a in mine) == sorted(i["line_item_id"] for i in items)
    assert {a["line_item_id"]: a["quantity_delta"] for a in mine} == {i["line_item_id"]: -i["quantity"] for i in items}
    assert all(a["reason"] == "sale" for a in mine)
    assert [li["line_item_id"] for li in order["fulfillment"]["line_items"]] == [i["line_item_id"] for i in items]
    assert order["fulfillment"]["fulfilled_at"] is not None


@pytest.fixture
def standin() -> Iterator[StandIn]:
    with run_standin() as s:
        yield s


def test_completed_session_one_adjustment_per_line_item_one_call(db_dsn: str, tmp_path: Path, standin: StandIn) -> None:
    with run_server(tmp_path, {"LEDGER_DATABASE_URL": db_dsn, **fulfillment_env(standin.api_base)}) as server:
        c, _ = complete(server, seed=1, split=True)
        assert_fulfilled_once(server, c.session_id)
        # a duplicate completion event (new id, same session) does nothing more
        dup = checkout_events(c)[-1] | {"event_id": "evt_second_completion"}
        body = json.dumps(dup)
        assert httpx.post(server.url + "/webhooks/flex", content=body, headers=signed_headers(body)).status_code == 200
        time.sleep(1.0)
        assert standin.calls(c.session_id) == 1
        assert_fulfilled_once(server, c.session_id)
        inventory = server.get("/v1/inventory").json()["data"]
        sold = {(i["price_id"], i["product_id"]): i["quantity_sold"] for i in inventory}
        for item in made_up_line_items(c.session_id):
            assert sold[(item["price"]["price_id"], item["price"]["product"]["product_id"])] >= item["quantity"]


@pytest.mark.parametrize(
    "script",
    [
        [{"status": 429, "retry_after": "1"}],
        [{"status": 500}, {"status": 500}],
        [{"status": 503, "retry_after": "1"}],
        [{"delay": 2.5}],  # longer than FLEX_API_TIMEOUT: a read timeout
        [{"status": 502}] * 6,  # more than the client's own attempts: retried later by the reactor
    ],
    ids=["429-retry-after", "500", "503", "read-timeout", "502-many"],
)
def test_transient_failures_are_retried_to_exactly_once(
    db_dsn: str, tmp_path: Path, standin: StandIn, script: list[dict[str, Any]]
) -> None:
    c = Checkout(seed=2)
    standin.fault(c.session_id, script=script)
    with run_server(tmp_path, {"LEDGER_DATABASE_URL": db_dsn, **fulfillment_env(standin.api_base)}) as server:
        complete(server, seed=2)
        assert_fulfilled_once(server, c.session_id)
        assert standin.calls(c.session_id) == len(script) + 1


def test_connection_refused_then_the_api_comes_up(db_dsn: str, tmp_path: Path) -> None:
    port = free_port()
    with run_server(
        tmp_path, {"LEDGER_DATABASE_URL": db_dsn, **fulfillment_env(f"http://127.0.0.1:{port}/v1")}
    ) as server:
        c, _ = complete(server, seed=3)
        time.sleep(1.5)
        assert server.get(f"/v1/orders/{c.session_id}").json()["fulfillment"]["status"] == "pending"
        with run_standin(port) as standin:
            assert_fulfilled_once(server, c.session_id)
            assert standin.calls(c.session_id) == 1


def _retry(db_dsn: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [ledger_command(), "fulfill", "retry", *args],
        env={**os.environ, "LEDGER_DATABASE_URL": db_dsn},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_404_fails_visibly_then_retry_after_the_fix(db_dsn: str, tmp_path: Path, standin: StandIn) -> None:
    c = Checkout(seed=4)
    standin.fault(c.session_id, always={"status": 404})
    with run_server(tmp_path, {"LEDGER_DATABASE_URL": db_dsn, **fulfillment_env(standin.api_base)}) as server:
        complete(server, seed=4)
        order = wait_fulfillment(server, c.session_id, "failed")
        assert "404" in order["fulfillment"]["error"]
        assert adjustments(server, c.session_id) == []
        reactor = next(p for p in server.get("/v1/projections").json()["data"] if p["name"] == "fulfillment")
        assert reactor["failed_sessions"] == 1
        assert standin.calls(c.session_id) == 1, "404 is not retried"
        standin.clear_faults()
        result = _retry(db_dsn, c.session_id)
        assert result.returncode == 0, result.stderr
        assert "queued again" in result.stdout
        assert_fulfilled_once(server, c.session_id)
        assert standin.calls(c.session_id) == 2
        assert _retry(db_dsn, c.session_id).stdout.strip().endswith("nothing to do")


def test_401_fails_then_the_right_key_and_retry_all(db_dsn: str, tmp_path: Path, standin: StandIn) -> None:
    env = {"LEDGER_DATABASE_URL": db_dsn}
    with run_server(tmp_path, {**env, **fulfillment_env(standin.api_base, key="fsk_test_wrong")}) as server:
        c, _ = complete(server, seed=5)
        order = wait_fulfillment(server, c.session_id, "failed")
        assert "401" in order["fulfillment"]["error"]
    with run_server(tmp_path, {**env, **fulfillment_env(standin.api_base, key=FLEX_KEY)}) as server:
        assert _retry(db_dsn, "--all-failed").returncode == 0
        assert_fulfilled_once(server, c.session_id)


def test_without_an_api_key_sessions_wait_then_run(db_dsn: str, tmp_path: Path, standin: StandIn) -> None:
    env = {"LEDGER_DATABASE_URL": db_dsn}
    with run_server(tmp_path, env) as server:
        c, last = complete(server, seed=6)
        order = server.get(f"/v1/orders/{c.session_id}", params={"min_position": last}).json()
        assert order["fulfillment"]["status"] == "pending"
        time.sleep(1)
        assert standin.calls() == 0
    with run_server(tmp_path, {**env, **fulfillment_env(standin.api_base)}) as server:
        assert_fulfilled_once(server, c.session_id)


def _kill_and_restart_fulfils_once(db_dsn: str, tmp_path: Path, standin: StandIn, hold_log: bool) -> None:
    c = Checkout(seed=7 if hold_log else 8)
    standin.fault(c.session_id, script=[{"delay": 1.0 if hold_log else 5.0}])
    env = {"LEDGER_DATABASE_URL": db_dsn, **fulfillment_env(standin.api_base), "FLEX_API_TIMEOUT": "10"}

    async def hold_head(release: asyncio.Event, held: asyncio.Event) -> None:
        conn = await asyncpg.connect(db_dsn)
        try:
            async with conn.transaction():
                await conn.execute("SELECT * FROM ledger_head FOR UPDATE")
                held.set()
                await release.wait()
        finally:
            await conn.close()

    with run_server(tmp_path, env) as server:
        complete(server, seed=c.seed)

        async def crash() -> None:
            release, held = asyncio.Event(), asyncio.Event()
            holder = asyncio.create_task(hold_head(release, held)) if hold_log else None
            if holder is not None:
                await held.wait()
            while standin.calls(c.session_id) < 1:
                await asyncio.sleep(0.02)
            # in flight (5 s delay), or returned after 1 s and now waiting to commit behind the held log
            await asyncio.sleep(2.0 if hold_log else 0.5)
            server.process.send_signal(signal.SIGKILL)
            server.process.wait()
            release.set()
            if holder is not None:
                await holder

        asyncio.run(crash())

    with run_server(tmp_path, env) as server:
        assert_fulfilled_once(server, c.session_id)
        assert standin.calls(c.session_id) == 2


def test_sigkill_while_the_flex_call_is_in_flight(db_dsn: str, tmp_path: Path, standin: StandIn) -> None:
    _kill_and_restart_fulfils_once(db_dsn, tmp_path, standin, hold_log=False)


def test_sigkill_after_the_call_returned_before_commit(db_dsn: str, tmp_path: Path, standin: StandIn) -> None:
    _kill_and_restart_fulfils_once(db_dsn, tmp_path, standin, hold_log=True)


def test_rebuild_never_calls_flex_and_keeps_inventory(db_dsn: str, tmp_path: Path, standin: StandIn) -> None:
    # no automatic reconcile: its first run may start late on a busy machine and call Flex meanwhile
    env = {"LEDGER_DATABASE_URL": db_dsn, **fulfillment_env(standin.api_base), "LEDGER_RECONCILE_INTERVAL": "0"}
    with run_server(tmp_path, env) as server:
        sessions = [complete(server, seed=20 + i, split=i % 2 == 0)[0].session_id for i in range(5)]
        for s in sessions:
            assert_fulfilled_once(server, s)
        before = (
            server.get("/v1/inventory").json(),
            server.get("/v1/inventory/adjustments", params={"limit": 1000}).json(),
            [server.get(f"/v1/orders/{s}").json() for s in sessions],
        )
        calls = standin.calls()
        result = subprocess.run(
            [ledger_command(), "rebuild"],
            env={**os.environ, "LEDGER_DATABASE_URL": db_dsn},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr
        after = (
            server.get("/v1/inventory").json(),
            server.get("/v1/inventory/adjustments", params={"limit": 1000}).json(),
            [server.get(f"/v1/orders/{s}").json() for s in sessions],
        )
        assert after == before
        time.sleep(0.5)
        assert standin.calls() == calls


def test_one_permanent_failure_does_not_hold_up_fifty_others(db_dsn: str, tmp_path: Path, standin: StandIn) -> None:
    bad = Checkout(seed=100)
    standin.fault(bad.session_id, always={"status": 404})
    with run_server(tmp_path, {"LEDGER_DATABASE_URL": db_dsn, **fulfillment_env(standin.api_base)}) as server:
        complete(server, seed=100)
        good = [complete(server, seed=200 + i)[0].session_id for i in range(50)]
        for s in good:
            wait_fulfillment(server, s, "fulfilled")
        wait_fulfillment(server, bad.session_id, "failed")
        assert len(adjustments(server)) == sum(len(made_up_line_items(s)) for s in good)


def _restock(db_dsn: str, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "LEDGER_DATABASE_URL": db_dsn, "LEDGER_DATA_DIR": str(tmp_path / "cli")}
    return subprocess.run([ledger_command(), "restock", *args], env=env, capture_output=True, text=True, timeout=60)


def test_ledger_restock_takes_back_what_was_sold_and_refuses_more(
    db_dsn: str, tmp_path: Path, standin: StandIn
) -> None:
    with run_server(tmp_path, {"LEDGER_DATABASE_URL": db_dsn, **fulfillment_env(standin.api_base)}) as server:
        c, _ = complete(server, seed=41)
        assert_fulfilled_once(server, c.session_id)
        item = made_up_line_items(c.session_id)[0]
        line, sold, price = item["line_item_id"], item["quantity"], item["price"]["price_id"]

        too_many = _restock(db_dsn, tmp_path, c.session_id, f"{line}:{sold + 1}")
        assert too_many.returncode == 1
        assert f"{sold + 1} asked, {sold} of the {sold} sold left to restock" in too_many.stderr
        assert "Traceback" not in too_many.stderr
        assert _restock(db_dsn, tmp_path, c.session_id, f"{line}:0").returncode == 2  # not a quantity

        done = _restock(db_dsn, tmp_path, c.session_id, line, "--reason", "returned")
        assert done.returncode == 0, done.stderr
        assert f"{line}: +{sold}" in done.stdout
        again = _restock(db_dsn, tmp_path, c.session_id)
        assert again.returncode == 1
        assert "already restocked" in again.stderr

        restocks = [a for a in adjustments(server, c.session_id) if a["reason"] == "restock"]
        assert [(a["line_item_id"], a["quantity_delta"]) for a in restocks] == [(line, sold)]
        levels = {r["price_id"]: r for r in server.get("/v1/inventory").json()["data"]}
        assert (levels[price]["quantity_sold"], levels[price]["quantity_restocked"], levels[price]["quantity_net"]) == (
            sold,
            sold,
            0,
        )


def _send(server: RunningServer, events: list[dict[str, Any]]) -> None:
    for event in events:
        body = json.dumps(event)
        assert httpx.post(server.url + "/webhooks/flex", content=body, headers=signed_headers(body)).status_code == 200


def _restocked(server: RunningServer, session_id: str) -> list[dict[str, Any]]:
    return [a for a in adjustments(server, session_id) if a["reason"] == "restock"]


@pytest.mark.parametrize("setting", ["full", "off"])
def test_a_fully_refunded_order_is_restocked_once_when_asked(
    db_dsn: str, tmp_path: Path, standin: StandIn, setting: str
) -> None:
    env = {"LEDGER_DATABASE_URL": db_dsn, "LEDGER_RESTOCK_ON_REFUND": setting, **fulfillment_env(standin.api_base)}
    with run_server(tmp_path, env) as server:
        partial, _ = complete(server, seed=51)
        full, _ = complete(server, seed=52)
        assert_fulfilled_once(server, partial.session_id)
        assert_fulfilled_once(server, full.session_id)
        from ledger_cli.scenarios import refund_events

        _send(server, refund_events(partial, partial.total // 2))
        refund = refund_events(full, full.total)
        _send(server, [*refund, *refund])  # redelivered: the same refund
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            order = server.get(f"/v1/orders/{full.session_id}").json()
            if order["payment_status"] == "refunded" and (setting == "off" or _restocked(server, full.session_id)):
                break
            time.sleep(0.1)
        assert order["payment_status"] == "refunded"
        assert server.get(f"/v1/orders/{partial.session_id}").json()["payment_status"] == "partially_refunded"
        time.sleep(1.5)  # the reactor has had every chance to act twice
        items = made_up_line_items(full.session_id)
        if setting == "full":
            assert sorted(
                (a["line_item_id"], a["quantity_delta"]) for a in _restocked(server, full.session_id)
            ) == sorted((i["line_item_id"], i["quantity"]) for i in items)
        else:
            assert _restocked(server, full.session_id) == []
        assert _restocked(server, partial.session_id) == []


def test_test_mode_sessions_are_fetched_with_the_test_key(db_dsn: str, tmp_path: Path, standin: StandIn) -> None:
    """The stand-in knows only one key; given as FLEX_TEST_API_KEY, test sessions are fetched and
    live ones (FLEX_API_KEY is another key) are refused by it."""
    env = {
        "LEDGER_DATABASE_URL": db_dsn,
        **fulfillment_env(standin.api_base, key="fsk_live_not_known_to_the_standin"),
        "FLEX_TEST_API_KEY": FLEX_KEY,
    }
    with run_server(tmp_path, env) as server:
        test, _ = complete(server, seed=61, test_mode=True)
        live, _ = complete(server, seed=62)
        assert_fulfilled_once(server, test.session_id)
        failed = wait_fulfillment(server, live.session_id, "failed")
        assert "401" in failed["fulfillment"]["error"] or "key" in failed["fulfillment"]["error"].lower()
        test_stock = server.get("/v1/inventory", params={"test_mode": "true"}).json()["data"]
        assert {r["price_id"] for r in test_stock} == {
            i["price"]["price_id"] for i in made_up_line_items(test.session_id)
        }
        assert all(r["test_mode"] for r in test_stock)
        assert server.get("/v1/inventory").json()["data"] == []  # live stock untouched
