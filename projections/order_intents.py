"""An order's payment intents, and the payment status the orders table keeps for its filter.

The orders projection's runner settles ``orders.payment_status`` after each batch
(``settle_payment_status``, its ``after_write``) and a rebuild once after its bulk load
(``settle_every_payment_status``); the read side joins the same intents to answer an order
(``projections.documents``). Both read the projection's own tables; nothing here is read-side code
a fold would depend on.
"""

from __future__ import annotations

import asyncpg

from projections.mergeable import Mergeable
from projections.money import order_money
from projections.sql import projection_queries as queries

__all__ = ["Intents", "intents_of", "settle_every_payment_status", "settle_payment_status"]

Intents = list[tuple[str, int, Mergeable | None]]  # (payment intent id, position, state if known)


async def intents_of(
    conn: asyncpg.Connection, records: list[asyncpg.Record]
) -> list[tuple[asyncpg.Record, Mergeable, Intents]]:
    """Each order's state with its payment intents: those its session lists and those that name
    its session, whichever arrived first. One round trip for all of them."""
    states = [Mergeable.for_reading(record["state"]) for record in records]
    listed = {
        record["checkout_session_id"]: state.items("payment_intent_ids")
        for record, state in zip(records, states, strict=True)
    }
    found: dict[str, tuple[str | None, int, Mergeable]] = {}
    for row in await conn.fetch(
        queries.order_intents, sorted({pi for ids in listed.values() for pi in ids}), list(listed)
    ):
        if row["payment_intent_id"] not in found:
            state = Mergeable.for_reading(row["state"])
            found[row["payment_intent_id"]] = (row["checkout_session_id"], row["position"], state)
    naming: dict[str, set[str]] = {}
    for pi_id, (session_id, _, _) in found.items():
        if session_id is not None:
            naming.setdefault(session_id, set()).add(pi_id)
    out: list[tuple[asyncpg.Record, Mergeable, Intents]] = []
    for record, state in zip(records, states, strict=True):
        ids = sorted(set(listed[record["checkout_session_id"]]) | naming.get(record["checkout_session_id"], set()))
        intents: Intents = [(pi, found[pi][1], found[pi][2]) if pi in found else (pi, 0, None) for pi in ids]
        out.append((record, state, intents))
    return out


async def settle_payment_status(conn: asyncpg.Connection, written: dict[str, dict[str, Mergeable]]) -> None:
    """Keeps ``orders.payment_status`` (a list filter) in step with everything it depends on: the
    orders just written, and the orders of the payment intents just written (their refunds and
    disputes included). Runs in the orders runner's transaction, after the batch's upserts."""
    sessions = set(written.get("orders", {}))
    for intent in written.get("order_payment_intents", {}).values():
        if isinstance(linked := intent.get("checkout_session_id"), str):
            sessions.add(linked)
    await _settle(conn, sorted(sessions))


async def settle_every_payment_status(conn: asyncpg.Connection, chunk: int = 2000) -> None:
    """``settle_payment_status`` for every order, a chunk at a time in key order: how a rebuild
    settles them once, after its bulk load and its indexes, instead of after every batch."""
    last = ""
    while ids := [r[0] for r in await conn.fetch(queries.orders_ids_after, last, chunk)]:
        await _settle(conn, ids)
        last = ids[-1]


async def _settle(conn: asyncpg.Connection, sessions: list[str]) -> None:
    if not sessions:
        return
    records = await conn.fetch(queries.orders_get_many, sessions)
    orders = await intents_of(conn, list(records))
    await conn.execute(
        queries.orders_payment_status_set,
        [record["checkout_session_id"] for record, _, _ in orders],
        [
            order_money(
                amount_total=state.get("amount_total"), order=state, intents=[(pi, s) for pi, _, s in intents]
            ).payment_status
            for _, state, intents in orders
        ],
    )
