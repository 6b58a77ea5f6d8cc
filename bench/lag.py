"""Live lag under sustained webhook load: from a webhook's 200 to the order being visible.

    python bench/lag.py [--rate 500] [--seconds 20] [--dsn DSN]

Sends realistic checkouts (about six events each) as signed webhooks to the real server at
``--rate`` events per second; for every `checkout.session.completed`, polls the read API from
the moment its 200 arrives until the order shows `complete`, and reports the p50/p99/max lag.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from bench.common import Server, signed_headers
from bench.ingest import start_server
from ledger_cli.scenarios import Checkout, checkout_events

TOKEN = "bench"


async def watch(session: aiohttp.ClientSession, url: str, session_id: str, since: float, lags: list[float]) -> None:
    while True:
        async with session.get(f"{url}/v1/orders/{session_id}", headers={"authorization": f"Bearer {TOKEN}"}) as r:
            if r.status == 200 and (await r.json())["status"] == "complete":
                lags.append(time.perf_counter() - since)
                return
        await asyncio.sleep(0.005)


async def load(url: str, rate: int, seconds: int) -> tuple[list[float], int, int]:
    events: list[dict[str, Any]] = []
    seed = 0
    while len(events) < rate * seconds:
        events += checkout_events(Checkout(seed=seed, split=seed % 3 == 0, start=int(time.time()) + seed))
        seed += 1
    lags: list[float] = []
    watchers: list[asyncio.Task[None]] = []
    failures = 0
    connector = aiohttp.TCPConnector(limit=64)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def send(event: dict[str, Any]) -> None:
            nonlocal failures
            body = json.dumps(event)
            async with session.post(f"{url}/webhooks/flex", data=body, headers=signed_headers(body)) as r:
                if r.status != 200:
                    failures += 1
                    return
            if event["event_type"] == "checkout.session.completed":
                sid = event["object"]["checkout_session"]["checkout_session_id"]
                watchers.append(asyncio.create_task(watch(session, url, sid, time.perf_counter(), lags)))

        started = time.perf_counter()
        senders = []
        for i, event in enumerate(events):
            delay = started + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            senders.append(asyncio.create_task(send(event)))
        await asyncio.gather(*senders)
        achieved = len(events) / (time.perf_counter() - started)
        await asyncio.wait_for(asyncio.gather(*watchers), 60)
    return lags, failures, round(achieved)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=int, default=500)
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--dsn", default=None)
    args = parser.parse_args()
    server = Server(args.dsn)
    try:
        dsn = await server.fresh_database()
        with tempfile.TemporaryDirectory() as tmp:
            proc = start_server(dsn, 18300, Path(tmp))
            try:
                lags, failures, achieved = await load("http://127.0.0.1:18300", args.rate, args.seconds)
            finally:
                proc.send_signal(signal.SIGTERM)
                proc.wait(30)
        lags.sort()
        p99 = lags[min(len(lags) - 1, int(len(lags) * 0.99))]
        print(
            f"{achieved} events/s for {args.seconds} s: {len(lags)} orders, lag from 200 to visible: "
            f"p50 {statistics.median(lags) * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms, max {lags[-1] * 1000:.0f} ms; "
            f"non-200 replies {failures}"
        )
        print(
            json.dumps(
                {
                    "bench": "lag",
                    "rate": achieved,
                    "orders": len(lags),
                    "p50_ms": round(statistics.median(lags) * 1000),
                    "p99_ms": round(p99 * 1000),
                    "max_ms": round(lags[-1] * 1000),
                    "non_200": failures,
                }
            )
        )
    finally:
        server.close()


if __name__ == "__main__":
    asyncio.run(main())
