"""Outbound delivery's throughput against its ceiling, replaying a log to one destination.

    python -m bench.delivery [--checkouts 20000] [--latency 0.05] [--concurrency 32] [--dsn DSN]
    python -m bench.delivery --live [--rate 200] [--seconds 30] [--dsn DSN]
    python -m bench.delivery --failing [--checkouts 20000] [--dsn DSN]
    python -m bench.delivery --ingest-rate 100 [--checkouts 20000] [--dsn DSN]

Replay (the default): fills a fresh database with realistic checkouts and their fulfillment (the
reactor's events), projects it, then adds a destination pointing at a receiver (another process,
aiohttp) that answers ``200`` after ``--latency`` seconds, replays it from position 1 and runs
``ledger work`` until every message is delivered. The ceiling is ``concurrency / latency`` messages
per second (what the receiver allows); the figure is delivered messages per second, and its ratio
to the ceiling and to a baseline of the same run: a plain client (no signing, no database) posting
to the same receiver at the same concurrency (on two shared cores it falls short of the ceiling).

``--ingest-rate R``: the same replay while ``ledger serve --no-workers`` takes ``R`` signed webhooks
a second (the load generator in this process); ``ledger work`` projects them, fulfils them and
delivers their messages too, so delivery shares the two cores with ingest. Every message delivered
meanwhile counts; the run ends when the replayed backlog is delivered.

``--live``: ``ledger serve`` takes signed webhooks at ``--rate`` per second while one healthy
destination (answering at once) is delivered to; the figure is each message's latency from the
moment its source event was recorded to its arrival at the receiver (p50, p99).

``--failing``: the same replay to a receiver that answers ``500``, with a one-attempt schedule, so
every message ends ``failed``; the figure is ``ledger work``'s resident memory as they pile up.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterable
from pathlib import Path

import asyncpg
import httpx
import psutil
from httpx_aiohttp import AiohttpTransport

from bench.common import Server
from ledger.log import EventLog, NewEvent
from ledger_cli.processes import free_port
from ledger_cli.scenarios import Checkout, checkout_events, fulfillment_events
from projections.registry import PROJECTIONS
from projections.runner import catch_up_once

RECEIVER = """
import asyncio, json, sys, time
from datetime import datetime
from aiohttp import web
latency, status = float(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) > 3 else 200
async def hook(request):
    body = await request.read()
    await asyncio.sleep(latency)
    if len(sys.argv) > 4:  # print each message's age: from its source event's recording to now
        recorded = datetime.fromisoformat(json.loads(body)["timestamp"].replace("Z", "+00:00")).timestamp()
        print(f"{time.time() - recorded:.4f}", flush=True)
    return web.Response(status=status)
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


async def plain_client_rate(port: int, concurrency: int, count: int = 3000) -> float:
    """The baseline of the same run: what a plain client (httpx over aiohttp, no signing, no
    database) gets from the same receiver at the same concurrency, in messages per second."""
    body = b'{"type":"order.updated","data":{}}' + b" " * 600
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=64)
    async with httpx.AsyncClient(transport=AiohttpTransport(limits=limits), timeout=30) as client:
        gate = asyncio.Semaphore(concurrency)

        async def one() -> None:
            async with gate:
                await client.post(f"http://127.0.0.1:{port}/hooks", content=body)

        await asyncio.gather(*(one() for _ in range(200)))  # connections opened, receiver warm
        started = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(count)))
        return count / (time.perf_counter() - started)


