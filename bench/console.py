"""The operator console at the size users reach: every page's latency on a log of 1 M events.

    python -m bench.console [--events 1000000] [--requests 200] [--concurrency 4] [--dsn DSN]

Fills the log with realistic traffic (``bench.scale.fill``: checkouts, split carts,
subscriptions, the reactor's line items and adjustments), rebuilds the projections with
``ledger rebuild``, nothing analysed, then signs in to ``/console`` as a browser does (CSRF
token, session cookie) and requests every page ``--requests`` times at ``--concurrency``:
overview, orders (first page, filtered, an email search), an order with its timeline, the same
order as of an earlier event, failed fulfillments, quarantine, inventory, projections. The
baseline, in the same run: ``GET /v1/orders/{id}`` for the same orders (the read API's JSON).

Target: p99 < 100 ms for every page.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from bench.common import Server
from bench.scale import LEDGER, Serving, _pct, fill, settle
from ledger_cli.scenarios import Checkout


async def timed(client: httpx.AsyncClient, paths: list[str], concurrency: int) -> dict[str, float]:
    queue = list(reversed(paths))
    latencies: list[float] = []
    bad = 0

    async def worker() -> None:
        nonlocal bad
        while queue:
            path = queue.pop()
            t0 = time.perf_counter()
            reply = await client.get(path)
            latencies.append((time.perf_counter() - t0) * 1000)
            bad += reply.status_code != 200

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return {"p50_ms": round(_pct(latencies, 0.5), 1), "p99_ms": round(_pct(latencies, 0.99), 1), "not_200": bad}


async def sign_in(client: httpx.AsyncClient) -> None:
    form = await client.get("/console/login")
    token = re.search(r'name="_csrf_token" value="([^"]+)"', form.text)
    assert token is not None
    reply = await client.post("/console/login", data={"_csrf_token": token.group(1), "token": "bench"})
    assert reply.status_code == 303, reply.text


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--dsn", default=None)
    parser.add_argument("--reuse", default=None, metavar="DSN", help="a database an earlier run filled")
    args = parser.parse_args()
    server = Server(args.dsn)
    try:
        if args.reuse:
            dsn = args.reuse
        else:
            dsn = await server.fresh_database()
            started = time.monotonic()
            await fill(dsn, args.events, 0)
            print(f"filled {args.events:,} events in {time.monotonic() - started:.0f} s", flush=True)
            started = time.monotonic()
            env = {**os.environ, "LEDGER_DATABASE_URL": dsn}
            subprocess.run([str(LEDGER), "rebuild"], env=env, check=True, capture_output=True)
            await settle(dsn)
            print(f"rebuilt the projections in {time.monotonic() - started:.0f} s", flush=True)
        conn = await asyncpg.connect(dsn)
        try:
            head = await conn.fetchval("SELECT position FROM ledger_head")
            seeds = await conn.fetchval("SELECT count(*) FROM orders")  # one order per checkout, seeds 0..n-1
        finally:
            await conn.close()
        rng = random.Random(7)
        sampled = [Checkout(seed=rng.randrange(seeds)) for _ in range(args.requests)]
        n = args.requests
        pages = {
            "overview": ["/console"] * n,
            "orders": ["/console/orders"] * n,
            "orders filtered (paid, live)": ["/console/orders?payment_status=paid&mode=live"] * n,
            "orders: search by email": [f"/console/orders?q={c.email}" for c in sampled],
            "an order with its timeline": [f"/console/orders/{c.session_id}" for c in sampled],
            "an order as of its 2nd event": [f"/console/orders/{c.session_id}?step=1" for c in sampled],
            "failed fulfillments": ["/console/fulfillment"] * n,
            "quarantine": ["/console/quarantine"] * n,
            "inventory": ["/console/inventory"] * n,
            "projections": ["/console/projections"] * n,
        }
        results: dict[str, Any] = {}
        with tempfile.TemporaryDirectory() as tmp:
            os.environ["LEDGER_RECONCILE_INTERVAL"] = "0"
            with Serving(dsn, 18600, Path(tmp), "--no-workers") as serving:
                api = httpx.AsyncClient(base_url=serving.url, timeout=30, headers={"authorization": "Bearer bench"})
                async with api, httpx.AsyncClient(base_url=serving.url, timeout=30) as client:
                    orders = [f"/v1/orders/{c.session_id}" for c in sampled]
                    await timed(api, orders[:10], 1)
                    baseline = await timed(api, orders, args.concurrency)
                    await sign_in(client)
                    for name, paths in pages.items():
                        await timed(client, paths[:10], 1)  # warm: the first call plans each query
                        results[name] = await timed(client, paths, args.concurrency)
        worst = max(r["p99_ms"] for r in results.values())
        print(f"log of {head:,} events, {args.requests} requests per page at concurrency {args.concurrency}")
        print(f"baseline GET /v1/orders/{{id}}: p50 {baseline['p50_ms']} ms, p99 {baseline['p99_ms']} ms")
        for name, r in results.items():
            print(f"  {name:<32} p50 {r['p50_ms']:>6} ms  p99 {r['p99_ms']:>6} ms  non-200 {r['not_200']}")
        print(f"worst page p99: {worst} ms (target < 100 ms)")
        print(json.dumps({"bench": "console", "events": head, "baseline": baseline, "pages": results}))
        if any(r["not_200"] for r in results.values()):
            sys.exit("some pages did not answer 200")
    finally:
        server.close()


if __name__ == "__main__":
    asyncio.run(main())
