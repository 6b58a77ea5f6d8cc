"""Cost as the log grows: the whole service measured at several log sizes in one run, one database.

    python -m bench.scale [--sizes 0 100000 1000000] [--webhooks 3000] [--dsn DSN] [--out bench/out]

The log is filled with realistic Flex traffic (checkouts, split carts, subscriptions, and the
reactor's line items and inventory adjustments) through the real append function in big
batches, with autovacuum off for the ledger's tables and nothing ever analysed (as on a fresh
deployment, a restore or a promoted replica). At each size it measures, against the same run's
naive one-row INSERTs where a ratio is given:

* signed webhooks/s (aiohttp, concurrency 32) through ``ledger serve`` (projections and reactor
  on) and through ``ledger serve --no-workers``, with p99 latency;
* the append path alone (``ledger_append`` in group-commit-sized batches);
* projection catch-up (all four projections, the lag the --no-workers run left);
* live lag: webhooks paced at 500/s through the default server, time from the last 200 until
  every projection has applied it;
* webhook p99 while 500 concurrent reads run (half of them read-your-writes waits);
* ``GET /v1/orders/{id}``, a filtered ``GET /v1/orders`` page deep in the cursor chain and a deep
  page of the adjustments feed: p50/p99 at concurrency 16;
* ``ledger verify`` events/s; ``ledger rebuild`` events/s and peak RSS; bytes on disk per event.

Prints a table, writes ``scale.json`` and ``scale.png`` (cost per event vs log size) under --out.
Without --dsn it starts a private embedded PostgreSQL.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

from bench.common import Server, events, naive_inserts, signed_headers
from bench.ingest import start_server
from bench.rebuild import run_rebuild
from ledger.log import EventLog, NewEvent
from ledger_cli.scenarios import Checkout, checkout_events, fulfillment_events
from projections.documents import encode_cursor
from projections.registry import PROJECTIONS
from projections.runner import catch_up_once

LEDGER = Path(sys.executable).parent / "ledger"
TABLES = (
    "events",
    "quarantine",
    "orders",
    "order_payment_intents",
    "customers",
    "subscriptions",
    "inventory_adjustments",
    "inventory_levels",
    "fulfillment_queue",
    "projection_state",
    "ledger_head",
)
AUTH = {"Authorization": "Bearer bench"}


# ---------------------------------------------------------------------------------------------
# Filling the log


def _traffic(seed: int) -> list[NewEvent]:
    """One checkout's webhooks and, once complete, the reactor's line items and adjustments."""
    c = Checkout(seed=seed, split=seed % 3 == 0, mode="subscription" if seed % 5 == 0 else "payment")
    out = [
        NewEvent(
            event_id=e["event_id"], event_type=e["event_type"], raw_body=json.dumps(e).encode(), event_dt=e["event_dt"]
        )
        for e in checkout_events(c)
    ]
    return out + fulfillment_events(c)


async def fill(dsn: str, target: int, seed: int) -> int:
    """Appends whole checkouts until the log holds ``target`` events; returns the next seed."""
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=1)
    log = EventLog(pool)
    try:
        head = await pool.fetchval("SELECT position FROM ledger_head")
        batch: list[NewEvent] = []
        started, last_report = time.monotonic(), 0
        while head + len(batch) < target:
            batch += _traffic(seed)
            seed += 1
            if len(batch) >= 5000:
                await log.append(batch)
                head += len(batch)
                batch = []
                if head - last_report >= 100_000:
                    rate = (head - last_report) / (time.monotonic() - started)
                    print(f"  filled {head:,} events ({rate:,.0f}/s)", flush=True)
                    started, last_report = time.monotonic(), head
        if batch:
            await log.append(batch)
    finally:
        await pool.close()
    return seed


# The reactor counts the filled history as handled: its sessions are not queued for fulfillment.
REACTOR_AT_HEAD = "UPDATE projection_state SET position = (SELECT position FROM ledger_head) WHERE name = 'fulfillment'"


async def settle(dsn: str) -> None:
    """Projections rebuilt to the head by the caller; the reactor moved to the head as well."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(REACTOR_AT_HEAD)
    finally:
        await conn.close()


