"""Cost that does not grow with the log: hot-path queries are index probes, with or without statistics.

A plan chosen while a table is empty (a sequential scan looks cheapest) and cached on a pooled
connection stays chosen as the table grows, unless something analyses the table; the server this
service runs on may never do that (autovacuum off, a restore, a promoted replica). So the tests
run on databases that were never analysed:

* the real append path and the real runners, a few hundred times, must not scan ``events`` or a
  projection table (``pg_stat_user_tables.seq_scan`` does not move);
* every runtime query on a hot path, planned generically (what a cached prepared statement
  runs), must reach each large table through an index condition: on an empty database, on a
  populated one never analysed, and on the same one analysed.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Iterator
from typing import Any

import asyncpg
import pytest

from ledger.db import create_pool
from ledger.log import EventLog
from ledger.sql import log_queries
from ledger_cli.scenarios import Checkout, checkout_events, fulfillment_events
from projections.follower import follow_once
from projections.registry import PROJECTIONS
from projections.runner import catch_up_once
from projections.sql import projection_queries
from reactors.delivery import DestinationPolicy, DestinationStore
from reactors.fulfillment import intake_once
from reactors.sql import reactor_queries
from tests.projection_support import as_new_event

# Tables whose size grows with the log: never read whole on a hot path.
LARGE_TABLES = (
    "events",
    "quarantine",
    "orders",
    "order_payment_intents",
    "customers",
    "subscriptions",
    "inventory_adjustments",
    "fulfillment_queue",
    "destination_messages",
    "order_history",
    "customer_history",
    "subscription_history",
)

# Pages of a list whose size is a parameter: the read pool plans them for each call
# (``plan_cache_mode = force_custom_plan``, ``ledger.db.READ_SETTINGS``), from the page size asked
# and the table's size on disk, which the planner reads at every planning, statistics or not. A
# generic plan would have to assume a tenth of the table is wanted. Checked as the read pool
# runs them, with these arguments, once there are rows.
PLANNED_PER_CALL = {
    "orders_list": (None, None, None, 2**63 - 1, "", 20, None, None),
    "orders_list_by_customer": ("cus_x", None, None, 2**63 - 1, "", 20, None, None),
    "orders_list_by_status": (None, "complete", None, 2**63 - 1, "", 20, None, None),
    "orders_list_by_reference": (None, None, "ref_x", 2**63 - 1, "", 20, None, None),
}

# Queries that read a whole table on purpose, and why that is not a hot path.
WHOLE_TABLE_BY_DESIGN = {
    "log_summary": "`ledger status` counts the quarantine (operator command, and the quarantine stays small)",
    "held_locks": "reads pg_locks",
    "migrations_table": "DDL, run by `ledger migrate` on a database an earlier release made (no plan to check)",
    "queue_requeue": "`ledger fulfill retry` with no session named re-queues every failed session",
    "leases_clear": "the delivery worker, once as it starts: the retrying messages (a bounded backlog, by "
    "their partial index)",
    "queue_counts": "counts pending and failed sessions from their partial indexes, fulfilled ones from a counter; "
    "when the queue is small the planner may rightly prefer reading the heap",
}


def _checkouts(n: int, seed: int = 0) -> list[dict[str, Any]]:
    return [
        e
        for i in range(n)
        for e in checkout_events(
            Checkout(seed=seed + i, split=i % 3 == 0, mode="subscription" if i % 4 == 0 else "payment")
        )
    ]


def _fulfilment(n: int, seed: int = 0) -> list[Any]:
    """The events the reactor appends for ``n`` fulfilled checkouts."""
    return [e for i in range(n) for e in fulfillment_events(Checkout(seed=seed + i))]


async def _no_autovacuum(conn: asyncpg.Connection) -> None:
    """Keeps the tables unanalysed on servers whose autovacuum is on (the embedded one)."""
    for table in (*LARGE_TABLES, "inventory_levels", "projection_state", "ledger_head"):
        await conn.execute(f"ALTER TABLE {table} SET (autovacuum_enabled = false)")


async def _seq_scans(conn: asyncpg.Connection) -> dict[str, int]:
    """This database's sequential scans per large table, after this backend's own stats are flushed."""
    await conn.execute("SELECT pg_stat_force_next_flush()")
    await conn.execute("SELECT 1")  # the backend flushes while idle before taking this
    await conn.execute("SELECT pg_stat_clear_snapshot()")
    rows = await conn.fetch(
        "SELECT relname, seq_scan FROM pg_stat_user_tables WHERE schemaname = 'public' AND relname = ANY($1)",
        list(LARGE_TABLES),
    )
    return {r["relname"]: r["seq_scan"] for r in rows}


async def _never_analysed(conn: asyncpg.Connection) -> None:
    analysed = await conn.fetch(
        "SELECT relname FROM pg_stat_user_tables WHERE relname = ANY($1) "
        "AND (last_analyze IS NOT NULL OR last_autoanalyze IS NOT NULL)",
        list(LARGE_TABLES),
    )
    assert not analysed, f"expected never-analysed tables, found {[r[0] for r in analysed]} analysed"


@pytest.fixture
async def one_connection_pool(db_dsn: str) -> AsyncIterator[asyncpg.Pool]:
    """One connection, so every query of the test runs (and its plans are cached) on one backend."""
    pool = await create_pool(db_dsn, min_size=1, max_size=1)
    try:
        async with pool.acquire() as conn:
            await _no_autovacuum(conn)
        yield pool
    finally:
        await pool.close()


async def test_appends_never_scan_the_log(one_connection_pool: asyncpg.Pool) -> None:
    pool = one_connection_pool
    log = EventLog(pool)
    async with pool.acquire() as conn:
        before = await _seq_scans(conn)
    events = [as_new_event(e) for e in _checkouts(100)]
    # Batches of 1 to 4 through the real append function, some of them repeating logged events.
    appended, ids = 0, set()
    for i in range(0, len(events), 3):
        batch = events[i : i + 1 + i % 4]
        if i % 5 == 0 and i:
            batch = [*batch, events[i - 1]]
        results = await log.append(batch)
        ids |= {e.event_id for e in batch}
        assert [r.duplicate for r in results][len(batch[: i + 1 + i % 4]) :] in ([], [True])
        appended += 1
    assert appended >= 150, appended
    async with pool.acquire() as conn:
        await _never_analysed(conn)
        after = await _seq_scans(conn)
        assert await conn.fetchval("SELECT position FROM ledger_head") == len(ids)
    assert after["events"] == before["events"], "an append read the whole log"


async def test_catching_up_never_scans_the_log_or_the_projection_tables(one_connection_pool: asyncpg.Pool) -> None:
    pool = one_connection_pool
    log = EventLog(pool)
    async with pool.acquire() as conn:
        before = await _seq_scans(conn)
    checkouts = _checkouts(40)
    fulfilment = _fulfilment(40)
    for i in range(0, len(checkouts), 7):
        await log.append([as_new_event(e) for e in checkouts[i : i + 7]])
        await log.append(fulfilment[i // 7 * 3 : i // 7 * 3 + 3])
        async with pool.acquire() as conn:
            # Small batches: many catch-ups, each of them after the plans were cached.
            for projection in PROJECTIONS.values():
                while await catch_up_once(conn, projection, 5):
                    pass
            while await intake_once(conn, 5):
                pass
    async with pool.acquire() as conn:
        await _never_analysed(conn)
        after = await _seq_scans(conn)
        assert await conn.fetchval("SELECT count(*) FROM inventory_adjustments") > 0
        assert await conn.fetchval("SELECT count(*) FROM fulfillment_queue") > 0
    grew = {table: after[table] - before[table] for table in after if after[table] != before[table]}
    assert not grew, f"catching up scanned whole tables: {grew}"


# ---------------------------------------------------------------------------------------------
# Generic plans of every runtime query


def _named_queries() -> Iterator[tuple[str, str]]:
    for source in (log_queries, projection_queries, reactor_queries):
        yield from source


def _scans_without_index(plan: dict[str, Any]) -> Iterator[str]:
    """Plan nodes that read a large table other than through an index condition."""
    relation = plan.get("Relation Name")
    if relation in LARGE_TABLES and plan["Node Type"] != "ModifyTable":
        node = plan["Node Type"]
        if node in ("Index Scan", "Index Only Scan", "Bitmap Heap Scan"):
            # A partial index read whole is what it is for (e.g. the failed fulfillments).
            if (
                node != "Bitmap Heap Scan"
                and "Index Cond" not in plan
                and not plan["Index Name"].endswith(("_due_order_idx", "_failed_idx"))
            ):
                yield f"{node} of all of {relation} ({plan.get('Index Name')})"
        elif node != "Tid Scan":  # a Tid Scan fetches rows by the address an index probe gave
            yield f"{node} on {relation}"
    for child in plan.get("Plans", []):
        yield from _scans_without_index(child)


async def _plan(conn: asyncpg.Connection, sql: str, args: tuple[Any, ...] | None = None) -> dict[str, Any]:
    """The generic plan of ``sql`` (what a cached prepared statement runs); with ``args``, the plan
    made for those arguments."""
    code = re.sub(r"--[^\n]*", "", sql)
    params = max((int(n) for n in re.findall(r"\$(\d+)", code)), default=0)
    await conn.execute(f"PREPARE hot AS {code}")
    if args is None:
        await conn.execute("SET plan_cache_mode = force_generic_plan")
        values = ["NULL"] * params
    else:
        await conn.execute("SET plan_cache_mode = force_custom_plan")
        values = ["NULL" if a is None else f"'{a}'" for a in args]
    listed = f"({', '.join(values)})" if params else ""
    text = await conn.fetchval(f"EXPLAIN (FORMAT JSON) EXECUTE hot{listed}")  # plans only; runs nothing
    plan: dict[str, Any] = json.loads(text)[0]["Plan"]
    await conn.execute("DEALLOCATE hot")
    await conn.execute("RESET plan_cache_mode")
    return plan


async def _populate(pool: asyncpg.Pool) -> None:
    """Some thousands of rows in every table, through the real paths."""
    log = EventLog(pool)
    checkouts = _checkouts(2000, seed=1000)
    fulfilment = _fulfilment(2000, seed=1000)
    for i in range(0, len(checkouts), 500):
        await log.append([as_new_event(e) for e in checkouts[i : i + 500]])
    for i in range(0, len(fulfilment), 500):
        await log.append(fulfilment[i : i + 500])
    async with pool.acquire() as conn:
        for projection in PROJECTIONS.values():
            while await catch_up_once(conn, projection, 1000):
                pass
        while await intake_once(conn, 1000):
            pass
        # Most sessions fulfilled, a few failed, the rest pending: as a running service has them.
        sessions = [r[0] for r in await conn.fetch("SELECT checkout_session_id FROM fulfillment_queue ORDER BY 1")]
        for session in sessions[:-40]:
            await conn.execute(reactor_queries.queue_fulfilled, session)
        for session in sessions[-40:-20]:
            await conn.execute(reactor_queries.queue_failed, session, "test")
        await conn.execute(
            "INSERT INTO quarantine (headers, body, reason) SELECT '{}', '\\x00', 'test' FROM generate_series(1, 50)"
        )
        # A destination that followed the whole log: most messages delivered, some failed, some due.
        await conn.execute(
            reactor_queries.destination_insert, "dst_plans", "https://example.com/", [], "all", None, "s"
        )
        await conn.execute("UPDATE destinations SET position = 0")
        policy = DestinationPolicy("dst_plans", [], "all", 0.0)
        while await follow_once(DestinationStore(conn, "dst_plans"), policy, 1000):
            pass
        messages = [r[0] for r in await conn.fetch("SELECT message_id FROM destination_messages ORDER BY 1")]
        delivered = messages[:-40]
        await conn.execute(reactor_queries.messages_claim, "dst_plans", 0, 0, delivered, [200] * len(delivered))
        for message in messages[-40:-20]:
            await conn.execute(reactor_queries.message_retry, "dst_plans", message, 500, "test", None)


async def test_every_runtime_query_reaches_large_tables_through_an_index(db_dsn: str) -> None:
    pool = await create_pool(db_dsn, min_size=1, max_size=1)
    problems: dict[str, list[str]] = {}
    try:
        async with pool.acquire() as conn:
            await _no_autovacuum(conn)
        for state in ("empty, never analysed", "populated, never analysed", "populated, analysed"):
            if state == "populated, never analysed":
                await _populate(pool)
            async with pool.acquire() as conn:
                if state == "populated, analysed":
                    await conn.execute("ANALYZE")
                else:
                    await _never_analysed(conn)
                for name, sql in _named_queries():
                    if name in WHOLE_TABLE_BY_DESIGN or (name in PLANNED_PER_CALL and state.startswith("empty")):
                        continue
                    found = list(_scans_without_index(await _plan(conn, sql, PLANNED_PER_CALL.get(name))))
                    if found:
                        problems.setdefault(f"{name} ({state})", []).extend(found)
    finally:
        await pool.close()
    assert not problems, "\n".join(f"{name}: {', '.join(found)}" for name, found in problems.items())
