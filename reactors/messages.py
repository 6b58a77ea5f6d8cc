"""The ledger's own messages to the merchant's systems, derived from the log alone.

A message is a function of one log position: ``inventory.adjusted`` for each adjustment the log
records (``projections.inventory.adjustment_at``); ``order.updated``, ``customer.updated``,
``subscription.updated`` and ``invoice.updated`` for each order, customer, subscription and invoice
an event changed, carrying the document as it stood after that position (``projections.history``:
the folds time travel uses; an invoice with its subscription as it stood then).
Its id is a function of (position, type, object id) and its body of the log, so every attempt,
replay and destination sends the same id and the same bytes.

Body: ``{"type", "timestamp" (when the source event was recorded), "position", "test_mode", "data"}``.
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import asyncpg
import msgspec

from projections.base import Deltas, LogRow, Projection, like_patterns
from projections.customers import CUSTOMERS
from projections.documents import customer_document, invoice_document, subscription_document
from projections.history import documents_at, orders_at
from projections.inventory import INVENTORY, adjustment_at
from projections.invoices import INVOICES
from projections.ledger_events import ADJUSTED
from projections.orders import ORDERS
from projections.sql import projection_queries
from projections.subscriptions import SUBSCRIPTIONS
from reactors.sql import reactor_queries as sql

__all__ = ["MESSAGE_TYPES", "PATTERNS", "SOURCES", "Message", "derive", "message_id", "wanted"]

INVENTORY_ADJUSTED = "inventory.adjusted"
ORDER_UPDATED = "order.updated"
CUSTOMER_UPDATED = "customer.updated"
SUBSCRIPTION_UPDATED = "subscription.updated"
INVOICE_UPDATED = "invoice.updated"
MESSAGE_TYPES = (INVENTORY_ADJUSTED, ORDER_UPDATED, CUSTOMER_UPDATED, SUBSCRIPTION_UPDATED, INVOICE_UPDATED)
_READ_MODELS = (ORDERS, INVENTORY, CUSTOMERS, SUBSCRIPTIONS, INVOICES)
# The projections whose documents messages carry: a destination derives no further than they have applied.
SOURCES = tuple(p.name for p in _READ_MODELS)
PATTERNS = like_patterns({prefix for p in _READ_MODELS for prefix in p.prefixes})
# Customers and subscriptions: the projection, its table, the query of an entity's history, its document.
_ENTITIES = (
    (CUSTOMER_UPDATED, CUSTOMERS, projection_queries.customer_history_of, customer_document),
    (SUBSCRIPTION_UPDATED, SUBSCRIPTIONS, projection_queries.subscription_history_of, subscription_document),
)


class Message(msgspec.Struct, frozen=True, kw_only=True):
    message_id: str
    type: str
    position: int
    test_mode: bool
    body: bytes


class _Body(msgspec.Struct, kw_only=True):
    type: str
    timestamp: str
    position: int
    test_mode: bool
    data: Any


_encode = msgspec.json.Encoder().encode


def message_id(position: int, message_type: str, object_id: str) -> str:
    """The message's id: the same for (position, type, object) on every attempt, replay and destination."""
    digest = hashlib.sha256(f"{position}\x1f{message_type}\x1f{object_id}".encode()).hexdigest()
    return f"msg_{position}_{digest[:24]}"


def wanted(message_type: str, types: Sequence[str]) -> bool:
    """Whether a destination asking for ``types`` (types or prefixes like ``order.*``; none: all) gets it."""
    return not types or any(fnmatch.fnmatchcase(message_type, t) for t in types)


def _message(kind: str, position: int, object_id: str, recorded_at: datetime, test_mode: bool, data: Any) -> Message:
    body = _Body(
        type=kind,
        timestamp=recorded_at.isoformat().replace("+00:00", "Z"),
        position=position,
        test_mode=test_mode,
        data=data,
    )
    return Message(
        message_id=message_id(position, kind, object_id),
        type=kind,
        position=position,
        test_mode=test_mode,
        body=_encode(body),
    )