# ---------------------------------------------------------------------------------------------
# Load generators (aiohttp)


def signed_requests(n: int, seed: int) -> list[tuple[dict[str, str], str]]:
    return [(signed_headers(body), body) for body in events(n, seed)]


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


async def post_webhooks(
    url: str, requests: list[tuple[dict[str, str], str]], concurrency: int, rate: float | None = None
) -> dict[str, float]:
    """Posts every request; returns events/s, p50/p99 ms, failures and the last position."""
    queue = list(reversed(requests))
    latencies: list[float] = []
    failures, last = 0, 0
    started = time.perf_counter()
    sent = 0

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal failures, last, sent
        while queue:
            headers, body = queue.pop()
            if rate is not None:  # paced: request k leaves at k / rate
                sent += 1
                delay = started + sent / rate - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
            t0 = time.perf_counter()
            async with session.post(url + "/webhooks/flex", data=body.encode(), headers=headers) as reply:
                payload = await reply.read()
            latencies.append((time.perf_counter() - t0) * 1000)
            if reply.status != 200:
                failures += 1
            else:
                last = max(last, json.loads(payload)["position"])

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    return {
        "per_s": len(requests) / elapsed,
        "p50_ms": _pct(latencies, 0.5),
        "p99_ms": _pct(latencies, 0.99),
        "failures": failures,
        "last": last,
    }


async def get_many(url: str, paths: list[str], concurrency: int) -> dict[str, float]:
    queue = list(reversed(paths))
    latencies: list[float] = []
    bad = 0

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal bad
        while queue:
            path = queue.pop()
            t0 = time.perf_counter()
            async with session.get(url + path, headers=AUTH) as reply:
                await reply.read()
            latencies.append((time.perf_counter() - t0) * 1000)
            bad += reply.status >= 500

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
    return {"p50_ms": _pct(latencies, 0.5), "p99_ms": _pct(latencies, 0.99), "errors": bad}


def _get_many_blocking(url: str, paths: list[str], concurrency: int) -> dict[str, float]:
    return asyncio.run(get_many(url, paths, concurrency))


# ---------------------------------------------------------------------------------------------
# One size


class Serving:
    """``ledger serve`` (optionally --no-workers) on a port, stopped on exit."""

    def __init__(self, dsn: str, port: int, workdir: Path, *extra: str) -> None:
        self.proc = start_server(dsn, port, workdir, *extra)
        self.url = f"http://127.0.0.1:{port}"

    def __enter__(self) -> Serving:
        return self

    def __exit__(self, *exc: object) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(30)


async def _sample(dsn: str, sql: str, *args: Any) -> Any:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetch(sql, *args)
    finally:
        await conn.close()


async def _lag_after(dsn: str, position: float, limit: float = 30.0) -> float:
    """Seconds until every projection has applied ``position``."""
    conn = await asyncpg.connect(dsn)
    started = time.perf_counter()
    try:
        while time.perf_counter() - started < limit:
            reached = await conn.fetchval(
                "SELECT min(position) FROM projection_state WHERE name = ANY($1)", list(PROJECTIONS)
            )
            if reached >= position:
                return time.perf_counter() - started
            await asyncio.sleep(0.005)
        return float("inf")
    finally:
        await conn.close()


