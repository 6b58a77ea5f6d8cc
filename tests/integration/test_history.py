"""An order's history and time travel: the order as it stood after any position of the log."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import asyncpg

from ledger.log import EventLog
from ledger_cli.scenarios import Checkout, checkout_events, fulfillment_events, refund_events
from projections import documents
from projections.history import order_as_of, order_events
from projections.shapes import Order
from tests.projection_support import append, project


async def test_history_lists_every_event_of_the_order_and_nothing_else(pool: asyncpg.Pool) -> None:
    c, other = Checkout(seed=1, split=True, items=2), Checkout(seed=2)
    events = checkout_events(c) + refund_events(c, 500)
    await append(pool, events + checkout_events(other))
    await EventLog(pool).append(fulfillment_events(c))
    await project(pool)
    history = await order_events(pool, c.session_id)
    assert history is not None
    mine = [e["event_id"] for e in events if e["event_type"] != "customer.created"]  # the customer's own
    ledger = [e.event_id for e in fulfillment_events(c)]  # line items fetched, one adjustment per item
    assert [e.event_id for e in history] == mine + ledger
    assert [e.position for e in history] == sorted(e.position for e in history)
    assert json.loads(bytes(history[0].payload))["event_id"] == mine[0]
    assert await order_events(pool, "fcs_unknown") is None


async def test_the_order_as_of_each_position_is_what_the_projection_showed_then(pool: asyncpg.Pool) -> None:
    c = Checkout(seed=3, split=True)
    events = checkout_events(c) + refund_events(c, c.total)
    seen: dict[int, Order | None] = {}
    for event in events:  # one at a time, so the projection's answer after each position is known
        await append(pool, [event])
        await project(pool)
        position = await pool.fetchval("SELECT position FROM ledger_head")
        seen[position] = await documents.get_order(pool, c.session_id)
    for position, then in seen.items():
        assert await order_as_of(pool, c.session_id, position=position) == then, position
    statuses = [getattr(await order_as_of(pool, c.session_id, position=p), "payment_status", None) for p in seen]
    assert statuses[-3:] == ["paid", "paid", "refunded"]  # completed, refund pending, refund succeeded
    assert await order_as_of(pool, c.session_id, position=1) is None  # not an order yet


async def test_as_of_a_time_reads_the_last_position_recorded_by_then(pool: asyncpg.Pool) -> None:
    c = Checkout(seed=4)
    events = checkout_events(c)
    await append(pool, events[:-1])
    await pool.execute("SELECT pg_sleep(0.05)")
    between = datetime.now(UTC)
    await pool.execute("SELECT pg_sleep(0.05)")
    await append(pool, events[-1:] + refund_events(c, 100))
    await project(pool)
    before = await order_as_of(pool, c.session_id, moment=between)
    assert before is None  # only its payments had arrived: no order yet
    now = await order_as_of(pool, c.session_id, moment=datetime.now(UTC) + timedelta(seconds=1))
    assert now == await documents.get_order(pool, c.session_id)
    assert await order_as_of(pool, c.session_id, moment=datetime(2000, 1, 1, tzinfo=UTC)) is None
