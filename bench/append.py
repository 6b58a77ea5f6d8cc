"""Append path alone (no HTTP): the group-committed, serialised, hash-chained append against naive
one-row-per-transaction INSERTs of the same rows into the same database, same concurrency.

    python bench/append.py [--events 5000] [--concurrency 32] [--rounds 3] [--dsn DSN]

Without --dsn it starts a private embedded PostgreSQL. Prints one line per round and the medians.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

from bench.common import Server, events, median, naive_inserts
from ledger.db import create_pool
from ledger.envelope import parse_envelope
from ledger.group_commit import GroupCommitter
from ledger.log import EventLog, NewEvent


async def ledger_appends(dsn: str, bodies: list[str], concurrency: int) -> tuple[float, float]:
    pool = await create_pool(dsn, min_size=2, max_size=4)
    log = EventLog(pool)
    sizes: list[int] = []
    queue: asyncio.Queue[str] = asyncio.Queue()
    for b in bodies:
        queue.put_nowait(b)

    async with GroupCommitter(log, on_batch=sizes.append) as committer:

        async def producer() -> None:
            while True:
                try:
                    body = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                env = parse_envelope(body.encode())
                await committer.append(
                    NewEvent(
                        event_id=env.event_id,
                        event_type=env.event_type,
                        event_dt=env.event_dt,
                        occurred_at=env.occurred_at,
                        raw_body=body.encode(),
                        headers='{"svix-id": "m"}',
                        message_id="m",
                    )
                )

        started = time.perf_counter()
        await asyncio.gather(*(producer() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    await pool.close()
    return len(bodies) / elapsed, sum(sizes) / max(len(sizes), 1)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dsn", default=None)
    args = parser.parse_args()
    server = Server(args.dsn)
    ratios, ledger_rates, naive_rates = [], [], []
    try:
        for r in range(args.rounds):
            bodies = events(args.events, seed=r)
            dsn = await server.fresh_database()
            naive = await naive_inserts(dsn, bodies, args.concurrency)
            rate, mean_batch = await ledger_appends(dsn, bodies, args.concurrency)
            ratios.append(rate / naive)
            ledger_rates.append(rate)
            naive_rates.append(naive)
            print(
                f"round {r + 1}: ledger append {rate:,.0f} events/s (mean batch {mean_batch:.1f}), "
                f"naive INSERT {naive:,.0f} rows/s, ratio {rate / naive:.2f}",
                flush=True,
            )
        print(
            json.dumps(
                {
                    "bench": "append",
                    "events": args.events,
                    "concurrency": args.concurrency,
                    "ledger_per_s": round(median(ledger_rates)),
                    "naive_per_s": round(median(naive_rates)),
                    "ratio_median": round(median(ratios), 2),
                }
            )
        )
    finally:
        server.close()


if __name__ == "__main__":
    asyncio.run(main())