async def measure(dsn: str, size: int, n_webhooks: int, workdir: Path, seed: int) -> dict[str, Any]:
    m: dict[str, Any] = {"events": size}
    # The naive baseline, in the same database, now.
    naive_bodies = events(n_webhooks, seed=seed + 1)
    m["naive_insert_per_s"] = await naive_inserts(dsn, naive_bodies, 32)

    # The append path alone: batches as group commit makes them under load.
    batch_events = [e for s in range(seed, seed + 200) for e in _traffic(10_000_000 + s)]
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=1)
    try:
        log, started = EventLog(pool), time.perf_counter()
        for i in range(0, len(batch_events), 32):
            await log.append(batch_events[i : i + 32])
        m["append_per_s"] = len(batch_events) / (time.perf_counter() - started)
    finally:
        await pool.close()

    # Ingest through the default server (workers on), then --no-workers.
    with Serving(dsn, 18100, workdir) as srv:
        await asyncio.sleep(1)  # runners past the append-path events
        r = await post_webhooks(srv.url, signed_requests(n_webhooks, seed + 2), 32)
        m.update(serve_per_s=r["per_s"], serve_p99_ms=r["p99_ms"], serve_failures=r["failures"])
        await _lag_after(dsn, r["last"])
        # Live lag at 500 webhooks/s.
        r = await post_webhooks(srv.url, signed_requests(3000, seed + 3), 32, rate=500)
        m["lag_at_500_s"] = await _lag_after(dsn, r["last"])
        m["paced_p99_ms"] = r["p99_ms"]
        # Webhooks while 500 reads run, half of them read-your-writes waits on the newest position.
        head = r["last"]
        ids = [row[0] for row in await _sample(dsn, "SELECT checkout_session_id FROM orders LIMIT 2000")]
        reads = [f"/v1/orders/{random.choice(ids)}" for _ in range(2500)]
        reads += [f"/v1/orders/{random.choice(ids)}?min_position={head + 1000}" for _ in range(2500)]
        random.shuffle(reads)
        # The reads come from a process of their own, so that the webhooks' latency is not
        # measured through a client event loop busy with 500 reads.
        with concurrent.futures.ProcessPoolExecutor(1) as readers:
            loop = asyncio.get_running_loop()
            reading = loop.run_in_executor(readers, _get_many_blocking, srv.url, reads, 500)
            await asyncio.sleep(0.5)  # the reads are under way
            r = await post_webhooks(srv.url, signed_requests(n_webhooks, seed + 4), 32)
            read_result = await reading
        m.update(mixed_webhook_p99_ms=r["p99_ms"], mixed_read_p99_ms=read_result["p99_ms"])
        await _lag_after(dsn, r["last"])

    with Serving(dsn, 18101, workdir, "--no-workers") as srv:
        r = await post_webhooks(srv.url, signed_requests(n_webhooks, seed + 5), 32)
        m.update(no_workers_per_s=r["per_s"], no_workers_p99_ms=r["p99_ms"], no_workers_failures=r["failures"])
        last = r["last"]

    # Catch-up: the four projections over what the --no-workers run left behind.
    conn = await asyncpg.connect(dsn)
    try:
        behind = last - await conn.fetchval(
            "SELECT min(position) FROM projection_state WHERE name = ANY($1)", list(PROJECTIONS)
        )
        started = time.perf_counter()
        for projection in PROJECTIONS.values():
            while await catch_up_once(conn, projection, 1000):
                pass
        m["catch_up_per_s"] = behind / (time.perf_counter() - started)
        await conn.execute(REACTOR_AT_HEAD)
    finally:
        await conn.close()

    # Reads at concurrency 16, the workers off so the reads are measured alone.
    orders = await _sample(
        dsn, "SELECT checkout_session_id, sort_at FROM orders ORDER BY sort_at DESC, checkout_session_id DESC"
    )
    deep = orders[int(len(orders) * 0.9)]
    cursor = encode_cursor(deep["sort_at"], deep["checkout_session_id"])
    adjustments = await _sample(dsn, "SELECT position FROM inventory_adjustments ORDER BY position")
    deep_after = adjustments[int(len(adjustments) * 0.9)]["position"] if adjustments else 0
    sample = [random.choice(orders)["checkout_session_id"] for _ in range(2000)]
    with Serving(dsn, 18102, workdir, "--no-workers") as srv:
        await get_many(srv.url, [f"/v1/orders/{s}" for s in sample[:200]], 16)  # warm the pool
        one = await get_many(srv.url, [f"/v1/orders/{s}" for s in sample], 16)
        page = await get_many(srv.url, [f"/v1/orders?status=complete&limit=20&cursor={cursor}"] * 2000, 16)
        feed = await get_many(srv.url, [f"/v1/inventory/adjustments?after={deep_after}&limit=100"] * 2000, 16)
    m.update(
        order_p50_ms=one["p50_ms"],
        order_p99_ms=one["p99_ms"],
        orders_page_p50_ms=page["p50_ms"],
        orders_page_p99_ms=page["p99_ms"],
        feed_page_p50_ms=feed["p50_ms"],
        feed_page_p99_ms=feed["p99_ms"],
        read_errors=one["errors"] + page["errors"] + feed["errors"],
    )

    # ledger verify and ledger rebuild, as an operator runs them.
    head = (await _sample(dsn, "SELECT position FROM ledger_head"))[0][0]
    env = {**os.environ, "LEDGER_DATABASE_URL": dsn}
    started = time.perf_counter()
    subprocess.run([str(LEDGER), "verify"], env=env, check=True, stdout=subprocess.DEVNULL)
    m["verify_per_s"] = head / (time.perf_counter() - started)
    seconds, rss_kib = run_rebuild(dsn)
    m.update(rebuild_per_s=head / seconds, rebuild_peak_rss_mib=rss_kib / 1024)
    size_row = await _sample(
        dsn, "SELECT pg_total_relation_size('events') AS bytes, (SELECT position FROM ledger_head) AS n"
    )
    m["bytes_per_event"] = size_row[0]["bytes"] / max(size_row[0]["n"], 1)
    m["log_head"] = head
    m["ingest_ratio"] = m["serve_per_s"] / m["naive_insert_per_s"]
    m["no_workers_ratio"] = m["no_workers_per_s"] / m["naive_insert_per_s"]
    return m


