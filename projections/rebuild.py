"""Blue/green rebuild of projections from the log, with zero downtime.

1. The projections' tables are created afresh in a build schema (``ledger_build``) from their
   blocks in ``schema.sql``; the live tables keep serving and the live runners keep going.
2. The log is read once, in batches (the next batch is fetched while the current one is
   applied), decoded once, and every event is folded into each projection that reads its type,
   each projection's batches written on a connection of its own while the next batch is folded
   (``_Loader``), its history loaded without its key and every index built after, in rebuild
   mode: the first event that cannot be applied stops the rebuild, unless live mode skipped it
   too (``projection_failures``) or it is one the webhook door now refuses (logged by an earlier
   release): those are skipped again and listed, so a rebuild reproduces live state instead of
   stopping on them for ever. The same SQL runs with the build schema first on the search path.
3. Once nearly caught up, one transaction locks the live tables (reads wait a moment; nothing
   fails), applies the last events, swaps the build tables in, and sets each checkpoint and a
   new generation, so the live runners' next compare-and-set fails and they reload.

An interrupted or failed rebuild leaves the live tables and checkpoints untouched; the next run
drops the leftover build schema and starts again. Rebuilds never call Flex and never touch the
fulfillment reactor.
"""

from __future__ import annotations

import asyncio
import gc
import re
import time
from collections.abc import Callable, Sequence

import asyncpg
import msgspec

from ledger.db import SERVER_SETTINGS, schema_sql
from ledger.envelope import oversized_key
from ledger.log import head_position, read_batch
from projections.apply import BatchResult, ProjectionFailed, apply_isolating, decode_rows, fold_batch
from projections.base import Deltas, LogRow, Projection, like_patterns
from projections.coordination import REBUILD_LOCK_OFFSET, LocksBusy, release, take_all
from projections.registry import lock_id
from projections.sql import projection_queries as sql

__all__ = ["Progress", "RebuildBusy", "rebuild", "tables_ddl"]


class RebuildBusy(Exception):
    pass


class Progress(msgspec.Struct, kw_only=True):
    projections: list[str]
    position: int
    head: int
    events_per_second: float
    done: bool = False
    # per projection, the positions skipped as live mode skipped them (events that can never apply)
    skipped: dict[str, list[int]] = msgspec.field(default_factory=dict)


class _Counts(msgspec.Struct):
    applied: int = 0
    ignored: int = 0
    known: set[int] = msgspec.field(default_factory=set)  # positions live mode skipped
    skipped: list[int] = msgspec.field(default_factory=list)  # of those, the ones skipped again
    reasons: list[str] = msgspec.field(default_factory=list)


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


def _index_name(statement: str) -> str | None:
    """The index a ``CREATE INDEX`` statement makes (None for any other statement)."""
    match = re.match(r"CREATE\s+(?:UNIQUE\s+)?INDEX\s+(?:IF\s+NOT\s+EXISTS\s+)?(\w+)", statement, re.IGNORECASE)
    return match.group(1) if match else None


class _Folded(msgspec.Struct):
    mine: list[LogRow]  # the batch's events the projection reads
    deltas: Deltas
    result: BatchResult


def _skip_again(failure: ProjectionFailed, mine: Sequence[LogRow], c: _Counts) -> None:
    """Live mode's decision for this event, or an event the door now refuses (it was logged by an
    earlier release): skipped again, listed; anything else stops the rebuild (raised again)."""
    row = next((r for r in mine if r.position == failure.position), None)
    if row is None or oversized_key(row.payload) is None:
        raise failure
    c.known.add(failure.position)


def _fold(projection: Projection, rows: Sequence[LogRow], c: _Counts) -> _Folded:
    mine = [r for r in rows if projection.matches(r.event_type)]
    while True:
        try:
            return _Folded(mine, *fold_batch(projection, mine, strict=True, known=c.known))
        except ProjectionFailed as failure:
            _skip_again(failure, mine, c)


