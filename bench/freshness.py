"""Read-your-writes reads under load: do they cost more than the same reads without the wait?

    python -m bench.freshness [--events 300000] [--reads 200] [--rate 200] [--dsn DSN]

A log of ``--events`` events (whole checkouts, projected) and the real server, with its workers.
Signed webhooks arrive at ``--rate`` per second throughout. Then three rounds each of:

* ``--reads`` plain reads at once (the baseline): an order by id, the orders list, the orders
  list filtered by status, the projections, the inventory (every price: the generated checkouts
  each have prices of their own, so at 300,000 events this reply is 8.7 MB, the heaviest read);
* the same reads at once, each with ``?min_position=`` the position a webhook was just given
  (what a success page does after the webhook's reply).

Measured: each read's time (raw sockets, so the client spends next to nothing), how many read
fresh, and the webhooks' p50/p99 during each kind. The target: read-your-writes reads within the
wait limit (5 s) of the plain ones, and webhooks as fast during them as during plain reads.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

from bench.common import Server
from bench.ingest import start_server
from bench.scale import _pct, fill, settle, signed_requests
from ledger_cli.processes import ledger_command, raw_get

PORT = 18600
TOKEN = "bench"  # bench.ingest.start_server's API token
PATHS = [
    "/v1/orders/{session}",
    "/v1/orders?limit=20",
    "/v1/orders?status=complete",
    "/v1/projections",
    "/v1/inventory",
]


class Webhooks:
    """Signed webhooks at a steady rate until stopped, each one's send time and latency kept."""

    def __init__(self, url: str, rate: int, seconds: int) -> None:
        self.url, self.rate = url, rate
        self.requests = signed_requests(rate * seconds, seed=7)
        self.timed: list[tuple[float, float]] = []  # (sent at, seconds)
        self.last_position = 0
        self.failures = 0

    async def run(self, stop: asyncio.Event) -> None:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64)) as session:
            started, pending = time.monotonic(), set()
            for k, (headers, body) in enumerate(self.requests):
                if stop.is_set():
                    break
                await asyncio.sleep(max(0.0, started + k / self.rate - time.monotonic()))
                task = asyncio.ensure_future(self._post(session, headers, body))
                pending.add(task)
                task.add_done_callback(pending.discard)
            await asyncio.gather(*pending)

    async def _post(self, session: aiohttp.ClientSession, headers: dict[str, str], body: str) -> None:
        sent = time.monotonic()
        async with session.post(self.url + "/webhooks/flex", data=body.encode(), headers=headers) as reply:
            payload = await reply.read()
        self.timed.append((sent, time.monotonic() - sent))
        if reply.status == 200:
            self.last_position = max(self.last_position, json.loads(payload)["position"])
        else:
            self.failures += 1

    def latencies(self, windows: list[tuple[float, float]]) -> list[float]:
        return [s for sent, s in self.timed if any(a <= sent <= b for a, b in windows)]


async def sessions(dsn: str, n: int) -> list[str]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT checkout_session_id FROM orders ORDER BY checkout_session_id LIMIT $1", n)
        return [r[0] for r in rows]
    finally:
        await conn.close()


async def measure(dsn: str, reads: int, rate: int, rounds: int) -> dict[str, Any]:
    known = await sessions(dsn, reads)
    paths = [PATHS[i % len(PATHS)].format(session=known[i % len(known)]) for i in range(reads)]
    webhooks = Webhooks(f"http://127.0.0.1:{PORT}", rate, seconds=600)
    stop = asyncio.Event()
    sender = asyncio.ensure_future(webhooks.run(stop))
    results: dict[str, Any] = {}
    try:
        await asyncio.sleep(5)  # the rate settles
        quiet_from = time.monotonic()
        await asyncio.sleep(10)
        results["webhooks_alone"] = {"window": [(quiet_from, time.monotonic())]}
        for kind in ("plain", "read_your_writes"):
            took, fresh, windows = [], 0, []
            for _ in range(rounds):
                position = webhooks.last_position
                query = f"min_position={position}"
                batch = [p + ("&" if "?" in p else "?") + query if kind != "plain" else p for p in paths]
                started = time.monotonic()
                answers = await asyncio.gather(*(raw_get(PORT, p, TOKEN) for p in batch))
                windows.append((started, time.monotonic()))
                took += [s for s, _ in answers]
                fresh += sum(b"ledger-projection-fresh: true" in r for _, r in answers)
                bad = [r[:60] for _, r in answers if not r.startswith((b"HTTP/1.1 200", b"HTTP/1.1 404"))]
                assert not bad, bad[:3]
                await asyncio.sleep(3)
            results[kind] = {
                "window": windows,
                "read_p50_s": round(_pct(took, 0.5), 2),
                "read_max_s": round(max(took), 2),
                "fresh": f"{fresh}/{len(took)}" if kind != "plain" else "-",
            }
    finally:
        stop.set()
        await sender
    for value in results.values():
        latencies = webhooks.latencies(value.pop("window"))
        value["webhook_p50_ms"] = round(_pct(latencies, 0.5) * 1000, 1)
        value["webhook_p99_ms"] = round(_pct(latencies, 0.99) * 1000, 1)
    results["webhook_failures"] = webhooks.failures
    return results


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=300_000)
    parser.add_argument("--reads", type=int, default=200)
    parser.add_argument("--rate", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dsn", default=None, help="a PostgreSQL server (a fresh database is made on it)")
    args = parser.parse_args()
    server = Server(args.dsn)
    try:
        dsn = await server.fresh_database()
        await fill(dsn, args.events, seed=1)
        subprocess.run([ledger_command(), "rebuild"], env={**os.environ, "LEDGER_DATABASE_URL": dsn}, check=True)
        await settle(dsn)
        with tempfile.TemporaryDirectory() as tmp:
            proc = start_server(dsn, PORT, Path(tmp))
            try:
                results = await measure(dsn, args.reads, args.rate, args.rounds)
            finally:
                proc.send_signal(signal.SIGTERM)
                proc.wait(30)
        print(f"log of {args.events:,} events; {args.rate} webhooks/s throughout; {args.reads} reads at once")
        print(f"{'':<22}{'read p50':>10}{'read max':>10}{'fresh':>10}{'webhook p50':>13}{'webhook p99':>13}")
        for kind in ("webhooks_alone", "plain", "read_your_writes"):
            r = results[kind]
            print(
                f"{kind:<22}{r.get('read_p50_s', '-'):>10}{r.get('read_max_s', '-'):>10}{r.get('fresh', '-'):>10}"
                f"{r['webhook_p50_ms']:>13}{r['webhook_p99_ms']:>13}"
            )
        print(json.dumps({"bench": "freshness", "events": args.events, **results}))
    finally:
        server.close()


if __name__ == "__main__":
    asyncio.run(main())
