"""Blue/green rebuild of projections from the log, with zero downtime.

1. The projections' tables are created afresh in a build schema (``ledger_build``) from their
   blocks in ``schema.sql``; the live tables keep serving and the live runners keep going.
2. The log is read once, in batches (the next batch is fetched while the current one is
   applied), and every event is folded into each projection that reads its type, in rebuild
   mode: the first event that cannot be applied stops the rebuild. The same SQL runs with the
   build schema first on the search path.
3. Once nearly caught up, one transaction locks the live tables (reads wait a moment; nothing
   fails), applies the last events, swaps the build tables in, and sets each checkpoint and a
   new generation, so the live runners' next compare-and-set fails and they reload.

An interrupted or failed rebuild leaves the live tables and checkpoints untouched; the next run
drops the leftover build schema and starts again. Rebuilds never call Flex and never touch the
fulfillment reactor.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable, Sequence

import asyncpg
import msgspec

from ledger.db import SERVER_SETTINGS, schema_sql
from ledger.db import queries as ledger_queries
from projections.apply import apply_batch, decode_rows, queries
from projections.base import LogRow, Projection, like_patterns
from projections.runner import LOCK_NAMESPACE, REBUILD_LOCK_OFFSET, lock_id

__all__ = ["BUILD_SCHEMA", "Progress", "RebuildBusy", "rebuild", "tables_ddl"]

BUILD_SCHEMA = "ledger_build"


class RebuildBusy(Exception):
    pass


class Progress(msgspec.Struct, kw_only=True):
    projections: list[str]
    position: int
    head: int
    events_per_second: float
    done: bool = False


class _Counts(msgspec.Struct):
    applied: int = 0
    ignored: int = 0


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


def _statements(ddl: str) -> list[str]:
    """The statements of a projection's DDL block (plain statements, no bodies with semicolons)."""
    lines = [line for line in ddl.splitlines() if not line.lstrip().startswith("--")]
    return [part.strip() for part in "\n".join(lines).split(";") if part.strip()]


async def _apply(
    conn: asyncpg.Connection,
    projections: Sequence[Projection],
    records: Sequence[asyncpg.Record],
    start: int,
    end: int,
    counts: dict[str, _Counts],
) -> None:
    rows, _ = decode_rows(records)
    for projection in projections:
        mine: list[LogRow] = [r for r in rows if projection.matches(r.event_type)]
        result = await apply_batch(conn, projection, mine, strict=True)
        c = counts[projection.name]
        c.applied += result.applied
        c.ignored += (end - start) - len(mine) + result.ignored


async def rebuild(
    conn: asyncpg.Connection,
    projections: Sequence[Projection],
    *,
    dsn: str | None = None,
    batch_size: int = 5000,
    on_progress: Callable[[Progress], None] | None = None,
    switch_gap: int = 2000,
) -> Progress:
    """Rebuilds ``projections`` on ``conn`` (a dedicated connection) in one pass over the log.

    ``dsn``, when given, opens a second connection that reads ahead while batches are applied.
    """
    names = [p.name for p in projections]
    # One rebuild at a time (they share the build schema), and each projection marked as rebuilding.
    locks = [REBUILD_LOCK_OFFSET, *(REBUILD_LOCK_OFFSET + lock_id(n) for n in names)]
    taken: list[int] = []
    for key in locks:
        if not await conn.fetchval(queries.try_lock, LOCK_NAMESPACE, key):
            for held in taken:
                await conn.execute(queries.unlock, LOCK_NAMESPACE, held)
            raise RebuildBusy("another ledger rebuild is running")
        taken.append(key)
    patterns = like_patterns(p for projection in projections for p in projection.prefixes)
    reader = await asyncpg.connect(dsn, server_settings=SERVER_SETTINGS) if dsn else conn
    counts = {n: _Counts() for n in names}
    pending: asyncio.Task[list[asyncpg.Record]] | None = None
    try:
        await conn.execute("SET statement_timeout = 0")
        await conn.execute(f"DROP SCHEMA IF EXISTS {BUILD_SCHEMA} CASCADE")
        await conn.execute(f"CREATE SCHEMA {BUILD_SCHEMA}")
        await conn.execute(f"SET search_path = {BUILD_SCHEMA}, public")
        # Secondary indexes are built once the bulk of the rows is in, not row by row.
        deferred: list[str] = []
        for name in names:
            for statement in _statements(tables_ddl(name)):
                if statement.upper().startswith("CREATE INDEX"):
                    deferred.append(statement)
                else:
                    await conn.execute(statement)
        await conn.execute(queries.rebuild_started, names)

        position = 0
        started = time.monotonic()

        def report(head: int, done: bool = False) -> Progress:
            elapsed = max(time.monotonic() - started, 1e-9)
            progress = Progress(
                projections=names, position=position, head=head, events_per_second=position / elapsed, done=done
            )
            if on_progress is not None:
                on_progress(progress)
            return progress

        def fetch(start: int, end: int) -> asyncio.Task[list[asyncpg.Record]]:
            return asyncio.ensure_future(reader.fetch(queries.read_batch, start, end, patterns))

        head = await conn.fetchval(ledger_queries.head)
        while head - position > switch_gap:
            end = min(head, position + batch_size)
            records = await (pending or fetch(position, end))
            ahead = min(head, end + batch_size)
            pending = fetch(end, ahead) if reader is not conn and head - end > switch_gap else None
            async with conn.transaction():
                await _apply(conn, projections, records, position, end, counts)
                await conn.execute(queries.rebuild_progress, names, end)
            position = end
            report(head)
            if pending is None:
                head = await conn.fetchval(ledger_queries.head)

        for statement in deferred:
            await conn.execute(statement)

        # The switch: live tables locked first (the live runners' lock order: tables, then state).
        live_tables = ", ".join(f"public.{t}" for p in projections for t in p.table_names)
        async with conn.transaction():
            await conn.execute(f"LOCK TABLE {live_tables} IN ACCESS EXCLUSIVE MODE")
            await conn.execute(queries.rebuild_lock_states, names)
            head = await conn.fetchval(ledger_queries.head)
            while position < head:
                end = min(head, position + batch_size)
                records = await conn.fetch(queries.read_batch, position, end, patterns)
                await _apply(conn, projections, records, position, end, counts)
                position = end
            for projection in projections:
                for table in projection.table_names:
                    await conn.execute(f"DROP TABLE public.{table}")
                    await conn.execute(f"ALTER TABLE {BUILD_SCHEMA}.{table} SET SCHEMA public")
                await conn.execute(
                    queries.rebuild_switched,
                    projection.name,
                    position,
                    counts[projection.name].applied,
                    counts[projection.name].ignored,
                )
        await conn.execute(f"DROP SCHEMA IF EXISTS {BUILD_SCHEMA} CASCADE")
        return report(head, done=True)
    finally:
        if pending is not None:
            pending.cancel()
        if reader is not conn:
            await reader.close()
        if not conn.is_closed():
            await conn.execute("SET search_path TO DEFAULT")
            for key in taken:
                await conn.execute(queries.unlock, LOCK_NAMESPACE, key)