async def derive(conn: asyncpg.Connection, rows: Sequence[LogRow], *, renewals: bool = True) -> list[Message]:
    """Every message the events ``rows`` make, in log order; the projections in ``SOURCES`` have
    applied them (the order's intents are read from the orders projection). ``renewals``: whether
    paid renewals are fulfilled (``LEDGER_FULFILL_RENEWALS``: an invoice's fulfillment block)."""
    if not rows:
        return []
    recorded = {
        r["position"]: r["recorded_at"] for r in await conn.fetch(sql.events_recorded_at, [r.position for r in rows])
    }
    touched: list[tuple[LogRow, set[str]]] = []
    for row in rows:
        deltas = Deltas()
        if row.event_type != ADJUSTED:  # an adjustment is only the order's history: its own message says it
            with contextlib.suppress(Exception):  # as the projection: an event it cannot fold is skipped
                ORDERS.fold(row, deltas)
        touched.append((row, {entity for entity, _ in deltas.touched}))
    intents = {pi for _, entities in touched for pi in entities}
    sessions_of = {
        r["payment_intent_id"]: r["checkout_session_id"] for r in await conn.fetch(sql.intents_sessions, list(intents))
    }
    at_positions: dict[str, list[int]] = {}
    for row, entities in touched:
        for session_id in {sessions_of.get(e, e) for e in entities}:
            at_positions.setdefault(session_id, []).append(row.position)
    orders = await orders_at(conn, at_positions)
    others = await _entity_messages(conn, rows, recorded)
    for position, found in (await _invoice_messages(conn, rows, recorded, renewals=renewals)).items():
        others.setdefault(position, []).extend(found)
    out: list[Message] = []
    for row, entities in touched:
        at = recorded[row.position]
        adjustment = adjustment_at(row)
        if adjustment is not None:
            kind, object_id = INVENTORY_ADJUSTED, adjustment.adjustment_id
            out.append(_message(kind, row.position, object_id, at, adjustment.test_mode, adjustment))
        for session_id in sorted({sessions_of.get(e, e) for e in entities}):
            order = orders[session_id][row.position]
            if order is not None:
                out.append(_message(ORDER_UPDATED, row.position, session_id, at, bool(order.test_mode), order))
        out.extend(others.get(row.position, ()))
    return out


async def _entity_messages(
    conn: asyncpg.Connection, rows: Sequence[LogRow], recorded: dict[int, datetime]
) -> dict[int, list[Message]]:
    """``customer.updated`` and ``subscription.updated`` of the batch, by position: each entity an
    event folded into, its document as of that position (every history of a kind read at once)."""
    out: dict[int, list[Message]] = {}
    for kind, projection, history, build in _ENTITIES:
        documents = await documents_at(conn, projection, history, _touched(projection, rows), build)
        for entity_id in sorted(documents):
            for position, doc in sorted(documents[entity_id].items()):
                if doc is not None:
                    test_mode = bool(getattr(doc, "test_mode", False))
                    message = _message(kind, position, entity_id, recorded[position], test_mode, doc)
                    out.setdefault(position, []).append(message)
    return out


def _touched(projection: Projection, rows: Sequence[LogRow]) -> dict[str, list[int]]:
    """The entities of ``projection``'s first table each event folds into, with their positions."""
    table = projection.tables[0].name
    at_positions: dict[str, list[int]] = {}
    for row in rows:
        deltas = Deltas()
        with contextlib.suppress(Exception):
            projection.fold(row, deltas)
        for entity_id in deltas.by_table.get(table, {}):
            at_positions.setdefault(entity_id, []).append(row.position)
    return at_positions


async def _invoice_messages(
    conn: asyncpg.Connection, rows: Sequence[LogRow], recorded: dict[int, datetime], *, renewals: bool
) -> dict[int, list[Message]]:
    """``invoice.updated`` of the batch, by position: each invoice an event folded into, as it stood
    then, with its subscription as it stood then (what decides ``renewal``)."""
    states = await documents_at(
        conn, INVOICES, projection_queries.invoice_history_of, _touched(INVOICES, rows), lambda _, p, s: (p, s)
    )
    wanted: dict[str, list[int]] = {}
    for at_positions in states.values():
        for position, found in at_positions.items():
            if found is not None and found[1].get("subscription_id"):
                wanted.setdefault(found[1].get("subscription_id"), []).append(position)
    subscriptions = await documents_at(
        conn, SUBSCRIPTIONS, projection_queries.subscription_history_of, wanted, lambda _, __, s: s
    )
    out: dict[int, list[Message]] = {}
    for invoice_id in sorted(states):
        for position, found in sorted(states[invoice_id].items()):
            if found is None:
                continue
            applied, state = found
            subscription = subscriptions.get(state.get("subscription_id") or "", {}).get(position)
            doc = invoice_document(invoice_id, applied, state, subscription, renewals=renewals)
            message = _message(INVOICE_UPDATED, position, invoice_id, recorded[position], bool(doc.test_mode), doc)
            out.setdefault(position, []).append(message)
    return out