async def _write(
    conn: asyncpg.Connection,
    projection: Projection,
    folded: _Folded,
    start: int,
    end: int,
    c: _Counts,
    *,
    bulk: bool,
) -> None:
    ready: tuple[Deltas, BatchResult] | None = (folded.deltas, folded.result)
    while True:
        try:
            async with conn.transaction():  # a savepoint: a batch tried again starts clean
                result = await apply_isolating(
                    conn, projection, folded.mine, strict=True, bulk=bulk, known=c.known, folded=ready
                )
            break
        except ProjectionFailed as failure:  # an event the database refused, isolated
            _skip_again(failure, folded.mine, c)
            ready = None  # folded again, without it
    c.applied += result.applied
    c.ignored += (end - start) - len(folded.mine) + result.ignored
    c.skipped += [f.position for f in result.failures]
    c.reasons += [f.reason for f in result.failures]


async def _apply(
    conn: asyncpg.Connection, projection: Projection, rows: Sequence[LogRow], start: int, end: int, c: _Counts
) -> None:
    await _write(conn, projection, _fold(projection, rows, c), start, end, c, bulk=False)


class _Collector:
    """Python's cyclic garbage collector, run every few batches instead of by allocation counts:
    a bulk load allocates millions of short-lived objects (decoded events, states) that reference
    counting frees, and each automatic run walks every live object, the queued batches included:
    a quarter of a rebuild's time. Cycles (asyncio's) are still collected, every 50 batches, and
    the collector is itself again when the rebuild ends."""

    EVERY = 50

    def __init__(self) -> None:
        self.was_enabled = gc.isenabled()
        self.batches = 0
        gc.disable()

    def now_and_then(self) -> None:
        self.batches += 1
        if self.batches % self.EVERY == 0:
            gc.collect()

    def done(self) -> None:
        if self.was_enabled:
            gc.enable()


_Batch = tuple[_Folded, int, int]  # the projection's part of a batch, folded; start, end


