"""An order's history in the log, and the order as it stood at any position (time travel).

The orders projection records which events touched which session and payment intent
(``order_history``); an order's history is the events of its session and of its payment intents.
Time travel folds those events, up to a position, with the projection's own fold
(``projections.orders.fold``) and builds the document the read API serves
(``projections.documents``): there is no second implementation of what an order is.
"""

from __future__ import annotations

import contextlib
import functools
import json
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any, TypeVar

import asyncpg

from ledger.db import connection
from ledger.log import LoggedEvent, events_at, logged, position_at
from projections import documents
from projections.apply import decode_rows
from projections.base import Deltas, LogRow, Projection
from projections.mergeable import Mergeable
from projections.orders import ORDERS
from projections.shapes import Order
from projections.sql import projection_queries as queries

__all__ = ["documents_at", "histories", "order_as_of", "order_at", "order_events", "order_timeline", "orders_at"]

_EVERY_POSITION = 2**63 - 1
_T = TypeVar("_T")


async def _history(
    conn: asyncpg.Connection, record: asyncpg.Record, upto: int, intents: list[str] | None = None
) -> list[int]:
    """The positions (up to ``upto``) of every event that touched the order: its session's, its
    payment intents' (their refunds and disputes included), its fulfillment's and adjustments'.
    ``intents``: the order's payment intent ids when the caller has them already."""
    if intents is None:
        [(_, _, found)] = await documents.intents_of(conn, [record])
        intents = [pi for pi, _, _ in found]
    entities = [record["checkout_session_id"], *intents]
    touched = await histories(conn, queries.order_history_of, entities, upto)
    return sorted({position for positions in touched.values() for position in positions})


async def histories(conn: asyncpg.Connection, query: str, entities: Sequence[str], upto: int) -> dict[str, list[int]]:
    """The positions (up to ``upto``) of the events that touched each of ``entities``, by a
    ``*_history_of`` query: one round trip for them all."""
    out: dict[str, list[int]] = {entity: [] for entity in entities}
    for r in await conn.fetch(query, list(out), upto):
        out[r["entity_id"]].append(r["position"])
    return out


async def _rows_at(conn: asyncpg.Connection, positions: set[int]) -> dict[int, LogRow]:
    """The decoded events at ``positions``, by position: one round trip."""
    rows, _ = decode_rows(await events_at(conn, sorted(positions)))
    return {row.position: row for row in rows}


async def _order_records(pool: asyncpg.Pool, checkout_session_id: str) -> list[asyncpg.Record] | None:
    """The log rows of every event that touched the order, oldest first; ``None``: no such order."""
    async with connection(pool) as conn:
        record = await conn.fetchrow(queries.order_get, checkout_session_id)
        if record is None:
            return None
        return await events_at(conn, await _history(conn, record, _EVERY_POSITION))


async def order_events(pool: asyncpg.Pool, checkout_session_id: str) -> list[LoggedEvent] | None:
    """Every log event that touched the order, oldest first; ``None`` when there is no such order."""
    records = await _order_records(pool, checkout_session_id)
    return None if records is None else logged(records)


async def order_timeline(pool: asyncpg.Pool, checkout_session_id: str) -> list[dict[str, Any]] | None:
    """The order's events as the console shows them: each with its raw body and the headers it
    came with (signature headers included), its position and its place in the hash chain."""
    records = await _order_records(pool, checkout_session_id)
    if records is None:
        return None
    return [
        {
            "position": r["position"],
            "event_id": r["event_id"],
            "event_type": r["event_type"],
            "source": r["source"],
            "occurred_at": r["occurred_at"],
            "recorded_at": r["recorded_at"],
            "raw_body": bytes(r["raw_body"]).decode("utf-8", "replace"),
            "headers": json.loads(r["headers"]) if r["headers"] else {},
            "message_id": r["message_id"],
            "prev_hash": bytes(r["prev_hash"]).hex(),
            "hash": bytes(r["hash"]).hex(),
        }
        for r in records
    ]


async def order_as_of(
    pool: asyncpg.Pool, checkout_session_id: str, *, position: int | None = None, moment: datetime | None = None
) -> Order | None:
    """The order exactly as it stood after log ``position`` and/or the last position recorded at or
    before ``moment`` (the earlier of the two), folded from the log with the orders projection's own
    fold. ``None`` when the
    order did not exist yet (or does not exist). ``flags`` that compare it with other orders
    (``duplicate_payment``) are as of now."""
    async with connection(pool) as conn:
        upto = min(
            position if position is not None else _EVERY_POSITION,
            await position_at(conn, moment) if moment is not None else _EVERY_POSITION,
        )
        return await order_at(conn, checkout_session_id, upto)


async def order_at(conn: asyncpg.Connection, checkout_session_id: str, upto: int) -> Order | None:
    """``order_as_of`` a log position, on a connection."""
    return (await orders_at(conn, {checkout_session_id: [upto]}))[checkout_session_id][upto]