# ---------------------------------------------------------------------------------------------
# Report

# (key, label, format); no format: a latency shown as "p99 (p50)".
ROWS: list[tuple[str, str, Callable[[Any], str] | None]] = [
    ("log_head", "log size at measurement (events)", lambda v: f"{v:,}"),
    ("serve_per_s", "webhooks/s, `ledger serve` (workers on)", lambda v: f"{v:,.0f}"),
    ("serve_p99_ms", "  p99 ms", lambda v: f"{v:.1f}"),
    ("ingest_ratio", "  ÷ naive INSERTs", lambda v: f"{v:.2f}"),
    ("no_workers_per_s", "webhooks/s, `serve --no-workers`", lambda v: f"{v:,.0f}"),
    ("no_workers_p99_ms", "  p99 ms", lambda v: f"{v:.1f}"),
    ("no_workers_ratio", "  ÷ naive INSERTs", lambda v: f"{v:.2f}"),
    ("naive_insert_per_s", "naive one-row INSERTs/s (baseline)", lambda v: f"{v:,.0f}"),
    ("append_per_s", "append path alone, events/s", lambda v: f"{v:,.0f}"),
    ("catch_up_per_s", "projection catch-up, events/s (4 projections)", lambda v: f"{v:,.0f}"),
    ("lag_at_500_s", "live lag at 500 webhooks/s, s", lambda v: f"{v:.2f}"),
    ("mixed_webhook_p99_ms", "webhook p99 ms with 500 concurrent reads", lambda v: f"{v:.1f}"),
    ("order_p99_ms", "GET /v1/orders/{id} p99 ms (p50)", None),
    ("orders_page_p99_ms", "deep filtered orders page p99 ms (p50)", None),
    ("feed_page_p99_ms", "deep adjustments page p99 ms (p50)", None),
    ("verify_per_s", "`ledger verify` events/s", lambda v: f"{v:,.0f}"),
    ("rebuild_per_s", "`ledger rebuild` events/s", lambda v: f"{v:,.0f}"),
    ("rebuild_peak_rss_mib", "  peak RSS MiB", lambda v: f"{v:.0f}"),
    ("bytes_per_event", "bytes on disk per event (events table)", lambda v: f"{v:,.0f}"),
]


