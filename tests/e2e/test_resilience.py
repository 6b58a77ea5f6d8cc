"""Faults the service must outlive: its database connections cut again and again under load."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from pathlib import Path

import asyncpg
import httpx

from ledger_cli.scenarios import Checkout, checkout_events
from tests.support import fulfillment_env, run_server, run_standin, signed_headers

CUT = """SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
         WHERE datname = current_database() AND pid <> pg_backend_pid() AND application_name = 'flex-ledger'"""


async def _storm(dsn: str, seconds: float, every: float) -> int:
    conn = await asyncpg.connect(dsn)
    cut = 0
    try:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            cut += await conn.fetchval(CUT)
            await asyncio.sleep(every)
    finally:
        await conn.close()
    return cut


def test_every_worker_is_back_within_seconds_after_a_storm_of_cut_connections(db_dsn: str, tmp_path: Path) -> None:
    with run_standin() as standin:
        env = {"LEDGER_DATABASE_URL": db_dsn, "LEDGER_RECONCILE_INTERVAL": "0", **fulfillment_env(standin.api_base)}
        with run_server(tmp_path, env) as server:
            accepted: list[int] = []
            stop = threading.Event()

            def deliver() -> None:
                seed = 0
                with httpx.Client(timeout=30) as client:
                    while not stop.is_set():
                        seed += 1
                        for event in checkout_events(Checkout(seed=seed)):
                            body = json.dumps(event)
                            try:
                                reply = client.post(
                                    server.url + "/webhooks/flex", content=body, headers=signed_headers(body)
                                )
                            except httpx.HTTPError:
                                continue
                            if reply.status_code == 200:
                                accepted.append(reply.json()["position"])
                            else:
                                assert reply.status_code == 503, reply.text  # never a 500

            sender = threading.Thread(target=deliver)
            sender.start()
            try:
                cut = asyncio.run(_storm(db_dsn, seconds=6, every=0.1))
            finally:
                stop.set()
                sender.join(60)
            assert cut > 20
            assert accepted, "some deliveries got through the storm"

            # every runner back and caught up within seconds, and the failures on record
            deadline = time.monotonic() + 30
            while True:
                followers = server.get("/v1/projections").json()["data"]
                if all(f["state"] == "running" and f["lag"] == 0 for f in followers):
                    break
                assert time.monotonic() < deadline, followers
                time.sleep(0.2)
            assert sum(f["worker_failures"] for f in followers) > 0
            assert all(f["last_error"] is None for f in followers), "a cut connection is no event's fault"
            # nothing acknowledged was lost
            head = followers[0]["head"]
            assert max(accepted) <= head
            logged = {e["position"] for e in server.get("/v1/events", params={"limit": 1000}).json()["data"]}
            assert set(accepted) <= logged or head > 1000
