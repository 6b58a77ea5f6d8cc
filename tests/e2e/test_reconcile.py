"""Reconcile and sync as a user runs them: ``ledger send --drop`` loses webhooks on the way, the
project's Flex stand-in knows what Flex would, ``ledger reconcile`` and ``POST .../sync`` recover."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
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


@pytest.fixture
def standin() -> Iterator[StandIn]:
    with run_standin() as s:
        yield s


def env_for(db_dsn: str, standin: StandIn, **extra: str) -> dict[str, str]:
    return {"LEDGER_DATABASE_URL": db_dsn, **fulfillment_env(standin.api_base), **extra}


def send(server: RunningServer, standin: StandIn, scenario: str, seed: int, *drop: str) -> Checkout:
    """A checkout through ``ledger send``: Flex (the stand-in) knows it; only the webhooks not
    dropped are delivered."""
    args = ["--seed", str(seed), "--secret", SECRET, "--url", server.url + "/webhooks/flex"]
    args += ["--flex-standin", standin.url, *(a for d in drop for a in ("--drop", d))]
    result = subprocess.run(
        [ledger_command(), "send", scenario, *args], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert ("dropped (not delivered)" in result.stdout) == bool(drop)
    return Checkout(seed=seed, **SCENARIOS[scenario][0])


def reconcile(db_dsn: str, standin: StandIn, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **env_for(db_dsn, standin), "LEDGER_RECONCILE_INTERVAL": "0"}
    return subprocess.run(
        [ledger_command(), "reconcile", *args], env=env, capture_output=True, text=True, timeout=120, check=False
    )


def wait_fulfilled(server: RunningServer, session_id: str, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        reply = server.get(f"/v1/orders/{session_id}")
        if reply.status_code == 200 and reply.json()["fulfillment"]["status"] == "fulfilled":
            return dict(reply.json())
        assert time.monotonic() < deadline, f"{session_id} not fulfilled: {reply.text}"
        time.sleep(0.1)


def sales(server: RunningServer) -> list[dict[str, Any]]:
    """The adjustments feed as of everything logged so far."""
    head = server.get("/v1/projections").json()["data"][0]["head"]
    reply = server.get("/v1/inventory/adjustments", params={"limit": 1000, "min_position": head})
    return list(reply.json()["data"])


def without(order: dict[str, Any], *fields: str) -> dict[str, Any]:
    return {k: v for k, v in order.items() if k not in fields}


def test_reconcile_recovers_lost_checkouts_once_and_late_webhooks_change_nothing(
    db_dsn: str, tmp_path: Path, standin: StandIn
) -> None:
    with run_server(tmp_path, env_for(db_dsn, standin, LEDGER_RECONCILE_INTERVAL="0")) as server:
        lost = [send(server, standin, s, seed, "all") for s, seed in (("checkout", 1), ("split-cart", 2))]
        lost += [send(server, standin, "subscription", 3, "all")]
        half = [send(server, standin, "checkout", seed, "checkout.session.completed") for seed in (4, 5)]
        whole = [send(server, standin, "partial-refund", 6)]
        for c in [*lost, *half]:
            assert server.get(f"/v1/orders/{c.session_id}").status_code == 404

        first = reconcile(db_dsn, standin)
        assert first.returncode == 0, first.stderr
        assert "checkout_session" in first.stdout
        assert "already known" in first.stdout
        for c in [*lost, *half]:
            assert f"recorded checkout_session {c.session_id} (complete)" in first.stdout

        orders = {c.session_id: wait_fulfilled(server, c.session_id) for c in [*lost, *half, *whole]}
        adjustments = sales(server)
        for c in [*lost, *half, *whole]:
            order = orders[c.session_id]
            assert order["status"] == "complete"
            assert order["amount_total"] == c.total
            assert order["payment_status"] == ("partially_refunded" if c in whole else "paid")
            mine = sorted(
                (a["line_item_id"], a["quantity_delta"])
                for a in adjustments
                if a["checkout_session_id"] == c.session_id
            )
            assert mine == sorted((i["line_item_id"], -i["quantity"]) for i in c.line_items())

        second = reconcile(db_dsn, standin, "--json")
        assert second.returncode == 0, second.stderr
        report = json.loads(second.stdout)
        assert report["outcome"] == "ok"
        assert sum(k["recorded"] for k in report["kinds"].values()) == 0
        assert sum(k["examined"] for k in report["kinds"].values()) > 0

        # the lost webhooks arrive after all (Svix's retries): nothing changes, nothing is sold twice
        for c, scenario in [*((c, "checkout") for c in lost[:1]), (lost[1], "split-cart"), (lost[2], "subscription")]:
            send(server, standin, scenario, c.seed)
        for c in half:
            send(server, standin, "checkout", c.seed)
        head = server.get("/v1/projections").json()["data"][0]["head"]
        for c in [*lost, *half]:
            late = server.get(f"/v1/orders/{c.session_id}", params={"min_position": head}).json()
            # the webhook says when the session completed; the observation only knew it had by then
            assert late["completed_at"] <= orders[c.session_id]["completed_at"]
            assert without(late, "position", "completed_at") == without(
                orders[c.session_id], "position", "completed_at"
            )
        assert sales(server) == adjustments


def test_flex_failing_mid_run_records_nothing_and_a_dry_run_records_nothing(
    db_dsn: str, tmp_path: Path, standin: StandIn
) -> None:
    with run_server(tmp_path, env_for(db_dsn, standin, LEDGER_RECONCILE_INTERVAL="0")) as server:
        c = send(server, standin, "checkout", 11, "all")
        head = server.get("/v1/projections").json()["data"][0]["head"]
        standin.fault("payment_intents", always={"status": 500})
        failed = reconcile(db_dsn, standin)
        assert failed.returncode == 1
        assert failed.stderr.strip().splitlines() == [failed.stderr.strip()]  # one line
        assert "500" in failed.stderr
        assert "nothing recorded" in failed.stderr
        assert "Traceback" not in failed.stderr
        standin.clear_faults()

        dry = reconcile(db_dsn, standin, "--dry-run")
        assert dry.returncode == 0, dry.stderr
        assert f"would record checkout_session {c.session_id}" in dry.stdout
        assert server.get("/v1/projections").json()["data"][0]["head"] == head

        runs = server.get("/v1/reconcile").json()
        assert (runs["runs"], runs["failures"], runs["recorded"]) == (1, 1, 0)
        assert runs["data"][0]["outcome"] == "failed"

        assert reconcile(db_dsn, standin).returncode == 0
        wait_fulfilled(server, c.session_id)
        metrics = httpx.get(server.url + "/metrics").text
        assert 'ledger_reconcile_runs_total{outcome="failed"} 1.0' in metrics
        assert "ledger_reconcile_observations_recorded_total 2.0" in metrics
        assert "ledger_reconcile_missed_money_total 2.0" in metrics


def test_sync_for_a_known_a_lost_an_unknown_and_an_unreachable_session(
    db_dsn: str, tmp_path: Path, standin: StandIn
) -> None:
    headers = {"authorization": f"Bearer {API_TOKEN}"}
    with run_server(tmp_path, env_for(db_dsn, standin, LEDGER_RECONCILE_INTERVAL="0")) as server:
        known = send(server, standin, "checkout", 21)
        lost = send(server, standin, "split-cart", 22, "all")

        def sync(session_id: str) -> httpx.Response:
            return httpx.post(f"{server.url}/v1/orders/{session_id}/sync", headers=headers, timeout=30)

        wait_fulfilled(server, known.session_id)
        head = server.get("/v1/projections").json()["data"][0]["head"]
        reply = sync(known.session_id)
        assert reply.status_code == 200
        assert reply.json()["payment_status"] == "paid"
        assert server.get("/v1/projections").json()["data"][0]["head"] == head  # nothing new to record

        reply = sync(lost.session_id)
        assert reply.status_code == 200, reply.text
        order = reply.json()
        assert (order["status"], order["payment_status"], order["amount_paid"]) == ("complete", "paid", lost.total)
        assert len(order["payment_intents"]) == 2
        wait_fulfilled(server, lost.session_id)

        reply = sync("fcs_NOT_KNOWN_TO_FLEX")
        assert reply.status_code == 404
        assert reply.json()["error"]["code"] == "not_found"

        standin.fault("checkout_session", always={"status": 503, "retry_after": "7"})
        reply = sync(known.session_id)
        assert reply.status_code == 503
        assert reply.headers["retry-after"] == "7"
        assert reply.json()["error"]["code"] == "flex_unavailable"
        standin.clear_faults()

        assert httpx.post(f"{server.url}/v1/orders/{known.session_id}/sync", timeout=30).status_code == 401
        metrics = httpx.get(server.url + "/metrics").text
        for outcome in ("known", "recorded", "not_found", "flex_unavailable"):
            assert f'ledger_order_syncs_total{{outcome="{outcome}"}} 1.0' in metrics

    # without a key there is no one to ask: 503, never a 500
    with run_server(tmp_path, {"LEDGER_DATABASE_URL": db_dsn}) as server:
        reply = httpx.post(f"{server.url}/v1/orders/{known.session_id}/sync", headers=headers, timeout=30)
        assert reply.status_code == 503
        assert reply.json()["error"]["code"] == "flex_unavailable"


async def _runs(db_dsn: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(db_dsn)
    try:
        return list(await conn.fetch("SELECT * FROM reconcile_runs ORDER BY started_at"))
    finally:
        await conn.close()


def test_automatic_runs_have_one_runner_across_two_processes(db_dsn: str, tmp_path: Path, standin: StandIn) -> None:
    import asyncio

    env = env_for(db_dsn, standin, LEDGER_RECONCILE_INTERVAL="1")
    with run_server(tmp_path, env) as a:
        with run_server(tmp_path, env) as b:
            lost = send(a, standin, "checkout", 31, "all")
            wait_fulfilled(b, lost.session_id)  # recovered by the automatic runs alone
            time.sleep(4)
            runs = asyncio.run(_runs(db_dsn))
            assert len(runs) >= 3
            assert {r["trigger"] for r in runs} == {"automatic"}
            for earlier, later in itertools.pairwise(runs):
                assert later["started_at"] >= earlier["finished_at"]  # never two at once
            assert sum(r["recorded"] for r in runs) == 2  # the session and its payment, once
            for server in (a, b):
                assert server.get("/v1/reconcile").json()["runner"] == "running"
        count = len(asyncio.run(_runs(db_dsn)))
        time.sleep(8)  # whichever process ran it has gone: the other takes over
        assert len(asyncio.run(_runs(db_dsn))) > count
