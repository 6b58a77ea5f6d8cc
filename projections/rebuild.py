"""Blue/green rebuild of a projection from the log, with zero downtime.

1. The projection's tables are created afresh in a build schema (``ledger_build_<name>``) from
   its block in ``schema.sql``; the live tables keep serving and the live runner keeps going.
2. The whole log is folded into the build tables in batches (rebuild mode: the first event that
   cannot be applied stops the rebuild). The same SQL runs with the build schema first on the
   search path.
3. Once nearly caught up, one transaction locks the live tables (reads wait a moment; nothing
   fails), applies the last events, swaps the build tables in, and sets the checkpoint and a new
   generation, so the live runner's next compare-and-set fails and it reloads.

An interrupted or failed rebuild leaves the live tables and checkpoint untouched; the next run
drops the leftover build schema and starts again. Rebuilds never call Flex and never touch the
fulfillment reactor.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable

import asyncpg
import msgspec

from ledger.db import queries as ledger_queries
from ledger.db import schema_sql
from projections.apply import BatchResult, apply_batch, decode_rows, queries
from projections.base import Projection
from projections.runner import LOCK_NAMESPACE, REBUILD_LOCK_OFFSET, lock_id

__all__ = ["Progress", "RebuildBusy", "rebuild", "tables_ddl"]


class RebuildBusy(Exception):
    pass


class Progress(msgspec.Struct, kw_only=True):
    projection: str
    position: int
    head: int
    events_per_second: float
    done: bool = False


def tables_ddl(name: str) -> str:
    """The projection's block of ``schema.sql``."""
    match = re.search(
        rf"^-- projection: {re.escape(name)}\n(.*?)^-- end projection: {re.escape(name)}$",
        schema_sql(),
        flags=re.MULTILINE | re.DOTALL,
    )
    if match is None:
        raise LookupError(f"schema.sql has no block for projection {name!r}")
    return match.group(1)


def _build_schema(name: str) -> str:
    return f"ledger_build_{name}"


async def _apply_range(conn: asyncpg.Connection, projection: Projection, start: int, end: int) -> BatchResult:
    records = await conn.fetch(queries.read_batch, start, end, list(projection.patterns))
    rows, undecodable = decode_rows(records)
    result = await apply_batch(conn, projection, rows, strict=True)
    result.ignored += (end - start) - len(records) + undecodable
    return result


async def rebuild(
    conn: asyncpg.Connection,
    projection: Projection,
    *,
    batch_size: int = 5000,
    on_progress: Callable[[Progress], None] | None = None,
    switch_gap: int = 2000,
) -> Progress:
    """Rebuilds ``projection`` on ``conn`` (a dedicated connection). Returns the final progress."""
    if not await conn.fetchval(
        "SELECT pg_try_advisory_lock($1, $2)", LOCK_NAMESPACE, REBUILD_LOCK_OFFSET + lock_id(projection.name)
    ):
        raise RebuildBusy(f"a rebuild of {projection.name} is already running")
    schema = _build_schema(projection.name)
    ident = f'"{schema}"'  # a fixed name made of the projection's own [a-z_] name
    try:
        await conn.execute("SET statement_timeout = 0")
        await conn.execute(f"DROP SCHEMA IF EXISTS {ident} CASCADE")
        await conn.execute(f"CREATE SCHEMA {ident}")
        await conn.execute(f"SET search_path = {ident}, public")
        await conn.execute(tables_ddl(projection.name))
        await conn.execute(
            "UPDATE public.projection_state SET rebuild_position = 0, rebuild_started_at = now() WHERE name = $1",
            projection.name,
        )

        position, applied, ignored = 0, 0, 0
        started = time.monotonic()

        def report(head: int, done: bool = False) -> Progress:
            elapsed = max(time.monotonic() - started, 1e-9)
            progress = Progress(
                projection=projection.name,
                position=position,
                head=head,
                events_per_second=position / elapsed,
                done=done,
            )
            if on_progress is not None:
                on_progress(progress)
            return progress

        head = await conn.fetchval(ledger_queries.head)
        while head - position > switch_gap:
            end = min(head, position + batch_size)
            async with conn.transaction():
                result = await _apply_range(conn, projection, position, end)
                await conn.execute(
                    "UPDATE public.projection_state SET rebuild_position = $2 WHERE name = $1", projection.name, end
                )
            applied, ignored, position = applied + result.applied, ignored + result.ignored, end
            report(head)
            if head - position <= switch_gap:
                head = await conn.fetchval(ledger_queries.head)

        # The switch: live tables locked (in the live runner's lock order: tables, then state).
        live_tables = ", ".join(f"public.{t.name}" for t in projection.tables)
        async with conn.transaction():
            await conn.execute(f"LOCK TABLE {live_tables} IN ACCESS EXCLUSIVE MODE")
            await conn.execute("SELECT 1 FROM public.projection_state WHERE name = $1 FOR UPDATE", projection.name)
            head = await conn.fetchval(ledger_queries.head)
            while position < head:
                end = min(head, position + batch_size)
                result = await _apply_range(conn, projection, position, end)
                applied, ignored, position = applied + result.applied, ignored + result.ignored, end
            for table in projection.tables:
                await conn.execute(f"DROP TABLE public.{table.name}")
                await conn.execute(f"ALTER TABLE {ident}.{table.name} SET SCHEMA public")
            await conn.execute(
                """UPDATE public.projection_state
                   SET position = $2, generation = generation + 1, applied_events = $3, ignored_events = $4,
                       failed_events = 0, last_error = NULL, last_error_position = NULL, last_error_at = NULL,
                       rebuild_position = NULL, rebuilt_at = now(), updated_at = now()
                   WHERE name = $1""",
                projection.name,
                position,
                applied,
                ignored,
            )
        await conn.execute(f"DROP SCHEMA IF EXISTS {ident} CASCADE")
        return report(head, done=True)
    finally:
        if not conn.is_closed():
            await conn.execute("SET search_path TO DEFAULT")
            await conn.execute(
                "SELECT pg_advisory_unlock($1, $2)", LOCK_NAMESPACE, REBUILD_LOCK_OFFSET + lock_id(projection.name)
            )
