"""Driving projections in tests: append events to the log, run every projection to the head,
and read back everything the read API would show."""

from __future__ import annotations

import json
from typing import Any

import asyncpg
import msgspec

from ledger.log import EventLog, NewEvent
from projections import documents
from projections.registry import PROJECTIONS
from projections.runner import catch_up_once


def as_new_event(event: dict[str, Any]) -> NewEvent:
    return NewEvent(
        event_id=event["event_id"],
        event_type=event["event_type"],
        raw_body=json.dumps(event).encode(),
        event_dt=event.get("event_dt"),
    )


async def append(pool: asyncpg.Pool, events: list[dict[str, Any]]) -> None:
    await EventLog(pool).append([as_new_event(e) for e in events])


async def project(pool: asyncpg.Pool, batch_size: int = 1000) -> None:
    async with pool.acquire() as conn:
        for projection in PROJECTIONS.values():
            while await catch_up_once(conn, projection, batch_size):
                pass


async def snapshot(pool: asyncpg.Pool, *, drop_positions: bool = True) -> dict[str, Any]:
    """Every order, customer, subscription and invoice as the read API shows them."""
    async with pool.acquire() as conn:
        sessions = [r[0] for r in await conn.fetch("SELECT checkout_session_id FROM orders ORDER BY 1")]
        customers = [r[0] for r in await conn.fetch("SELECT customer_id FROM customers ORDER BY 1")]
        subscriptions = [r[0] for r in await conn.fetch("SELECT subscription_id FROM subscriptions ORDER BY 1")]
        invoices = [r[0] for r in await conn.fetch("SELECT invoice_id FROM invoices ORDER BY 1")]
    out: dict[str, list[dict[str, Any]]] = {  # as the API encodes them
        "orders": [msgspec.to_builtins(await documents.get_order(pool, s)) for s in sessions],
        "customers": [msgspec.to_builtins(await documents.get_customer(pool, c)) for c in customers],
        "subscriptions": [msgspec.to_builtins(await documents.get_subscription(pool, s)) for s in subscriptions],
        "invoices": [msgspec.to_builtins(await documents.get_invoice(pool, i)) for i in invoices],
    }
    if drop_positions:
        for docs in out.values():
            for doc in docs:
                assert doc is not None
                doc.pop("position", None)
    return out
