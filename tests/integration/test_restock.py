"""Restocks: never more than was sold per line item, whole requests or nothing, concurrent
requests for the last unit decided one way, test stock apart from live, and a rebuild that
reproduces the levels from the log."""

from __future__ import annotations

import asyncio

import asyncpg
import msgspec
import pytest

from ledger.log import EventLog
from ledger_cli.scenarios import Checkout, checkout_events, fulfillment_events
from projections import documents
from projections.rebuild import rebuild
from projections.registry import PROJECTIONS
from projections.shapes import InventoryLevel
from reactors.fulfillment import intake_once
from reactors.restock import RestockRefused, restock
from reactors.sql import reactor_queries
from tests.projection_support import append, project


async def _fulfilled(pool: asyncpg.Pool, c: Checkout) -> None:
    """The checkout's webhooks, then what the reactor records once Flex answers."""
    await append(pool, checkout_events(c))
    async with pool.acquire() as conn:
        while await intake_once(conn):
            pass
        await EventLog(pool).append(fulfillment_events(c, test_mode=c.test_mode))
        await conn.execute(reactor_queries.queue_fulfilled, c.session_id)
    await project(pool)


def _levels(rows: list[InventoryLevel]) -> dict[str | None, tuple[int, int, int]]:
    return {r.price_id: (r.quantity_sold, r.quantity_restocked, r.quantity_net) for r in rows}


async def test_a_restock_takes_back_at_most_what_was_sold(pool: asyncpg.Pool) -> None:
    c = Checkout(seed=11, items=2)
    await _fulfilled(pool, c)
    first, second = c.line_items()
    async with pool.acquire() as conn:
        done = await restock(conn, c.session_id, {first["line_item_id"]: 1}, request_id="r1", note="returned")
        assert [(i.line_item_id, q) for i, q in done] == [(first["line_item_id"], 1)]
        with pytest.raises(RestockRefused, match="left to restock"):
            await restock(conn, c.session_id, {first["line_item_id"]: first["quantity"]}, request_id="r2")
        with pytest.raises(RestockRefused, match="no line item li_nope"):
            await restock(conn, c.session_id, {"li_nope": 1}, request_id="r3")
        rest = await restock(conn, c.session_id, None, request_id="r4")  # everything left, every line item
        assert {i.line_item_id: q for i, q in rest} == {
            first["line_item_id"]: first["quantity"] - 1,
            second["line_item_id"]: second["quantity"],
        }
        with pytest.raises(RestockRefused, match="already restocked"):
            await restock(conn, c.session_id, None, request_id="r5")
        assert await restock(conn, c.session_id, None, request_id="r4") == []  # the same request: nothing more
    await project(pool)
    levels = _levels(await documents.inventory_levels(pool))
    for item in (first, second):
        sold = item["quantity"]
        assert levels[item["price"]["price_id"]] == (sold, sold, 0)
    adjustments, _ = await documents.list_adjustments(pool, after=0, limit=100)
    assert sorted(a.reason for a in adjustments) == ["restock", "restock", "restock", "sale", "sale"]


async def test_a_session_not_fulfilled_has_nothing_to_restock(pool: asyncpg.Pool) -> None:
    c = Checkout(seed=12)
    await append(pool, checkout_events(c))
    async with pool.acquire() as conn:
        with pytest.raises(RestockRefused, match="no completed session"):
            await restock(conn, c.session_id, None, request_id="r1")
        while await intake_once(conn):
            pass
        with pytest.raises(RestockRefused, match="not fulfilled"):
            await restock(conn, c.session_id, None, request_id="r1")


async def test_concurrent_restocks_of_the_last_unit_one_succeeds(pool: asyncpg.Pool) -> None:
    c = Checkout(seed=13)
    await _fulfilled(pool, c)
    line = c.line_items()[0]
    if line["quantity"] > 1:  # all but the last unit back first
        async with pool.acquire() as conn:
            await restock(conn, c.session_id, {line["line_item_id"]: line["quantity"] - 1}, request_id="first")

    async def one(request_id: str) -> str:
        async with pool.acquire() as conn:
            try:
                await restock(conn, c.session_id, {line["line_item_id"]: 1}, request_id=request_id)
            except RestockRefused:
                return "refused"
            return "restocked"

    outcomes = await asyncio.gather(*(one(f"last-{i}") for i in range(6)))
    assert sorted(outcomes) == ["refused"] * 5 + ["restocked"]
    await project(pool)
    assert _levels(await documents.inventory_levels(pool))[line["price"]["price_id"]] == (
        line["quantity"],
        line["quantity"],
        0,
    )


async def test_test_mode_stock_never_moves_live_and_a_rebuild_reproduces_it(db_dsn: str, pool: asyncpg.Pool) -> None:
    live, test = Checkout(seed=14), Checkout(seed=15, test_mode=True)
    test.prices, test.quantities = live.prices, live.quantities  # a test sale of the same live prices
    await _fulfilled(pool, live)
    await _fulfilled(pool, test)
    async with pool.acquire() as conn:
        await restock(conn, test.session_id, None, request_id="t1")
    await project(pool)
    price = live.prices[0]["price_id"]
    sold = live.quantities[0]
    assert _levels(await documents.inventory_levels(pool))[price] == (sold, 0, -sold)
    assert _levels(await documents.inventory_levels(pool, test_mode=True))[price] == (sold, sold, 0)
    feed, _ = await documents.list_adjustments(pool, after=0, limit=100, test_mode=False)
    assert {a.checkout_session_id for a in feed} == {live.session_id}
    before = (await documents.inventory_levels(pool), await documents.inventory_levels(pool, test_mode=True))
    conn = await asyncpg.connect(db_dsn)
    try:
        await rebuild(conn, list(PROJECTIONS.values()), dsn=db_dsn)
    finally:
        await conn.close()
    after = (await documents.inventory_levels(pool), await documents.inventory_levels(pool, test_mode=True))
    assert after == before


async def test_the_read_apis_inventory_body_is_the_levels_in_order(pool: asyncpg.Pool) -> None:
    """GET /v1/inventory's body is built by PostgreSQL: the same rows, fields and order as the levels."""
    assert msgspec.json.decode(await documents.inventory_levels_body(pool)) == {"data": []}
    for seed in (21, 22, 23):
        await _fulfilled(pool, Checkout(seed=seed, items=3))
    await _fulfilled(pool, Checkout(seed=24, test_mode=True))
    for test_mode in (False, True):
        levels = await documents.inventory_levels(pool, test_mode=test_mode)
        body = msgspec.json.decode(await documents.inventory_levels_body(pool, test_mode=test_mode))
        assert levels
        assert body == {"data": msgspec.to_builtins(levels)}
        assert [tuple(row) for row in body["data"]] == [InventoryLevel.__struct_fields__] * len(levels)  # fields' order