async def _failed(dsn: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM destination_messages WHERE status = 'failed'"))
    finally:
        await conn.close()


async def delivered(dsn: str, up_to: int | None = None) -> tuple[int, int, int]:
    """Messages delivered, the destination's checkpoint, and messages still to deliver (of the log
    up to position ``up_to`` when given)."""
    conn = await asyncpg.connect(dsn)
    try:
        row = await conn.fetchrow(
            "SELECT d.delivered_count, d.position, (SELECT count(*) FROM destination_messages m "
            "WHERE m.destination_id = d.destination_id AND m.status = 'retrying' "
            "AND ($1::bigint IS NULL OR m.position <= $1)) AS retrying FROM destinations d",
            up_to,
        )
        return int(row["delivered_count"]), int(row["position"]), int(row["retrying"])
    finally:
        await conn.close()


async def live(server: Server, rate: int, seconds: int, concurrency: int) -> None:
    """Latency of delivery while ``ledger serve`` takes ``rate`` webhooks a second."""
    import statistics

    from bench.common import SECRET, events

    dsn = await server.fresh_database()
    port, serve_port = free_port(), free_port()
    ages = Path(tempfile.mkdtemp()) / "ages.txt"
    with ages.open("w") as out:
        receiver = subprocess.Popen([sys.executable, "-c", RECEIVER, str(port), "0", "200", "ages"], stdout=out)
    env = {
        **os.environ,
        "LEDGER_DATABASE_URL": dsn,
        "LEDGER_DELIVERY_ALLOW_PRIVATE": "true",
        "LEDGER_DELIVERY_CONCURRENCY": str(concurrency),
        "LEDGER_RECONCILE_INTERVAL": "0",
        "LEDGER_WEBHOOK_SECRETS": SECRET,
        "LEDGER_API_TOKENS": "bench",
    }
    ledger = str(Path(sys.executable).parent / "ledger")
    subprocess.run(
        [ledger, "destinations", "add", f"http://127.0.0.1:{port}/hooks", "--mode", "all"],
        env=env,
        capture_output=True,
        check=True,
    )
    serve = subprocess.Popen([ledger, "serve", "--port", str(serve_port), "--log-level", "warning"], env=env)
    try:
        # aiohttp under httpx: the load generator shares the two cores and must cost little per POST
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{serve_port}", timeout=30, transport=AiohttpTransport()
        ) as client:
            await wait_ready(client)
            bodies = events(rate * seconds, seed=7)
            await post_paced(client, bodies, rate)
        while (await delivered(dsn))[2] or (await delivered(dsn))[1] < int(await _head(dsn)):
            await asyncio.sleep(0.5)
        await asyncio.sleep(1)
    finally:
        serve.terminate()
        serve.wait(30)
        receiver.terminate()
        receiver.wait(30)
    values = sorted(float(line) for line in ages.read_text().split())
    p50 = statistics.median(values)
    p99 = values[int(len(values) * 0.99) - 1]
    print(
        f"{len(bodies)} webhooks at {rate}/s -> {len(values)} messages; age at arrival p50 {p50 * 1000:.0f} ms, "
        f"p99 {p99 * 1000:.0f} ms, max {values[-1] * 1000:.0f} ms"
    )
    print(
        json.dumps(
            {
                "bench": "delivery-live",
                "rate": rate,
                "messages": len(values),
                "p50_ms": round(p50 * 1000),
                "p99_ms": round(p99 * 1000),
            }
        )
    )


async def post_paced(client: httpx.AsyncClient, bodies: Iterable[str], rate: float) -> None:
    """POSTs each body, signed, to the webhook endpoint at ``rate`` a second, not waiting for
    answers before the next is due; returns when every one is answered."""
    from bench.common import signed_headers

    started = time.perf_counter()
    pending = []
    try:
        for i, body in enumerate(bodies):
            await asyncio.sleep(max(0.0, started + i / rate - time.perf_counter()))
            pending.append(
                asyncio.ensure_future(client.post("/webhooks/flex", content=body, headers=signed_headers(body)))
            )
        await asyncio.gather(*pending)
    finally:
        for p in pending:
            p.cancel()


async def wait_ready(client: httpx.AsyncClient) -> None:
    for _ in range(100):
        with contextlib.suppress(httpx.HTTPError):
            if (await client.get("/readyz")).status_code == 200:
                return
        await asyncio.sleep(0.2)
    raise RuntimeError("ledger serve did not get ready")


@contextlib.asynccontextmanager
async def ingesting(env: dict[str, str], rate: float) -> AsyncIterator[None]:
    """``ledger serve --no-workers`` taking ``rate`` signed webhooks a second for the context."""
    from bench.common import SECRET, checkout_event

    if not rate:
        yield
        return
    port = free_port()
    ledger = str(Path(sys.executable).parent / "ledger")
    serve = subprocess.Popen(
        [ledger, "serve", "--no-workers", "--port", str(port), "--log-level", "warning"],
        env={**env, "LEDGER_WEBHOOK_SECRETS": SECRET, "LEDGER_API_TOKENS": "bench"},
    )
    try:
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}", timeout=30, transport=AiohttpTransport()
        ) as client:
            await wait_ready(client)
            rng = random.Random(11)  # made as they are sent: the run's length is not known ahead
            load = asyncio.ensure_future(post_paced(client, (checkout_event(i, rng) for i in itertools.count()), rate))
            try:
                yield
            finally:
                load.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await load
    finally:
        serve.terminate()
        serve.wait(30)


