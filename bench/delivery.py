"""Outbound delivery's throughput against its ceiling, replaying a log to one destination.

    python -m bench.delivery [--checkouts 20000] [--latency 0.05] [--concurrency 32] [--dsn DSN]

Fills a fresh database with realistic checkouts and their fulfillment (the reactor's events),
projects it, then adds a destination pointing at a receiver (another process, aiohttp) that answers
``200`` after ``--latency`` seconds, replays it from position 1 and runs ``ledger work`` until every
message is delivered. The ceiling is ``concurrency / latency`` messages per second (what the
receiver allows); the figure is delivered messages per second, and its ratio to the ceiling.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import asyncpg

from bench.common import Server
from ledger.log import EventLog, NewEvent
from ledger_cli.processes import free_port
from ledger_cli.scenarios import Checkout, checkout_events, fulfillment_events
from projections.registry import PROJECTIONS
from projections.runner import catch_up_once

RECEIVER = """
import asyncio, sys
from aiohttp import web
latency = float(sys.argv[2])
async def hook(request):
    await request.read()
    await asyncio.sleep(latency)
    return web.Response(status=200)
app = web.Application()
app.router.add_post("/hooks", hook)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)
"""


async def fill(dsn: str, checkouts: int) -> int:
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
    log = EventLog(pool)
    batch: list[NewEvent] = []
    try:
        for seed in range(checkouts):
            c = Checkout(seed=seed, split=seed % 3 == 0)
            for e in checkout_events(c):
                raw = json.dumps(e).encode()
                batch.append(NewEvent(event_id=e["event_id"], event_type=e["event_type"], raw_body=raw))
            batch.extend(fulfillment_events(c))
            if len(batch) >= 2000:
                await log.append(batch)
                batch = []
        if batch:
            await log.append(batch)
        async with pool.acquire() as conn:
            for projection in PROJECTIONS.values():
                while await catch_up_once(conn, projection, 5000):
                    pass
            return int(await conn.fetchval("SELECT position FROM ledger_head"))
    finally:
        await pool.close()


async def delivered(dsn: str) -> tuple[int, int, int]:
    conn = await asyncpg.connect(dsn)
    try:
        row = await conn.fetchrow(
            "SELECT d.delivered_count, d.position, (SELECT count(*) FROM destination_messages m "
            "WHERE m.destination_id = d.destination_id AND m.status = 'retrying') AS retrying FROM destinations d"
        )
        return int(row["delivered_count"]), int(row["position"]), int(row["retrying"])
    finally:
        await conn.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkouts", type=int, default=20_000)
    parser.add_argument("--latency", type=float, default=0.05)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--dsn", default=None)
    args = parser.parse_args()
    server = Server(args.dsn)
    ledger = str(Path(sys.executable).parent / "ledger")
    receiver = work = None
    try:
        dsn = await server.fresh_database()
        head = await fill(dsn, args.checkouts)
        port = free_port()
        receiver = subprocess.Popen([sys.executable, "-c", RECEIVER, str(port), str(args.latency)])
        env = {
            **os.environ,
            "LEDGER_DATABASE_URL": dsn,
            "LEDGER_DELIVERY_ALLOW_PRIVATE": "true",
            "LEDGER_DELIVERY_CONCURRENCY": str(args.concurrency),
            "LEDGER_RECONCILE_INTERVAL": "0",
            "LEDGER_METRICS_PORT": "0",
        }
        out = subprocess.run(
            [ledger, "destinations", "add", f"http://127.0.0.1:{port}/hooks", "--mode", "all"],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        destination = next(line.split()[1] for line in out.splitlines() if line.startswith("id:"))
        subprocess.run(
            [ledger, "destinations", "replay", destination, "--from-position", "1"],
            env=env,
            check=True,
            capture_output=True,
        )
        work = subprocess.Popen([ledger, "work"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        started = time.perf_counter()
        derived_at = None
        last = (0, 0, 0)
        while True:
            await asyncio.sleep(1)
            last = await delivered(dsn)
            _, position, retrying = last
            if position >= head and derived_at is None:
                derived_at = time.perf_counter() - started
            if position >= head and retrying == 0:
                break
            if time.perf_counter() - started > 3600:
                raise RuntimeError(f"not done in an hour: {last}")
        elapsed = time.perf_counter() - started
        rate = last[0] / elapsed
        ceiling = args.concurrency / args.latency
        print(
            f"{head:,} log events -> {last[0]:,} messages delivered in {elapsed:.1f} s: {rate:,.0f} messages/s; "
            f"ceiling {ceiling:,.0f}/s (concurrency {args.concurrency} / {args.latency * 1000:.0f} ms): "
            f"ratio {rate / ceiling:.2f}; every message derived after {derived_at or 0:.1f} s"
        )
        print(
            json.dumps(
                {
                    "bench": "delivery",
                    "events": head,
                    "messages": last[0],
                    "seconds": round(elapsed, 1),
                    "per_s": round(rate),
                    "ceiling_per_s": round(ceiling),
                    "ratio": round(rate / ceiling, 3),
                }
            )
        )
    finally:
        for proc in (work, receiver):
            if proc is not None:
                proc.terminate()
                proc.wait(30)
        server.close()


if __name__ == "__main__":
    asyncio.run(main())
