"""Signed webhooks per second through the real server (verification, durable append, reply)
against naive one-row-per-transaction asyncpg INSERTs of the same rows into the same database,
same concurrency, same run. The load generator is wrk (C, Lua script), so it is not the limit.

    python bench/ingest.py [--events 6000] [--concurrency 32] [--rounds 3] [--dsn DSN]

Without --dsn it starts a private embedded PostgreSQL. Needs wrk on PATH (Debian: apt-get install wrk).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import httpx
from svix.webhooks import Webhook

from bench.common import SECRET, Server, events, median, naive_inserts

HERE = Path(__file__).resolve().parent


def write_requests(bodies: list[str], path: Path) -> None:
    wh = Webhook(SECRET)
    now = datetime.now(UTC)
    with path.open("w") as out:
        for i, body in enumerate(bodies):
            msg_id = f"msg_bench_{i}_{os.getpid()}"
            out.write(f"{msg_id}\t{int(now.timestamp())}\t{wh.sign(msg_id, now, body)}\t{body}\n")


def add_destination(dsn: str) -> subprocess.Popen[bytes]:
    """A receiver answering in 50 ms (``bench.delivery``'s), and a destination pointing at it."""
    from bench.delivery import RECEIVER
    from ledger_cli.processes import free_port

    port = free_port()
    receiver = subprocess.Popen([sys.executable, "-c", RECEIVER, str(port), "0.05"])
    ledger = Path(sys.executable).parent / "ledger"
    subprocess.run(
        [str(ledger), "destinations", "add", f"http://127.0.0.1:{port}/hooks", "--mode", "all"],
        env={**os.environ, "LEDGER_DATABASE_URL": dsn, "LEDGER_DELIVERY_ALLOW_PRIVATE": "true"},
        capture_output=True,
        check=True,
    )
    return receiver


def start_worker(dsn: str, workdir: Path) -> subprocess.Popen[bytes]:
    """`ledger work`: the projections and the reactor in their own process."""
    ledger = Path(sys.executable).parent / "ledger"
    env = {**os.environ, "LEDGER_DATABASE_URL": dsn, "LEDGER_DATA_DIR": str(workdir)}
    with open(workdir / "work.log", "wb") as log:
        return subprocess.Popen([str(ledger), "work", "--log-level", "warning"], env=env, stdout=log, stderr=log)


def start_server(dsn: str, port: int, workdir: Path, *extra: str) -> subprocess.Popen[bytes]:
    ledger = Path(sys.executable).parent / "ledger"
    env = {
        **os.environ,
        "LEDGER_DATABASE_URL": dsn,
        "LEDGER_WEBHOOK_SECRETS": SECRET,
        "LEDGER_API_TOKENS": "bench",
        "LEDGER_DATA_DIR": str(workdir),
        "LEDGER_DELIVERY_ALLOW_PRIVATE": "true",  # the --destination receiver is on this machine
    }
    with open(workdir / "serve.log", "wb") as log:
        proc = subprocess.Popen(
            [str(ledger), "serve", "--port", str(port), "--log-level", "warning", *extra],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError("server did not start: " + (workdir / "serve.log").read_text())


def run_wrk(port: int, requests_file: Path, concurrency: int, threads: int, seconds: int) -> dict[str, int]:
    """wrk's own duration includes its fixed -d sleep, so the rate is measured from the log instead."""
    out = subprocess.run(
        [
            "wrk",
            "-t",
            str(threads),
            "-c",
            str(concurrency),
            "-d",
            f"{seconds}s",
            "--timeout",
            "10s",
            "-s",
            str(HERE / "webhooks.lua"),
            f"http://127.0.0.1:{port}",
            "--",
            str(requests_file),
            str(threads),
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    line = next(x for x in out.splitlines() if x.startswith("RESULT"))
    return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", line)}


async def ingest_window(dsn: str) -> tuple[int, float]:
    """Events stored, and the seconds between the first and the last commit that stored them."""
    conn = await asyncpg.connect(dsn)
    try:
        row = await conn.fetchrow(
            "SELECT count(*) AS n, extract(epoch FROM max(recorded_at) - min(recorded_at)) AS s FROM events"
        )
        return int(row["n"]), float(row["s"])
    finally:
        await conn.close()


async def delivered_total(dsn: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval("SELECT coalesce(sum(delivered_count), 0) FROM destinations"))
    finally:
        await conn.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=6000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1, help="wrk threads")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dsn", default=None)
    parser.add_argument(
        "--ingest-only",
        action="store_true",
        help="`ledger serve --no-workers` and no worker at all: the ingest path alone (projections wait)",
    )
    parser.add_argument(
        "--destination",
        action="store_true",
        help="one outbound destination (a receiver answering in 50 ms, all message types) while webhooks come in",
    )
    parser.add_argument(
        "--split",
        action="store_true",
        help="`ledger serve --no-workers` plus a `ledger work` process, instead of one process doing both",
    )
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("bench/ingest.py needs wrk on PATH (Debian/Ubuntu: apt-get install wrk)")
    server = Server(args.dsn)
    ratios, rates, naive_rates, p99s = [], [], [], []
    try:
        for r in range(args.rounds):
            bodies = events(args.events, seed=100 + r)
            dsn = await server.fresh_database()
            naive = await naive_inserts(dsn, bodies, args.concurrency)
            with tempfile.TemporaryDirectory() as tmp:
                work = Path(tmp)
                # the same events for the server, under new ids (the naive table is separate anyway)
                write_requests(bodies, work / "requests.tsv")
                port = 18000 + r
                receiver = add_destination(dsn) if args.destination else None
                worker = start_worker(dsn, work) if args.split else None
                no_workers = args.split or args.ingest_only
                proc = start_server(dsn, port, work, *(["--no-workers"] if no_workers else []))
                try:
                    seconds = int(len(bodies) / 500) + 10
                    res = run_wrk(port, work / "requests.tsv", args.concurrency, args.threads, seconds)
                finally:
                    for p in (proc, worker, receiver):
                        if p is not None:
                            p.send_signal(signal.SIGTERM)
                            p.wait(30)
            stored, window = await ingest_window(dsn)
            sent = await delivered_total(dsn) if args.destination else None
            rate = (stored - 1) / window
            ratios.append(rate / naive)
            rates.append(rate)
            naive_rates.append(naive)
            p99s.append(res["p99_us"] / 1000)
            print(
                f"round {r + 1}: server {rate:,.0f} webhooks/s (p50 {res['p50_us'] / 1000:.1f} ms, "
                f"p99 {res['p99_us'] / 1000:.1f} ms, non-2xx {res['non2xx']}, socket errors {res['errors']}, "
                f"stored {stored}/{len(bodies)}), naive INSERT {naive:,.0f} rows/s, ratio {rate / naive:.2f}"
                + (f"; {sent:,} messages delivered meanwhile" if sent is not None else ""),
                flush=True,
            )
        print(
            json.dumps(
                {
                    "bench": "ingest",
                    "mode": "split" if args.split else "ingest only" if args.ingest_only else "one process",
                    "destination": args.destination,
                    "events": args.events,
                    "concurrency": args.concurrency,
                    "server_per_s": round(median(rates)),
                    "naive_per_s": round(median(naive_rates)),
                    "p99_ms_median": round(median(p99s), 1),
                    "ratio_median": round(median(ratios), 2),
                }
            )
        )
    finally:
        server.close()


if __name__ == "__main__":
    asyncio.run(main())