async def _head(dsn: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval("SELECT position FROM ledger_head"))
    finally:
        await conn.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkouts", type=int, default=20_000)
    parser.add_argument("--latency", type=float, default=0.05)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--dsn", default=None)
    parser.add_argument("--live", action="store_true", help="latency while serve takes webhooks")
    parser.add_argument("--rate", type=int, default=200)
    parser.add_argument("--seconds", type=int, default=30)
    parser.add_argument("--failing", action="store_true", help="every message fails: memory as they pile up")
    parser.add_argument("--ingest-rate", type=float, default=0, help="webhooks a second taken meanwhile")
    args = parser.parse_args()
    server = Server(args.dsn)
    if args.live:
        try:
            await live(server, args.rate, args.seconds, args.concurrency)
        finally:
            server.close()
        return
    ledger = str(Path(sys.executable).parent / "ledger")
    receiver = work = None
    try:
        dsn = await server.fresh_database()
        head = await fill(dsn, args.checkouts)
        port = free_port()
        status = "500" if args.failing else "200"
        receiver = subprocess.Popen([sys.executable, "-c", RECEIVER, str(port), str(args.latency), status])
        baseline = None
        if not args.failing:
            for _ in range(50):
                with contextlib.suppress(httpx.HTTPError):
                    baseline = await plain_client_rate(port, args.concurrency)
                    break
                await asyncio.sleep(0.2)
        env = {
            **os.environ,
            "LEDGER_DATABASE_URL": dsn,
            "LEDGER_DELIVERY_ALLOW_PRIVATE": "true",
            "LEDGER_DELIVERY_CONCURRENCY": str(args.concurrency),
            "LEDGER_RECONCILE_INTERVAL": "0",
            "LEDGER_METRICS_PORT": "0",
            **({"LEDGER_DELIVERY_SCHEDULE": "0"} if args.failing else {}),
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
        rss: list[tuple[int, float]] = []  # (failed messages, MiB) as they pile up
        async with ingesting(env, args.ingest_rate):
            while True:
                await asyncio.sleep(1)
                last = await delivered(dsn, head)
                _, position, retrying = last
                if args.failing:
                    rss.append((await _failed(dsn), psutil.Process(work.pid).memory_info().rss / 2**20))
                if position >= head and derived_at is None:
                    derived_at = time.perf_counter() - started
                if position >= head and retrying == 0:
                    break
                if time.perf_counter() - started > 3600:
                    raise RuntimeError(f"not done in an hour: {last}")
        ingested = await _head(dsn) - head
        if args.failing:
            for i in (len(rss) // 10, len(rss) // 2, len(rss) - 1):
                print(f"{rss[i][0]:,} failed messages queued: ledger work RSS {rss[i][1]:.0f} MiB")
            sampled = [[failed, round(mib)] for failed, mib in rss[:: max(1, len(rss) // 20)]]
            print(json.dumps({"bench": "delivery-failing", "rss_mib": sampled}))
            return
        elapsed = time.perf_counter() - started
        rate = last[0] / elapsed
        ceiling = args.concurrency / args.latency
        plain = baseline or 0.0
        print(
            f"{head:,} log events -> {last[0]:,} messages delivered in {elapsed:.1f} s: {rate:,.0f} messages/s; "
            f"ceiling {ceiling:,.0f}/s (concurrency {args.concurrency} / {args.latency * 1000:.0f} ms): "
            f"ratio {rate / ceiling:.2f}; a plain client to the same receiver, same run: {plain:,.0f}/s "
            f"(ratio {rate / plain if plain else 0:.2f}); every message derived after {derived_at or 0:.1f} s"
            + (f"; {ingested:,} events appended meanwhile ({ingested / elapsed:,.0f}/s)" if args.ingest_rate else "")
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
                    "plain_client_per_s": round(plain),
                    "ratio_to_plain_client": round(rate / plain, 3) if plain else None,
                    "ingested": ingested,
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
