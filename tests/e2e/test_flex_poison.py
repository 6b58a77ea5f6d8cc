"""Flex answering what cannot be used, as the real service meets it through the project's stand-in:
a poison resource beside a lost checkout, pages that never end, a reply dripping a byte at a time,
300 MB, another session, an endless Retry-After, and line items nobody can fulfil. Each fails
alone, visibly, within its bounds; the rest goes on."""

from __future__ import annotations

import asyncio
import json
import os
import random
import string
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from ledger_cli.processes import raw_get
from tests.e2e.test_reconcile import env_for, reconcile, send, wait_fulfilled
from tests.support import API_TOKEN, RunningServer, StandIn, ledger_command, run_server, run_standin

LONG_ID = "fcs_" + "".join(random.Random(27).choices(string.ascii_letters, k=2700))


@pytest.fixture
def standin() -> Iterator[StandIn]:
    with run_standin() as s:
        yield s


def _teach(standin: StandIn, *sessions: dict[str, Any]) -> None:
    events = [
        {
            "event_id": f"evt_{i}",
            "event_dt": int(time.time()),
            "event_type": "checkout.session.completed",
            "object": {"checkout_session": s},
        }
        for i, s in enumerate(sessions)
    ]
    httpx.post(standin.url + "/_standin/events", json={"events": events}, timeout=10).raise_for_status()


def _sync(server: RunningServer, session_id: str) -> httpx.Response:
    return httpx.post(
        f"{server.url}/v1/orders/{session_id}/sync", headers={"authorization": f"Bearer {API_TOKEN}"}, timeout=60
    )


def test_a_poison_resource_is_skipped_and_the_lost_checkout_beside_it_recovered(
    db_dsn: str, tmp_path: Path, standin: StandIn
) -> None:
    with run_server(tmp_path, env_for(db_dsn, standin, LEDGER_RECONCILE_INTERVAL="0")) as server:
        lost = send(server, standin, "checkout", 2101, "all")  # every webhook lost on the way
        _teach(
            standin,
            {"checkout_session_id": "fcs_nul", "status": "complete", "customer_email": "a\u0000b@example.com"},
            {"checkout_session_id": LONG_ID, "status": "complete"},
        )
        result = reconcile(db_dsn, standin, "--json")
        assert result.returncode == 0, result.stderr
        report = json.loads(result.stdout)
        assert report["outcome"] == "ok"
        assert report["kinds"]["checkout_session"]["skipped"] == 2
        reasons = {s["id"][:8]: s["reason"] for s in report["skipped"]}
        assert "\\u0000" in reasons["fcs_nul"]
        assert "longer than 255 bytes" in reasons[LONG_ID[:8]]
        assert lost.session_id in {o["id"] for o in report["observations"]}
        wait_fulfilled(server, lost.session_id)
        # the table says so, and so do status and the metrics
        table = reconcile(db_dsn, standin)
        assert table.returncode == 0
        assert "skipped 2 resource(s) Flex listed that cannot be recorded" in table.stdout
        metrics = httpx.get(server.url + "/metrics", timeout=10).text
        assert "ledger_reconcile_skipped_resources_total 4.0" in metrics  # two runs, two each
        # sync of the poison session: a clear 503, never a 500, nothing recorded
        for session_id in ("fcs_nul", LONG_ID[:200]):
            reply = _sync(server, session_id)
            assert reply.status_code in (503, 404), reply.text


