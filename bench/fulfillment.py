"""Fulfillment throughput: completed sessions fulfilled per second against a slow Flex.

    python bench/fulfillment.py [--sessions 1000] [--delay 0.05] [--concurrency 32] [--dsn DSN]

Appends ``--sessions`` completed checkouts straight to the log, starts the project's Flex
stand-in answering every line-items call after ``--delay`` seconds, starts the real server with
``LEDGER_FULFILLMENT_CONCURRENCY``, and times from start until every session is fulfilled.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

import asyncpg

from bench.common import Server
from bench.ingest import start_server
from ledger.log import EventLog, NewEvent
from ledger_cli.flex_standin import made_up_line_items
from ledger_cli.processes import run_standin
from ledger_cli.scenarios import Checkout, checkout_events

FLEX_KEY = "fsk_test_bench"


async def seed(dsn: str, sessions: int) -> None:
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
    try:
        batch = []
        for i in range(sessions):
            completed = checkout_events(Checkout(seed=i))[-1]
            batch.append(
                NewEvent(
                    event_id=completed["event_id"],
                    event_type=completed["event_type"],
                    raw_body=json.dumps(completed).encode(),
                )
            )
        await EventLog(pool).append(batch)
    finally:
        await pool.close()


async def fulfilled(dsn: str) -> tuple[int, int]:
    conn = await asyncpg.connect(dsn)
    try:
        row = await conn.fetchrow(
            "SELECT count(*) FILTER (WHERE status = 'fulfilled') AS done, count(*) AS queued FROM fulfillment_queue"
        )
        return row["done"], row["queued"]
    finally:
        await conn.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", type=int, default=1000)
    parser.add_argument("--delay", type=float, default=0.05)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--dsn", default=None)
    args = parser.parse_args()
    server = Server(args.dsn)
    try:
        dsn = await server.fresh_database()
        await seed(dsn, args.sessions)
        with run_standin(FLEX_KEY, delay=args.delay) as standin, tempfile.TemporaryDirectory() as tmp:
            os.environ.update(
                FLEX_API_KEY=FLEX_KEY,
                FLEX_API_BASE_URL=standin.api_base,
                LEDGER_FULFILLMENT_CONCURRENCY=str(args.concurrency),
            )
            started = time.perf_counter()
            proc = start_server(dsn, 18400, Path(tmp))
            try:
                while True:
                    done, _ = await fulfilled(dsn)
                    if done >= args.sessions:
                        break
                    if time.perf_counter() - started > 600:
                        sys.exit(f"only {done} of {args.sessions} fulfilled after 600 s")
                    await asyncio.sleep(0.05)
                elapsed = time.perf_counter() - started
            finally:
                proc.send_signal(signal.SIGTERM)
                proc.wait(30)
            calls = standin.calls()
        conn = await asyncpg.connect(dsn)
        try:
            adjusted = await conn.fetchval("SELECT count(*) FROM events WHERE event_type = 'ledger.inventory.adjusted'")
        finally:
            await conn.close()
        expected = sum(len(made_up_line_items(Checkout(seed=i).session_id)) for i in range(args.sessions))
        rate = args.sessions / elapsed
        print(
            f"{args.sessions} sessions fulfilled in {elapsed:.1f} s (server start included): {rate:.0f} sessions/s "
            f"at concurrency {args.concurrency} against a {args.delay * 1000:.0f} ms Flex; {calls} Flex calls; "
            f"{adjusted} adjustments logged for {expected} line items"
        )
        print(
            json.dumps(
                {
                    "bench": "fulfillment",
                    "sessions": args.sessions,
                    "seconds": round(elapsed, 2),
                    "sessions_per_s": round(rate),
                    "concurrency": args.concurrency,
                    "flex_delay_ms": args.delay * 1000,
                    "flex_calls": calls,
                    "adjustments": adjusted,
                    "line_items": expected,
                }
            )
        )
    finally:
        server.close()


if __name__ == "__main__":
    asyncio.run(main())