class _Loader:
    """One projection's bulk load on a connection of its own. The reader folds each batch (Python)
    and hands it over; the loader writes it, in log order, each batch in its own transaction with
    the projection's progress. While one batch's rows are written, the next is folded and the other
    projections' batches written: the two cores both work."""

    def __init__(self, conn: asyncpg.Connection, projection: Projection, counts: _Counts) -> None:
        self.conn = conn
        self.projection = projection
        self.counts = counts
        self.batches: asyncio.Queue[_Batch | None] = asyncio.Queue(maxsize=2)
        self.task = asyncio.create_task(self._run(), name=f"rebuild-{projection.name}")

    async def _run(self) -> None:
        while (batch := await self.batches.get()) is not None:
            folded, start, end = batch
            async with self.conn.transaction():
                await _write(self.conn, self.projection, folded, start, end, self.counts, bulk=True)
                await self.conn.execute(sql.rebuild_progress, [self.projection.name], end)

    async def put(self, batch: _Batch | None) -> None:
        """Queues a batch (None: the end), waiting while two are queued; a failed load raises here."""
        put = asyncio.ensure_future(self.batches.put(batch))
        done, _ = await asyncio.wait([put, self.task], return_when=asyncio.FIRST_COMPLETED)
        if put not in done:
            put.cancel()
            self.task.result()  # raises what stopped the load
            raise RuntimeError(f"the {self.projection.name} loader stopped")


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
    try:
        taken = await take_all(conn, [REBUILD_LOCK_OFFSET, *(REBUILD_LOCK_OFFSET + lock_id(n) for n in names)])
    except LocksBusy:
        raise RebuildBusy("another ledger rebuild is running") from None
    patterns = like_patterns(p for projection in projections for p in projection.prefixes)
    reader = await asyncpg.connect(dsn, server_settings=SERVER_SETTINGS) if dsn else conn
    counts = {n: _Counts(known={r["position"] for r in await conn.fetch(sql.failures_of, n)}) for n in names}
    pending: asyncio.Task[list[asyncpg.Record]] | None = None
    helpers: list[asyncpg.Connection] = []
    loaders: list[_Loader] = []
    collect: _Collector | None = None
    try:
        await conn.execute(sql.no_statement_timeout)
        await conn.execute(sql.build_begin)
        # Secondary indexes (and the histories' keys) are built once the bulk of the rows is in, not row by row.
        deferred: list[str] = []
        for name in names:
            for statement in _statements(tables_ddl(name)):
                if statement.upper().startswith("CREATE INDEX"):
                    deferred.append(statement)
                else:
                    await conn.execute(statement)
        histories = [p.history_table for p in projections if p.history_table is not None]
        for key in await conn.fetch(sql.build_primary_keys, histories):
            await conn.execute(key["drop_key"])
            deferred.insert(0, key["add_key"])
        await conn.execute(sql.rebuild_started, names)

        position = 0
        started = time.monotonic()

        def report(head: int, done: bool = False) -> Progress:
            elapsed = max(time.monotonic() - started, 1e-9)
            progress = Progress(
                projections=names,
                position=position,
                head=head,
                events_per_second=position / elapsed,
                done=done,
                skipped={n: c.skipped for n, c in counts.items() if c.skipped},
            )
            if on_progress is not None:
                on_progress(progress)
            return progress

        def fetch(start: int, end: int) -> asyncio.Task[list[asyncpg.Record]]:
            return asyncio.ensure_future(read_batch(reader, start, end, patterns))

        if dsn:  # each projection loads on a connection of its own
            for projection in projections:
                helper = await asyncpg.connect(dsn, server_settings=SERVER_SETTINGS)
                helpers.append(helper)
                await helper.execute(sql.build_join)
                loaders.append(_Loader(helper, projection, counts[projection.name]))
        head = await head_position(conn)
        collect = _Collector()
        while head - position > switch_gap:
            collect.now_and_then()
            end = min(head, position + batch_size)
            records = await (pending or fetch(position, end))
            ahead = min(head, end + batch_size)
            pending = fetch(end, ahead) if reader is not conn and head - end > switch_gap else None
            rows, _ = decode_rows(records)
            if loaders:
                for loader in loaders:
                    await loader.put((_fold(loader.projection, rows, loader.counts), position, end))
            else:
                async with conn.transaction():
                    for projection in projections:
                        c = counts[projection.name]
                        await _write(conn, projection, _fold(projection, rows, c), position, end, c, bulk=True)
                    await conn.execute(sql.rebuild_progress, names, end)
            position = end
            report(head)
            if pending is None:
                head = await head_position(conn)
        for loader in loaders:
            await loader.put(None)
        await asyncio.gather(*(loader.task for loader in loaders))

        # What the bulk load left to do once for every row (an order's payment status), with the
        # keys and the indexes it reads in place, before the others (rows updated with fewer indexes
        # to keep); the last events, applied at the switch, settle their own rows.
        first = {name for p in projections for name in p.bulk_load_reads}
        for statement in [s for s in deferred if _index_name(s) in first or _index_name(s) is None]:
            await conn.execute(statement)
        for projection in projections:
            if projection.after_bulk_load is not None:
                async with conn.transaction():
                    await projection.after_bulk_load(conn)
        for statement in [s for s in deferred if _index_name(s) is not None and _index_name(s) not in first]:
            await conn.execute(statement)

        # The switch: live tables locked first (the live runners' lock order: tables, then state).
        tables = [t for p in projections for t in p.table_names]
        async with conn.transaction():
            await conn.execute(sql.build_lock_live, tables)
            await conn.execute(sql.rebuild_lock_states, names)
            head = await head_position(conn)
            while position < head:
                end = min(head, position + batch_size)
                rows, _ = decode_rows(await read_batch(conn, position, end, patterns))
                for projection in projections:
                    await _apply(conn, projection, rows, position, end, counts[projection.name])
                position = end
            await conn.execute(sql.build_swap, tables)
            for projection in projections:
                await conn.execute(
                    sql.rebuild_switched,
                    projection.name,
                    position,
                    counts[projection.name].applied,
                    counts[projection.name].ignored,
                    projection.shape,
                    len(counts[projection.name].skipped),
                )
                c = counts[projection.name]
                await conn.execute(sql.failures_keep, projection.name, c.skipped, c.reasons)
        await conn.execute(sql.build_end)
        return report(head, done=True)
    finally:
        if collect is not None:
            collect.done()
        if pending is not None:
            pending.cancel()
        for loader in loaders:
            loader.task.cancel()
        await asyncio.gather(*(loader.task for loader in loaders), return_exceptions=True)
        for helper in helpers:
            await helper.close()
        if reader is not conn:
            await reader.close()
        if not conn.is_closed():
            await conn.execute(sql.search_path_reset)
            await release(conn, taken)
