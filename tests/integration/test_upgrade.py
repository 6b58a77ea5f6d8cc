"""Upgrading a database written by the previous release (schema version 3) to this one.

The log it wrote still verifies and keeps every row's hash; the summaries this release keeps
(inventory levels, the count of fulfilled sessions) start from what was already there.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import asyncpg

from ledger.db import SCHEMA_VERSION
from ledger.log import EventLog, verify_chain
from projections.registry import install
from tests.projection_support import as_new_event
from tests.support import unique_name, with_database

V3 = (Path(__file__).resolve().parent.parent / "fixtures" / "schema_v3.sql").read_text(encoding="utf-8")


def _event(i: int) -> dict[str, Any]:
    return {
        "event_id": f"evt_old_{i}",
        "event_type": "customer.created",
        "event_dt": 1_700_000_000 + i,
        "object": {"customer": {"customer_id": f"fcus_{i}", "email": f"c{i}@example.com"}},
    }


async def test_a_version_3_database_upgrades_in_place(pg_server_dsn: str) -> None:
    name = unique_name("ledger_upgrade")
    admin = await asyncpg.connect(pg_server_dsn)
    await admin.execute(f'CREATE DATABASE "{name}"')
    dsn = with_database(pg_server_dsn, name)
    try:
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(V3)
            assert await conn.fetchval("SELECT version FROM ledger_schema") == 3
            # The old release's append function and tables, as it used them.
            old = [as_new_event(_event(i)) for i in range(40)]
            await conn.fetch(
                "SELECT * FROM ledger_append($1::text[], $2::text[], $3::text[], $4::bigint[], $5::timestamptz[], "
                "$6::bytea[], $7::jsonb[], $8::text[])",
                [e.event_id for e in old],
                [e.event_type for e in old],
                [e.source for e in old],
                [e.event_dt for e in old],
                [None] * 40,
                [e.raw_body for e in old],
                [None] * 40,
                [None] * 40,
            )
            await conn.execute(
                "INSERT INTO inventory_adjustments (adjustment_id, checkout_session_id, line_item_id, price_id, "
                "product_id, quantity_delta, reason, position, state) VALUES "
                "('adj_1', 'cs_1', 'li_1', 'price_a', 'prod_a', -2, 'sale', 1, '{}'), "
                "('adj_2', 'cs_2', 'li_1', 'price_a', 'prod_a', -1, 'sale', 2, '{}'), "
                "('adj_3', 'cs_2', 'li_2', NULL, NULL, -5, 'sale', 3, '{}')"
            )
            await conn.execute(
                "INSERT INTO fulfillment_queue (checkout_session_id, status, completed_position) VALUES "
                "('cs_1', 'fulfilled', 1), ('cs_2', 'fulfilled', 2), ('cs_3', 'pending', 3)"
            )
            hashes = await conn.fetch("SELECT position, hash FROM events ORDER BY position")

            await install(conn)
            await install(conn)  # twice is harmless

            assert await conn.fetchval("SELECT version FROM ledger_schema") == SCHEMA_VERSION
            assert await conn.fetch("SELECT position, hash FROM events ORDER BY position") == hashes
            assert (await verify_chain(conn)).ok
            levels = {
                (r["price_id"], r["product_id"], r["test_mode"]): (
                    r["quantity_sold"],
                    r["quantity_restocked"],
                    r["adjustment_count"],
                )
                for r in await conn.fetch("SELECT * FROM inventory_levels")
            }
            # summed from the adjustments already there (live: modes were not kept before version 6)
            assert levels == {("price_a", "prod_a", False): (3, 0, 2), (None, None, False): (5, 0, 1)}
            assert (
                await conn.fetchval("SELECT fulfilled_sessions FROM projection_state WHERE name = 'fulfillment'") == 2
            )
        finally:
            await conn.close()
        # The new release appends after the old rows, and the whole chain still holds.
        pool = await asyncpg.create_pool(dsn, min_size=1, max_size=1)
        try:
            results = await EventLog(pool).append([as_new_event(_event(i)) for i in range(35, 60)])
            assert [r.duplicate for r in results] == [True] * 5 + [False] * 20
            assert [r.position for r in results] == list(range(36, 41)) + list(range(41, 61))
            async with pool.acquire() as conn:
                report = await verify_chain(conn)
            assert report.ok
            assert report.head_position == 60
        finally:
            await pool.close()
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
