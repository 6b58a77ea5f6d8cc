"""Runner and rebuild against a real PostgreSQL: exactly-once across runners, blue/green rebuilds."""

from __future__ import annotations

import asyncio
import dataclasses
import random
from typing import Any

import asyncpg
import pytest

from ledger_cli.scenarios import Checkout, cancel_events, checkout_events, dispute_events, refund_events
from projections.apply import ProjectionFailed
from projections.base import Deltas, LogRow, Projection
from projections.mergeable import Mergeable
from projections.orders import ORDERS
from projections.rebuild import rebuild
from projections.registry import PROJECTIONS
from projections.runner import ProjectionRunner, catch_up_once
from projections.sql import projection_queries as sql
from tests.projection_support import append, project, snapshot


def _events(n_checkouts: int, start_seed: int = 0) -> list[dict[str, Any]]:
    return [
        e
        for i in range(n_checkouts)
        for e in checkout_events(
            Checkout(seed=start_seed + i, split=i % 3 == 0, mode="subscription" if i % 4 == 0 else "payment")
        )
    ]


async def _rebuild_all(db_dsn: str) -> None:
    conn = await asyncpg.connect(db_dsn)
    try:
        await rebuild(conn, list(PROJECTIONS.values()), dsn=db_dsn, batch_size=7, switch_gap=5)
    finally:
        await conn.close()


async def _tables(pool: asyncpg.Pool) -> dict[str, list[tuple[Any, ...]]]:
    """The rows a rebuild writes that the documents do not show whole: every history, every
    order's payment status."""
    tables = {
        t: [tuple(r) for r in await pool.fetch(f"SELECT entity_id, position FROM {t} ORDER BY 1, 2")]
        for t in (p.history_table for p in PROJECTIONS.values())
        if t is not None
    }
    tables["orders"] = [
        tuple(r) for r in await pool.fetch("SELECT checkout_session_id, payment_status FROM orders ORDER BY 1")
    ]
    return tables


async def test_rebuild_gives_the_live_state_exactly(db_dsn: str, pool: asyncpg.Pool) -> None:
    events = _events(12)
    for i in range(0, len(events), 10):
        await append(pool, events[i : i + 10])
        await project(pool, batch_size=4)
    live = await snapshot(pool, drop_positions=False)
    live_tables = await _tables(pool)
    assert all(live_tables.values())
    generations = await pool.fetchval("SELECT sum(generation) FROM projection_state")
    await _rebuild_all(db_dsn)
    assert await snapshot(pool, drop_positions=False) == live
    # the histories (loaded without their keys, keyed after) and the settled payment statuses too
    assert await _tables(pool) == live_tables
    for projection in PROJECTIONS.values():
        if projection.history_table is not None:
            assert await pool.fetchval(
                "SELECT count(*) FROM pg_constraint WHERE conrelid = $1::regclass AND contype = 'p'",
                projection.history_table,
            )
    assert await pool.fetchval("SELECT sum(generation) FROM projection_state") == generations + len(PROJECTIONS)
    assert await pool.fetchval("SELECT count(*) FROM pg_namespace WHERE nspname = 'ledger_build'") == 0
    head = await pool.fetchval("SELECT position FROM ledger_head")
    rows = await pool.fetch("SELECT position FROM projection_state WHERE name = ANY($1)", list(PROJECTIONS))
    assert {r[0] for r in rows} == {head}
    assert await pool.fetchval("SELECT position FROM projection_state WHERE name = 'fulfillment'") == 0