async def orders_at(
    conn: asyncpg.Connection, wanted: Mapping[str, Sequence[int]]
) -> dict[str, dict[int, Order | None]]:
    """Each order (by checkout session id) as it stood after each of its ``wanted`` positions
    (``None`` where it did not exist yet): every history read at once, up to the last position
    asked, and each folded once in log order with the orders projection's own fold, taking the
    document at each position (outbound delivery's ``order.updated``: a batch's orders, many
    positions each). A fixed number of round trips, whatever the number of orders."""
    asked = {sid: sorted(set(positions)) for sid, positions in wanted.items()}
    out: dict[str, dict[int, Order | None]] = {sid: dict.fromkeys(positions) for sid, positions in asked.items()}
    records = [r for r in await conn.fetch(queries.orders_get_many, list(asked)) if asked[r["checkout_session_id"]]]
    if not records:
        return out
    currents = await documents.with_intents(conn, records)  # their intents, and flags as of now
    entities = {
        order.checkout_session_id: [order.checkout_session_id, *(p.payment_intent_id for p in order.payment_intents)]
        for order in currents
    }
    upto = max(asked[sid][-1] for sid in entities)
    touched = await histories(conn, queries.order_history_of, [e for es in entities.values() for e in es], upto)
    history = {sid: sorted({p for e in es for p in touched[e] if p <= asked[sid][-1]}) for sid, es in entities.items()}
    rows = await _rows_at(conn, {p for positions in history.values() for p in positions})
    for order in currents:
        sid, completed_twice = order.checkout_session_id, "duplicate_payment" in order.flags
        own = [rows[p] for p in history[sid] if p in rows]
        take = functools.partial(_document, checkout_session_id=sid, completed_twice=completed_twice)
        out[sid] = _snapshots(own, ORDERS.fold, asked[sid], take)
    return out


def _snapshots(
    rows: Sequence[LogRow], fold: Callable[[LogRow, Deltas], bool], wanted: list[int], take: Callable[[Deltas], _T]
) -> dict[int, _T]:
    """Folds ``rows`` (one entity's history, in log order) once, taking ``take`` of what was folded
    after each position in ``wanted`` (sorted): time travel to many positions at the cost of one."""
    out: dict[int, _T] = {}
    deltas = Deltas()
    taken = 0
    for row in rows:
        while taken < len(wanted) and wanted[taken] < row.position:
            out[wanted[taken]] = take(deltas)
            taken += 1
        with contextlib.suppress(Exception):  # as the projection: an event it cannot fold is skipped
            fold(row, deltas)
    for position in wanted[taken:]:
        out[position] = take(deltas)
    return out


async def documents_at(
    conn: asyncpg.Connection,
    projection: Projection,
    history: str,
    wanted: Mapping[str, Sequence[int]],
    build: Callable[[str, int, Mergeable], _T],
) -> dict[str, dict[int, _T | None]]:
    """Customers' or subscriptions' documents (``build``: ``projections.documents``) as they stood
    after each of their ``wanted`` positions, folded from their histories (``history``: the
    ``*_history_of`` query) with the projection's own fold; ``None`` where one did not exist yet.
    Two round trips, whatever the number of entities."""
    asked = {entity_id: sorted(set(positions)) for entity_id, positions in wanted.items() if positions}
    if not asked:
        return {}
    table = projection.tables[0].name
    touched = await histories(conn, history, list(asked), max(positions[-1] for positions in asked.values()))
    rows = await _rows_at(conn, {p for e, positions in touched.items() for p in positions if p <= asked[e][-1]})
    out: dict[str, dict[int, _T | None]] = {}
    for entity_id, positions in asked.items():

        def take(deltas: Deltas, entity_id: str = entity_id) -> _T | None:
            state = deltas.by_table.get(table, {}).get(entity_id)
            return None if state is None else build(entity_id, deltas.positions[table][entity_id], state)

        own = [rows[p] for p in touched[entity_id] if p <= positions[-1] and p in rows]
        out[entity_id] = _snapshots(own, projection.fold, positions, take)
    return out


def _document(deltas: Deltas, checkout_session_id: str, completed_twice: bool) -> Order | None:
    """The order document of what ``deltas`` folded so far."""
    state = deltas.by_table.get("orders", {}).get(checkout_session_id)
    if state is None:
        return None
    known = deltas.by_table.get("order_payment_intents", {})
    listed = set(state.items("payment_intent_ids"))
    naming = {pi for pi, s in known.items() if s.get("checkout_session_id") == checkout_session_id}
    positions = deltas.positions
    intents: documents.Intents = [
        (pi, positions["order_payment_intents"][pi], known[pi]) if pi in known else (pi, 0, None)
        for pi in sorted(listed | naming)
    ]
    as_of = {"checkout_session_id": checkout_session_id, "position": positions["orders"][checkout_session_id]}
    return documents.order_document(as_of, state, intents, completed_twice=completed_twice)
