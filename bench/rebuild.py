"""Rebuild throughput against a plain ordered scan of the same log, and peak memory by log size.

    python bench/rebuild.py [--sizes 100000 300000] [--dsn DSN]

For each size: appends that many events of realistic checkouts (split carts, subscriptions) to
a fresh database, times a plain asyncpg scan of the log in position order (rows decoded from
JSON, as a projection must), then runs `ledger rebuild` (all projections) in a subprocess and
reports its events/s (log events / wall time) and peak RSS.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import asyncpg
import msgspec

from bench.common import Server
from ledger.log import EventLog, NewEvent
from ledger_cli.scenarios import Checkout, checkout_events
from projections.registry import PROJECTIONS


async def fill(dsn: str, n_events: int) -> int:
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
    log = EventLog(pool)
    batch: list[NewEvent] = []
    written, seed = 0, 0
    try:
        while written < n_events:
            c = Checkout(seed=seed, split=seed % 3 == 0, mode="subscription" if seed % 5 == 0 else "payment")
            seed += 1
            for e in checkout_events(c):
                batch.append(
                    NewEvent(
                        event_id=e["event_id"],
                        event_type=e["event_type"],
                        raw_body=json.dumps(e).encode(),
                        event_dt=e["event_dt"],
                    )
                )
            if len(batch) >= 2000:
                written += len(await log.append(batch))
                batch = []
        if batch:
            written += len(await log.append(batch))
    finally:
        await pool.close()
    return written


SCANS = {
    # what a rebuild must read at least, decoded from JSON as a projection must
    "lean": "SELECT position, event_type, raw_body FROM events WHERE position > $1 ORDER BY position LIMIT 5000",
    # every column, as `SELECT *` returns it
    "full": "SELECT * FROM events WHERE position > $1 ORDER BY position LIMIT 5000",
}


async def scan(dsn: str, query: str) -> float:
    """A plain ordered scan of the log, in pages of 5,000: rows per second."""
    decode = msgspec.json.Decoder().decode
    conn = await asyncpg.connect(dsn)
    try:
        started, after, rows = time.perf_counter(), 0, 0
        while True:
            records = await conn.fetch(query, after)
            if not records:
                break
            if "raw_body" in records[0] and "payload" not in records[0]:
                for r in records:
                    decode(r["raw_body"])
            rows += len(records)
            after = records[-1]["position"]
        return rows / (time.perf_counter() - started)
    finally:
        await conn.close()


def run_rebuild(dsn: str) -> tuple[float, int]:
    """Seconds and peak RSS (KiB) of `ledger rebuild` in a subprocess."""
    ledger = Path(sys.executable).parent / "ledger"
    started = time.perf_counter()
    proc = subprocess.Popen(
        [str(ledger), "rebuild"],
        env={**os.environ, "LEDGER_DATABASE_URL": dsn},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError("ledger rebuild failed")
    return elapsed, usage.ru_maxrss


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 300_000])
    parser.add_argument("--dsn", default=None)
    args = parser.parse_args()
    server = Server(args.dsn)
    results = []
    try:
        for size in args.sizes:
            dsn = await server.fresh_database()
            n = await fill(dsn, size)
            # scans are short and noisy: the median of three of each
            lean = statistics.median([await scan(dsn, SCANS["lean"]) for _ in range(3)])
            full = statistics.median([await scan(dsn, SCANS["full"]) for _ in range(3)])
            seconds, rss = run_rebuild(dsn)
            rate = n / seconds
            results.append(
                {
                    "events": n,
                    "rebuild_per_s": round(rate),
                    "lean_scan_per_s": round(lean),
                    "full_scan_per_s": round(full),
                    "ratio_lean": round(rate / lean, 3),
                    "ratio_full": round(rate / full, 3),
                    "peak_rss_mib": round(rss / 1024, 1),
                }
            )
            print(
                f"{n:,} events: rebuild ({len(PROJECTIONS)} projections, whole command) "
                f"{rate:,.0f} events/s in {seconds:.1f} s; "
                f"lean scan {lean:,.0f} rows/s (ratio {rate / lean:.3f}); "
                f"SELECT * scan {full:,.0f} rows/s (ratio {rate / full:.3f}); peak RSS {rss / 1024:.0f} MiB",
                flush=True,
            )
        print(json.dumps({"bench": "rebuild", "results": results}))
    finally:
        server.close()


if __name__ == "__main__":
    asyncio.run(main())
