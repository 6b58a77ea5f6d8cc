"""The read API and ledger rebuild / status over real HTTP against the installed server."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from ledger_cli.scenarios import Checkout, checkout_events, renewal_events, renewal_invoice_id
from tests.support import API_TOKEN, SECRET, RunningServer, deliver, ledger_command, run_server

SECRET_FOR_WORK = SECRET


def test_read_routes_after_webhooks(db_dsn: str, tmp_path: Path) -> None:
    split = Checkout(seed=11, split=True)
    sub = Checkout(seed=12, mode="subscription")
    # two sessions for the same merchant order (client_reference_id)
    again = Checkout(seed=13)
    again.reference = split.reference
    with run_server(tmp_path, {"LEDGER_DATABASE_URL": db_dsn}) as server:
        last = deliver(server, checkout_events(split) + checkout_events(sub) + checkout_events(again))
        order = server.get(f"/v1/orders/{split.session_id}", params={"min_position": last})
        assert order.status_code == 200
        assert order.headers["ledger-projection-fresh"] == "true"
        doc = order.json()
        assert doc["status"] == "complete"
        assert len(doc["payment_intents"]) == 2
        assert doc["fulfillment"]["status"] == "pending"

        listed = server.get("/v1/orders", params={"client_reference_id": split.reference, "min_position": last}).json()
        assert {o["checkout_session_id"] for o in listed["data"]} == {split.session_id, again.session_id}

        page1 = server.get("/v1/orders", params={"limit": 2}).json()
        page2 = server.get("/v1/orders", params={"limit": 2, "cursor": page1["next_cursor"]}).json()
        assert len(page1["data"]) == 2
        assert len(page2["data"]) == 1
        assert page2["next_cursor"] is None
        everything = [o["checkout_session_id"] for o in page1["data"] + page2["data"]]
        assert sorted(everything) == sorted([split.session_id, sub.session_id, again.session_id])

        by_customer = server.get("/v1/orders", params={"customer_id": sub.customer_id}).json()["data"]
        assert [o["checkout_session_id"] for o in by_customer] == [sub.session_id]
        assert server.get("/v1/orders", params={"status": "open"}).json()["data"] == []

        customer = server.get(f"/v1/customers/{split.customer_id}", params={"min_position": last}).json()
        assert customer["email"] == split.email
        assert customer["order_ids"] == [split.session_id]
        subscription = server.get(f"/v1/subscriptions/{sub.subscription_id}", params={"min_position": last}).json()
        assert subscription["status"] == "active"
        assert subscription["customer_id"] == sub.customer_id
        assert subscription["checkout_session_id"] == sub.session_id

        projections = server.get("/v1/projections").json()["data"]
        names = {p["name"] for p in projections}
        assert names == {"orders", "customers", "subscriptions", "inventory", "invoices", "fulfillment"}
        assert all(p["lag"] == 0 and p["state"] == "running" for p in projections)

        missing = server.get("/v1/orders/fcs_nope")
        assert missing.status_code == 404
        assert missing.json()["error"]["code"] == "not_found"
        assert server.get("/v1/orders", params={"cursor": "!!"}).status_code == 400
        assert server.get("/v1/orders", params={"limit": 1000}).status_code == 400
        assert httpx.get(server.url + "/v1/orders").status_code == 401

    status = subprocess.run(
        [ledger_command(), "status", "--json"],
        env={**os.environ, "LEDGER_DATABASE_URL": db_dsn},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert status.returncode == 0, status.stderr
    doc = json.loads(status.stdout)
    assert doc["head"] == last
    assert {p["name"]: p["position"] for p in doc["projections"]} == {
        "orders": last,
        "customers": last,
        "subscriptions": last,
        "inventory": last,
        "invoices": last,
        "fulfillment": last,
    }
    [reactor] = [p for p in doc["projections"] if p["name"] == "fulfillment"]
    assert reactor["pending_sessions"] == 3, "no FLEX_API_KEY: completed sessions wait as pending"


def _snapshot(server: RunningServer, sessions: list[str]) -> list[dict[str, Any]]:
    return [server.get(f"/v1/orders/{s}").json() for s in sessions]


def _seed_log(db_dsn: str, n_checkouts: int) -> list[str]:
    """A larger log, appended directly (fast), for rebuild tests."""
    from tests.projection_support import as_new_event

    checkouts = [Checkout(seed=1000 + i, split=i % 2 == 0) for i in range(n_checkouts)]
    events = [e for c in checkouts for e in checkout_events(c)]

    async def run() -> None:
        from ledger.log import EventLog

        pool = await asyncpg.create_pool(db_dsn, min_size=1, max_size=2)
        try:
            for i in range(0, len(events), 500):
                await EventLog(pool).append([as_new_event(e) for e in events[i : i + 500]])
        finally:
            await pool.close()

    asyncio.run(run())
    return [c.session_id for c in checkouts]


def _wait_caught_up(server: RunningServer) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        data = server.get("/v1/projections").json()["data"]
        if all(p["lag"] == 0 for p in data):
            return
        time.sleep(0.1)
    raise AssertionError("projections did not catch up")


def test_invoice_routes(db_dsn: str, tmp_path: Path) -> None:
    a, b = Checkout(seed=14, mode="subscription"), Checkout(seed=15, mode="subscription", test_mode=True)
    events = [*checkout_events(a), *renewal_events(a, 1), *renewal_events(a, 2, outcome="failed")]
    events += [*checkout_events(b), *renewal_events(b, 1)]
    with run_server(tmp_path, {"LEDGER_DATABASE_URL": db_dsn}) as server:
        last = deliver(server, events)
        one = server.get(f"/v1/invoices/{renewal_invoice_id(a, 1)}", params={"min_position": last})
        assert one.status_code == 200
        assert one.headers["ledger-projection-fresh"] == "true"
        doc = one.json()
        assert (doc["status"], doc["subscription_id"], doc["renewal"]) == ("paid", a.subscription_id, True)
        assert doc["fulfillment"]["status"] in ("pending", "fulfilled")
        assert server.get("/v1/invoices/in_nope").status_code == 404

        of_a = server.get("/v1/invoices", params={"subscription_id": a.subscription_id}).json()["data"]
        assert [i["invoice_id"] for i in of_a] == [renewal_invoice_id(a, n) for n in (2, 1, 0)]  # newest first
        behind = server.get("/v1/invoices", params={"status": "open"}).json()["data"]
        assert [i["invoice_id"] for i in behind] == [renewal_invoice_id(a, 2)]
        test_only = server.get("/v1/invoices", params={"test_mode": "true"}).json()["data"]
        assert {i["invoice_id"] for i in test_only} == {renewal_invoice_id(b, 0), renewal_invoice_id(b, 1)}
        by_customer = server.get("/v1/invoices", params={"customer_id": b.customer_id, "limit": 1}).json()
        again = server.get("/v1/invoices", params={"customer_id": b.customer_id, "cursor": by_customer["next_cursor"]})
        paged = [i["invoice_id"] for i in by_customer["data"] + again.json()["data"]]
        assert paged == [renewal_invoice_id(b, 1), renewal_invoice_id(b, 0)]
        assert server.get("/v1/invoices", params={"status": "late"}).status_code == 400

        subscription = server.get(f"/v1/subscriptions/{a.subscription_id}").json()
        assert (subscription["status"], subscription["entitled"]) == ("past_due", False)
        assert sorted(subscription["invoice_ids"]) == sorted(renewal_invoice_id(a, n) for n in (0, 1, 2))


def test_rebuild_while_serving_reads_never_fail(db_dsn: str, tmp_path: Path) -> None:
    sessions = _seed_log(db_dsn, 1500)
    sample = sessions[::150]
    env = {**os.environ, "LEDGER_DATABASE_URL": db_dsn}
    with run_server(tmp_path, {"LEDGER_DATABASE_URL": db_dsn}) as server:
        _wait_caught_up(server)
        before = _snapshot(server, sample)
        statuses: list[int] = []
        answers: list[dict[str, Any]] = []
        stop = threading.Event()

        def reader() -> None:
            with httpx.Client(timeout=30, headers={"authorization": f"Bearer {API_TOKEN}"}) as client:
                while not stop.is_set():
                    for s in sample:
                        reply = client.get(server.url + f"/v1/orders/{s}")
                        statuses.append(reply.status_code)
                        if reply.status_code == 200:
                            answers.append(reply.json())

        threads = [threading.Thread(target=reader) for _ in range(2)]
        for t in threads:
            t.start()
        try:
            result = subprocess.run([ledger_command(), "rebuild"], env=env, capture_output=True, text=True, timeout=300)
        finally:
            stop.set()
            for t in threads:
                t.join()
        assert result.returncode == 0, result.stderr
        assert "orders" in result.stdout
        assert "switched in" in result.stdout
        assert len(statuses) > len(sample)
        assert set(statuses) == {200}
        assert all(a in before for a in answers)
        assert _snapshot(server, sample) == before
        # the live runners carry on after the switch
        more = Checkout(seed=99_999)
        last = deliver(server, checkout_events(more))
        order = server.get(f"/v1/orders/{more.session_id}", params={"min_position": last}).json()
        assert order["status"] == "complete"


def test_killed_rebuild_leaves_live_state_and_a_rerun_succeeds(db_dsn: str, tmp_path: Path) -> None:
    sessions = _seed_log(db_dsn, 3000)
    sample = sessions[::300]
    env = {**os.environ, "LEDGER_DATABASE_URL": db_dsn}
    with run_server(tmp_path, {"LEDGER_DATABASE_URL": db_dsn}) as server:
        _wait_caught_up(server)
        before = _snapshot(server, sample)
        status_before = {p["name"]: p["generation"] for p in server.get("/v1/projections").json()["data"]}
        proc = subprocess.Popen(
            [ledger_command(), "rebuild", "orders"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )

        async def rebuild_started() -> None:
            conn = await asyncpg.connect(db_dsn)
            try:
                for _ in range(600):
                    if await conn.fetchval("SELECT rebuild_position FROM projection_state WHERE name = 'orders'"):
                        return
                    await asyncio.sleep(0.01)
            finally:
                await conn.close()

        asyncio.run(rebuild_started())
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert _snapshot(server, sample) == before
        assert {p["name"]: p["generation"] for p in server.get("/v1/projections").json()["data"]} == status_before
        rerun = subprocess.run(
            [ledger_command(), "rebuild", "orders"], env=env, capture_output=True, text=True, timeout=300
        )
        assert rerun.returncode == 0, rerun.stderr
        assert _snapshot(server, sample) == before
        generations = {p["name"]: p["generation"] for p in server.get("/v1/projections").json()["data"]}
        assert generations["orders"] == status_before["orders"] + 1


def test_two_servers_on_one_database_apply_each_event_once(db_dsn: str, tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    checkouts = [Checkout(seed=500 + i, split=True) for i in range(6)]
    with (
        run_server(tmp_path / "a", {"LEDGER_DATABASE_URL": db_dsn}) as a,
        run_server(tmp_path / "b", {"LEDGER_DATABASE_URL": db_dsn}) as b,
    ):
        events = [e for c in checkouts for e in checkout_events(c)]
        last = max(deliver(a, events[::2]), deliver(b, events[1::2]))
        for server in (a, b):
            assert server.get(f"/v1/orders/{checkouts[0].session_id}", params={"min_position": last}).status_code == 200
        projections = {p["name"]: p for p in a.get("/v1/projections").json()["data"]}
    relevant = sum(1 for e in events if e["event_type"].startswith(("checkout.session.", "payment_intent.")))
    assert projections["orders"]["applied_events"] == relevant
    assert projections["orders"]["position"] == last


def test_serve_without_workers_and_a_separate_ledger_work(db_dsn: str, tmp_path: Path) -> None:
    """An ingest-only server acknowledges webhooks; projections move once `ledger work` runs."""
    c = Checkout(seed=77)
    env = {"LEDGER_DATABASE_URL": db_dsn}
    port = __import__("tests.support", fromlist=["free_port"]).free_port()
    log_path = tmp_path / "serve.log"
    full_env = {**os.environ, "LEDGER_WEBHOOK_SECRETS": SECRET_FOR_WORK, "LEDGER_API_TOKENS": API_TOKEN, **env}
    with open(log_path, "wb") as log:
        serve = subprocess.Popen(
            [ledger_command(), "serve", "--port", str(port), "--no-workers"], env=full_env, stdout=log, stderr=log
        )
    try:
        from tests.support import wait_until_ready

        server = RunningServer(serve, f"http://127.0.0.1:{port}", log_path)
        wait_until_ready(server.url, serve, log_path)
        last = deliver(server, checkout_events(c))
        stale = server.get(f"/v1/orders/{c.session_id}", params={"min_position": last})
        assert stale.status_code == 404
        assert stale.headers["ledger-projection-fresh"] == "false"
        work = subprocess.Popen(
            [ledger_command(), "work"], env=full_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            fresh = server.get(f"/v1/orders/{c.session_id}", params={"min_position": last})
            assert fresh.status_code == 200
            assert fresh.json()["status"] == "complete"
        finally:
            work.send_signal(signal.SIGTERM)
            assert work.wait(30) == 0
    finally:
        serve.send_signal(signal.SIGTERM)
        serve.wait(30)