def table(results: list[dict[str, Any]]) -> str:
    header = "| measure | " + " | ".join(f"{r['events']:,} events" for r in results) + " |"
    lines = [header, "|---|" + "---:|" * len(results)]
    for key, label, fmt in ROWS:
        cells = []
        for r in results:
            if fmt is None:
                base = key.removesuffix("_p99_ms")
                cells.append(f"{r[key]:.1f} ({r[base + '_p50_ms']:.1f})")
            else:
                cells.append(fmt(r[key]))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def chart(results: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = [max(r["log_head"], 1) for r in results]
    series = {
        "webhook, serve (µs/event)": [1e6 / r["serve_per_s"] for r in results],
        "webhook, --no-workers (µs/event)": [1e6 / r["no_workers_per_s"] for r in results],
        "append path (µs/event)": [1e6 / r["append_per_s"] for r in results],
        "catch-up (µs/event)": [1e6 / r["catch_up_per_s"] for r in results],
        "verify (µs/event)": [1e6 / r["verify_per_s"] for r in results],
        "rebuild (µs/event)": [1e6 / r["rebuild_per_s"] for r in results],
        "GET order p99 (µs)": [r["order_p99_ms"] * 1000 for r in results],
        "deep orders page p99 (µs)": [r["orders_page_p99_ms"] * 1000 for r in results],
        "deep adjustments page p99 (µs)": [r["feed_page_p99_ms"] * 1000 for r in results],
    }
    fig, ax = plt.subplots(figsize=(9, 5.5))
    for label, values in series.items():
        ax.plot(sizes, values, marker="o", label=label)
    ax.set_xscale("symlog", linthresh=10_000)
    ax.set_yscale("log")
    ax.set_xlabel("events in the log")
    ax.set_ylabel("cost (µs per event, or µs per request)")
    ax.set_title("flex-ledger: cost per event as the log grows (flat is the goal)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    fig.tight_layout()
    fig.savefig(path, dpi=90)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[0, 100_000, 1_000_000])
    parser.add_argument("--webhooks", type=int, default=3000, help="webhooks per ingest measurement")
    parser.add_argument("--dsn", default=None)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "out")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    server = Server(args.dsn)
    results = []
    try:
        dsn = await server.fresh_database()
        conn = await asyncpg.connect(dsn)
        for t in TABLES:
            await conn.execute(f"ALTER TABLE {t} SET (autovacuum_enabled = false)")
        await conn.execute("ALTER TABLE bench_naive SET (autovacuum_enabled = false)")
        await conn.close()
        seed = 0
        with tempfile.TemporaryDirectory() as tmp:
            for size in sorted(args.sizes):
                print(f"== {size:,} events", flush=True)
                started = time.monotonic()
                seed = await fill(dsn, size, seed)
                subprocess.run(
                    [str(LEDGER), "rebuild"],
                    env={**os.environ, "LEDGER_DATABASE_URL": dsn},
                    check=True,
                    stdout=subprocess.DEVNULL,
                )
                await settle(dsn)
                print(f"  filled and projected in {time.monotonic() - started:.0f} s", flush=True)
                m = await measure(dsn, size, args.webhooks, Path(tmp), seed=1_000_000 + size)
                results.append(m)
                print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in m.items()}), flush=True)
        print()
        print(table(results))
        (args.out / "scale.json").write_text(json.dumps(results, indent=2))
        (args.out / "scale.md").write_text(table(results) + "\n")
        chart(results, args.out / "scale.png")
        print(f"\nwrote {args.out / 'scale.json'}, {args.out / 'scale.md'} and {args.out / 'scale.png'}")
    finally:
        server.close()


if __name__ == "__main__":
    asyncio.run(main())