async def test_rebuild_reproduces_the_money_after_the_sale(db_dsn: str, pool: asyncpg.Pool) -> None:
    """Refunds, disputes, voided authorizations, delivered in small batches and in any order, then
    rebuilt from the log alone: the same orders, the same payment status column."""
    events = []
    for i in range(10):
        c = Checkout(seed=300 + i, split=i % 2 == 0, capture="manual" if i % 5 == 4 else "automatic")
        after_sale = [
            refund_events(c, c.total // 2),
            refund_events(c, c.total),
            dispute_events(c, outcome="lost"),
            dispute_events(c, outcome="won"),
            cancel_events(c),
        ][i % 5]
        events += checkout_events(c) + after_sale
    random.Random(3).shuffle(events)
    for i in range(0, len(events), 9):
        await append(pool, events[i : i + 9])
        await project(pool, batch_size=4)
    live = await snapshot(pool, drop_positions=False)
    statuses = await pool.fetch("SELECT checkout_session_id, payment_status FROM orders ORDER BY 1")
    assert {r["payment_status"] for r in statuses} == {
        "partially_refunded",
        "refunded",
        "disputed",
        "paid",
        "canceled",
    }
    assert [o["payment_status"] for o in live["orders"]] == [r["payment_status"] for r in statuses]
    await _rebuild_all(db_dsn)
    assert await snapshot(pool, drop_positions=False) == live
    assert await pool.fetch("SELECT checkout_session_id, payment_status FROM orders ORDER BY 1") == statuses


async def test_live_runner_reloads_after_a_rebuild_switch(db_dsn: str, pool: asyncpg.Pool) -> None:
    await append(pool, _events(3))
    await project(pool)
    await _rebuild_all(db_dsn)
    more = _events(2, start_seed=100)
    await append(pool, more)
    async with pool.acquire() as conn:
        while await catch_up_once(conn, ORDERS, 1000):
            pass
    sessions = {r[0] for r in await pool.fetch("SELECT checkout_session_id FROM orders")}
    assert {Checkout(seed=100).session_id, Checkout(seed=101).session_id} <= sessions
    assert len(sessions) == 5


async def test_two_runners_apply_every_event_exactly_once(db_dsn: str, pool: asyncpg.Pool) -> None:
    wake_a, wake_b = asyncio.Event(), asyncio.Event()
    a = ProjectionRunner(db_dsn, ORDERS, wake_a, batch_size=3, poll_interval=0.05, standby_interval=0.05)
    b = ProjectionRunner(db_dsn, ORDERS, wake_b, batch_size=3, poll_interval=0.05, standby_interval=0.05)
    tasks = [asyncio.create_task(a.run()), asyncio.create_task(b.run())]
    events = _events(10)
    relevant = sum(1 for e in events if e["event_type"].startswith(("checkout.session.", "payment_intent.")))
    try:
        for i in range(0, len(events), 5):
            await append(pool, events[i : i + 5])
            wake_a.set()
            wake_b.set()
            await asyncio.sleep(0.01)
        head = await pool.fetchval("SELECT position FROM ledger_head")
        for _ in range(200):
            if await pool.fetchval("SELECT position FROM projection_state WHERE name = 'orders'") == head:
                break
            await asyncio.sleep(0.05)
        assert [a.active, b.active].count(True) == 1, "exactly one runner holds the projection"
        # the active one goes away: the standby takes over
        active = tasks[0] if a.active else tasks[1]
        active.cancel()
        await asyncio.gather(active, return_exceptions=True)
        await append(pool, _events(2, start_seed=50))
        for _ in range(200):
            if await pool.fetchval(
                "SELECT position FROM projection_state WHERE name = 'orders'"
            ) == await pool.fetchval("SELECT position FROM ledger_head"):
                break
            await asyncio.sleep(0.05)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    more = sum(
        1 for e in _events(2, start_seed=50) if e["event_type"].startswith(("checkout.session.", "payment_intent."))
    )
    row = await pool.fetchrow("SELECT applied_events, position FROM projection_state WHERE name = 'orders'")
    assert row["applied_events"] == relevant + more
    assert row["position"] == await pool.fetchval("SELECT position FROM ledger_head")
    assert await pool.fetchval("SELECT count(*) FROM orders") == 12


def _fragile_orders() -> Projection:
    """The orders projection, with a fold that cannot handle events marked 'poison'."""

    def fold(row: LogRow, deltas: Deltas) -> bool:
        if row.payload.get("poison"):
            raise ValueError("poisoned event")
        return ORDERS.fold(row, deltas)

    return dataclasses.replace(ORDERS, fold=fold)


async def test_live_mode_records_a_failure_and_goes_on_rebuild_fails_fast(db_dsn: str, pool: asyncpg.Pool) -> None:
    fragile = _fragile_orders()
    good = _events(2)
    poison = {
        "event_id": "evt_poison",
        "event_type": "checkout.session.completed",
        "poison": True,
        "object": {"checkout_session": {"checkout_session_id": "fcs_poison", "status": "complete"}},
    }
    await append(pool, [good[0], poison, *good[1:]])
    async with pool.acquire() as conn:
        while await catch_up_once(conn, fragile, 100):
            pass
    row = await pool.fetchrow(
        "SELECT failed_events, last_error, last_error_position FROM projection_state WHERE name = 'orders'"
    )
    assert row["failed_events"] == 1
    assert row["last_error_position"] == 2
    assert "poisoned" in row["last_error"]
    assert await pool.fetchval("SELECT count(*) FROM orders") == 2
    assert [r["position"] for r in await pool.fetch("SELECT position FROM projection_failures")] == [2]
    before = await snapshot(pool, drop_positions=False)
    # A rebuild takes live mode's decision again: the recorded event is skipped and listed.
    conn = await asyncpg.connect(db_dsn)
    try:
        done = await rebuild(conn, [fragile], batch_size=5)
    finally:
        await conn.close()
    assert done.skipped == {"orders": [2]}
    assert len((await snapshot(pool))["orders"]) == 2  # as live mode has it
    assert await pool.fetchval("SELECT failed_events FROM projection_state WHERE name = 'orders'") == 1
    # A failure live mode never recorded fails fast, live state untouched.
    await pool.execute("DELETE FROM projection_failures")
    before = await snapshot(pool, drop_positions=False)
    conn = await asyncpg.connect(db_dsn)
    try:
        with pytest.raises(ProjectionFailed) as info:
            await rebuild(conn, [fragile], batch_size=5)
    finally:
        await conn.close()
    assert info.value.position == 2
    assert await snapshot(pool, drop_positions=False) == before
    # the real projection (which can apply that event) rebuilds over the leftover build schema
    await _rebuild_all(db_dsn)
    assert len((await snapshot(pool))["orders"]) == 3
    assert await pool.fetchval("SELECT failed_events FROM projection_state WHERE name = 'orders'") == 0


async def test_an_event_the_tables_refuse_is_recorded_and_the_rest_applied(db_dsn: str, pool: asyncpg.Pool) -> None:
    """Live mode: a database-level refusal (here an out-of-range value) fails that event only."""
    from projections.base import Table

    def row(entity_id: str, state: Mergeable) -> tuple[Any, ...]:
        values = ORDERS.tables[0].row(entity_id, state)
        return (*values[:-1], 2**70) if entity_id == "fcs_refused" else values

    tables = (Table("orders", load=sql.orders_load, upsert=sql.orders_upsert, row=row), ORDERS.tables[1])
    refusing = dataclasses.replace(ORDERS, tables=tables)
    good = _events(2)
    refused = {
        "event_id": "evt_refused",
        "event_type": "checkout.session.completed",
        "object": {"checkout_session": {"checkout_session_id": "fcs_refused", "status": "complete"}},
    }
    await append(pool, [good[0], refused, *good[1:]])
    async with pool.acquire() as conn:
        while await catch_up_once(conn, refusing, 100):
            pass
    row_ = await pool.fetchrow(
        "SELECT failed_events, last_error_position, position FROM projection_state WHERE name = 'orders'"
    )
    assert row_["failed_events"] == 1
    assert row_["last_error_position"] == 2
    assert row_["position"] == await pool.fetchval("SELECT position FROM ledger_head")
    assert await pool.fetchval("SELECT count(*) FROM orders") == 2
