"""Reconcile at scale: 10,000 sessions in a Flex that answers each page in 50 ms, 20 % lost.

    python -m bench.reconcile [--sessions 10000] [--lost 0.2] [--delay 0.05] [--dsn DSN]

The project's Flex stand-in knows every checkout (session, payment intents) and answers every call
after ``--delay`` seconds. The webhooks of ``1 - lost`` of the checkouts are in the log (appended
straight to it) and the real server has projected and fulfilled them; the others' webhooks were
all lost. Then, measured:

* the baseline: paging the three lists alone, no database (what any reconcile must wait for);
* ``ledger reconcile`` (the command, process start included): time, sessions examined per second;
* recovery: from that run's end until every lost checkout is fulfilled by the running server;
* a no-op run (everything known): its time, and that it records nothing.

Targets: the no-op run under 15 s; the lost checkouts fulfilled within 60 s of the run's end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from bench.common import Server
from bench.fulfillment import fulfilled
from bench.ingest import start_server
from ledger.log import EventLog, NewEvent
from ledger_cli.processes import run_standin
from ledger_cli.scenarios import Checkout, checkout_events
from projections.observations import KINDS
from reactors.flex_client import FlexClient

FLEX_KEY = "fsk_test_bench"


def checkouts(n: int) -> list[Checkout]:
    """``n`` checkouts over the last two days (inside the default 72 h window), every third split."""
    first = int(time.time()) - 48 * 3600
    step = max(1, 47 * 3600 // max(n, 1))
    return [Checkout(seed=i, split=i % 3 == 0, start=first + i * step) for i in range(n)]


async def seed_log(dsn: str, delivered: list[Checkout]) -> int:
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
    try:
        batch: list[NewEvent] = []
        count = 0
        for c in delivered:
            for e in checkout_events(c):
                batch.append(
                    NewEvent(event_id=e["event_id"], event_type=e["event_type"], raw_body=json.dumps(e).encode())
                )
            if len(batch) >= 2000:
                await EventLog(pool).append(batch)
                count += len(batch)
                batch = []
        if batch:
            await EventLog(pool).append(batch)
            count += len(batch)
        return count
    finally:
        await pool.close()


def teach_standin(url: str, all_checkouts: list[Checkout]) -> None:
    with httpx.Client(timeout=120) as client:
        for at in range(0, len(all_checkouts), 500):
            chunk = all_checkouts[at : at + 500]
            body = {
                "events": [e for c in chunk for e in checkout_events(c)],
                "line_items": {c.session_id: c.line_items() for c in chunk},
            }
            client.post(url + "/_standin/events", json=body).raise_for_status()


async def page_everything(api_base: str) -> tuple[float, int]:
    """The baseline: every page of the three lists, kinds concurrently (as reconcile pages), no database."""
    client = FlexClient(api_base, FLEX_KEY)
    total = 0

    async def walk(path: str, key: str) -> int:
        seen, after = 0, None
        while True:
            page = await client.list_page(path, key, limit=100, starting_after=after)
            seen += len(page)
            if len(page) < 100:
                return seen
            after = page[-1][next(k.id_field for k in KINDS.values() if k.list_key == key)]

    started = time.perf_counter()
    try:
        counts = await asyncio.gather(*(walk(k.list_path, k.list_key) for k in KINDS.values()))
        total = sum(counts)
    finally:
        await client.aclose()
    return time.perf_counter() - started, total


async def wait_fulfilled(dsn: str, n: int, limit: float) -> float:
    started = time.perf_counter()
    while (done := (await fulfilled(dsn))[0]) < n:
        if time.perf_counter() - started > limit:
            sys.exit(f"only {done} of {n} fulfilled after {limit:.0f} s")
        await asyncio.sleep(0.1)
    return time.perf_counter() - started


def run_reconcile(dsn: str, api_base: str) -> tuple[float, dict[str, Any]]:
    env = {**os.environ, "LEDGER_DATABASE_URL": dsn, "FLEX_API_KEY": FLEX_KEY, "FLEX_API_BASE_URL": api_base}
    ledger = Path(sys.executable).parent / "ledger"
    started = time.perf_counter()
    out = subprocess.run([str(ledger), "reconcile", "--json"], env=env, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - started
    if out.returncode != 0:
        sys.exit(f"ledger reconcile failed: {out.stderr}")
    return elapsed, json.loads(out.stdout)


def totals(report: dict[str, Any]) -> dict[str, int]:
    return {what: sum(k[what] for k in report["kinds"].values()) for what in ("examined", "known", "recorded")}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", type=int, default=10_000)
    parser.add_argument("--lost", type=float, default=0.2)
    parser.add_argument("--delay", type=float, default=0.05)
    parser.add_argument("--dsn", default=None)
    args = parser.parse_args()
    everything = checkouts(args.sessions)
    lost_every = round(1 / args.lost) if args.lost > 0 else 0
    lost = [c for i, c in enumerate(everything) if lost_every and i % lost_every == 0]
    delivered = [c for c in everything if c not in lost]
    server = Server(args.dsn)
    try:
        dsn = await server.fresh_database()
        logged = await seed_log(dsn, delivered)
        with run_standin(FLEX_KEY, delay=args.delay) as standin, tempfile.TemporaryDirectory() as tmp:
            teach_standin(standin.url, everything)
            os.environ.update(
                FLEX_API_KEY=FLEX_KEY,
                FLEX_API_BASE_URL=standin.api_base,
                LEDGER_RECONCILE_INTERVAL="0",
                LEDGER_FULFILLMENT_CONCURRENCY="64",
            )
            proc = start_server(dsn, 18500, Path(tmp))
            try:
                warm = await wait_fulfilled(dsn, len(delivered), 900)
                print(f"{len(delivered)} delivered checkouts ({logged} webhooks) fulfilled in {warm:.0f} s", flush=True)
                baseline, listed = await page_everything(standin.api_base)
                first_s, first = run_reconcile(dsn, standin.api_base)
                recovery = await wait_fulfilled(dsn, len(everything), 300)
                noop_s, noop = run_reconcile(dsn, standin.api_base)
            finally:
                proc.send_signal(signal.SIGTERM)
                proc.wait(30)
        first_totals, noop_totals = totals(first), totals(noop)
        sessions_examined = first["kinds"]["checkout_session"]["examined"]
        result = {
            "bench": "reconcile",
            "sessions": args.sessions,
            "lost_sessions": len(lost),
            "flex_delay_ms": args.delay * 1000,
            "baseline_paging_s": round(baseline, 2),
            "resources_listed": listed,
            "run_s": round(first_s, 2),
            "run_sessions_per_s": round(sessions_examined / first_s),
            "run": first_totals,
            "recovery_after_run_s": round(recovery, 2),
            "noop_run_s": round(noop_s, 2),
            "noop_run": noop_totals,
            "noop_vs_baseline": round(noop_s / baseline, 2),
        }
        print(
            f"baseline: paging {listed} resources ({args.delay * 1000:.0f} ms a page) takes {baseline:.1f} s\n"
            f"reconcile: {first_s:.1f} s, {result['run_sessions_per_s']} sessions examined/s, "
            f"recorded {first_totals['recorded']} observations for {len(lost)} lost checkouts\n"
            f"recovery: every lost checkout fulfilled {recovery:.1f} s after the run ended (target < 60 s)\n"
            f"no-op run: {noop_s:.1f} s (target < 15 s; {noop_s / baseline:.2f} x the paging alone), "
            f"recorded {noop_totals['recorded']}"
        )
        print(json.dumps(result))
    finally:
        server.close()


if __name__ == "__main__":
    asyncio.run(main())