def test_pages_that_never_end_are_bounded(db_dsn: str, tmp_path: Path, standin: StandIn) -> None:
    standin.fault("checkout_sessions", always={"endless": True})
    started = time.monotonic()
    env = {**os.environ, **env_for(db_dsn, standin), "LEDGER_RECONCILE_MAX_PAGES": "25"}
    result = subprocess.run(
        [ledger_command(), "reconcile"], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 1
    assert "past 25 pages" in result.stderr
    assert "nothing recorded" in result.stderr
    assert time.monotonic() - started < 60
    assert standin.calls() <= 25 + 2 * 1 + 5  # the sessions' pages, one page of each other kind


def test_a_dripping_reply_and_a_huge_one_end_within_their_bounds(db_dsn: str, tmp_path: Path, standin: StandIn) -> None:
    env = {**os.environ, **env_for(db_dsn, standin), "FLEX_API_DEADLINE": "3", "FLEX_API_TIMEOUT": "5"}
    standin.fault("checkout_sessions", script=[{"drip": 0.5}] * 10)
    started = time.monotonic()
    dripped = subprocess.run([ledger_command(), "reconcile"], env=env, capture_output=True, text=True, timeout=120)
    assert dripped.returncode == 1
    assert "no complete answer within 3 s" in dripped.stderr
    assert time.monotonic() - started < 20
    standin.clear_faults()
    standin.fault("checkout_sessions", always={"huge": 300_000_000})
    huge = subprocess.run([ledger_command(), "reconcile"], env=env, capture_output=True, text=True, timeout=120)
    assert huge.returncode == 1
    assert "more than the 8388608 bytes allowed" in huge.stderr


def test_sync_refuses_another_session_an_endless_wait_and_a_huge_reply_without_holding_reads(
    db_dsn: str, tmp_path: Path, standin: StandIn
) -> None:
    env = env_for(db_dsn, standin, LEDGER_RECONCILE_INTERVAL="0", LEDGER_READ_POOL_SIZE="4")
    with run_server(tmp_path, env) as server:
        mine = send(server, standin, "checkout", 2201, "all")
        # Flex answers with another session, or one without an id: refused, nothing recorded
        for body in (
            {"checkout_session": {"checkout_session_id": "fcs_someone_else", "status": "complete"}},
            {"checkout_session": {"status": "complete"}},
        ):
            standin.fault("checkout_session", always={"body": body})
            reply = _sync(server, mine.session_id)
            assert reply.status_code == 503, reply.text
            assert "nothing recorded" in reply.json()["error"]["message"] or "not" in reply.json()["error"]["message"]
            standin.clear_faults()
        assert server.get("/v1/orders/fcs_someone_else").status_code == 404
        assert server.get(f"/v1/orders/{mine.session_id}").status_code == 404
        # ten syncs told to come back in 31 years: 503 at once, and reads never wait for them
        standin.fault("*", always={"status": 429, "retry_after": "1000000000"})

        async def together() -> tuple[list[int], float, float]:
            async with httpx.AsyncClient(timeout=60) as client:
                started = time.monotonic()
                syncs = [
                    asyncio.create_task(
                        client.post(
                            f"{server.url}/v1/orders/{mine.session_id}/sync",
                            headers={"authorization": f"Bearer {API_TOKEN}"},
                        )
                    )
                    for _ in range(10)
                ]
                port = int(server.url.rsplit(":", 1)[1])
                read_seconds, _ = await raw_get(port, "/v1/projections", API_TOKEN)
                replies = await asyncio.gather(*syncs)
                return [r.status_code for r in replies], time.monotonic() - started, read_seconds

        statuses, took, read_took = asyncio.run(together())
        assert statuses == [503] * 10
        assert took < 5
        assert read_took < 2
        standin.clear_faults()
        # a 300 MB answer: refused after 8 MiB, the serving process barely grows
        standin.fault("checkout_session", always={"huge": 300_000_000})
        before = psutil.Process(server.process.pid).memory_info().rss
        reply = _sync(server, mine.session_id)
        assert reply.status_code == 503
        assert "bytes allowed" in reply.json()["error"]["message"]
        grown = psutil.Process(server.process.pid).memory_info().rss - before
        assert grown < 100 * 1024 * 1024, f"the server grew by {grown / 2**20:.0f} MiB"
        standin.clear_faults()
        assert _sync(server, mine.session_id).status_code == 200  # and the real answer is taken


@pytest.mark.parametrize(
    ("items", "reason"),
    [
        ([{"line_item_id": "li_a", "quantity": 1, "description": "a\u0000b", "price": "fprice_1"}], "\\u0000"),
        ([{"line_item_id": "li_" + "x" * 3000, "quantity": 1, "price": "fprice_1"}], "longer than 255 bytes"),
        (
            [
                {"line_item_id": "li_d", "quantity": 1, "price": "p"},
                {"line_item_id": "li_d", "quantity": 2, "price": "p"},
            ],
            "listed twice",
        ),
        ([{"line_item_id": "li_z", "quantity": 0, "price": "fprice_1"}], "quantity 0"),
        ([{"line_item_id": "li_n", "quantity": -5, "price": "fprice_1"}], "quantity -5"),
        ([{"line_item_id": "li_h", "quantity": 10**30, "price": "fprice_1"}], "not a whole number from 1"),
    ],
    ids=["nul", "long-id", "duplicate", "zero", "negative", "huge"],
)
def test_line_items_nobody_can_fulfil_fail_once_with_the_reason(
    db_dsn: str, tmp_path: Path, standin: StandIn, items: list[Any], reason: str
) -> None:
    from tests.e2e.test_fulfillment import complete, wait_fulfillment

    env = env_for(db_dsn, standin, LEDGER_RECONCILE_INTERVAL="0")
    with run_server(tmp_path, env) as server:
        from ledger_cli.scenarios import Checkout

        bad, good = Checkout(seed=2301), Checkout(seed=2302)
        httpx.post(f"{standin.url}/_standin/sessions/{bad.session_id}", json={"line_items": items}).raise_for_status()
        complete(server, seed=2301)
        complete(server, seed=2302)
        order = wait_fulfillment(server, bad.session_id, "failed")
        assert reason in order["fulfillment"]["error"]
        wait_fulfillment(server, good.session_id, "fulfilled")
        time.sleep(1.0)
        assert standin.calls(bad.session_id) == 1  # one call, counted, never a loop
        assert not [
            a
            for a in server.get("/v1/inventory/adjustments").json()["data"]
            if a["checkout_session_id"] == bad.session_id
        ]
