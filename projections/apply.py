"""Applying a batch of logged events to a projection's tables, in the caller's transaction."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Collection, Sequence

import asyncpg
import msgspec

from ledger.db import translate_errors
from ledger.errors import DataRefused
from projections.base import Deltas, LogRow, Projection
from projections.mergeable import Mergeable
from projections.observations import as_snapshot

__all__ = [
    "BatchResult",
    "ProjectionFailed",
    "apply_isolating",
    "decode_rows",
    "fold_batch",
    "isolating",
    "write_deltas",
]

_log = logging.getLogger(__name__)

_decode = msgspec.json.Decoder()


class ProjectionFailed(Exception):
    """An event a projection could not apply (raised in rebuild mode, recorded in live mode)."""

    def __init__(self, projection: str, position: int, reason: str) -> None:
        super().__init__(f"{projection}: cannot apply the event at position {position}: {reason}")
        self.projection = projection
        self.position = position
        self.reason = reason


class BatchResult(msgspec.Struct, kw_only=True):
    applied: int = 0
    ignored: int = 0
    failures: list[ProjectionFailed] = msgspec.field(default_factory=list)


def decode_rows(records: Sequence[asyncpg.Record]) -> tuple[list[LogRow], int]:
    """Logged rows whose body is a JSON object (an observation read as the snapshot it stands for:
    ``projections.observations``); returns them and how many were not."""
    rows = [row for row in map(_decoded, records) if row is not None]
    return rows, len(records) - len(rows)


def _decoded(record: asyncpg.Record) -> LogRow | None:
    try:
        payload = _decode.decode(record["raw_body"])
    except msgspec.DecodeError:
        return None
    if not isinstance(payload, dict):
        return None
    return as_snapshot(LogRow(position=record["position"], event_type=record["event_type"], payload=payload))


def fold_batch(
    projection: Projection, rows: Sequence[LogRow], *, strict: bool, known: Collection[int] = ()
) -> tuple[Deltas, BatchResult]:
    """Folds ``rows`` into the deltas they contribute (no database).

    ``strict`` (rebuild mode) raises ``ProjectionFailed`` on the first event that cannot be
    applied, unless its position is in ``known`` (live mode skipped it before: the same decision
    again); otherwise that event is skipped and reported in the result."""
    result = BatchResult()
    deltas = Deltas()
    for row in rows:
        try:
            if projection.fold(row, deltas):
                result.applied += 1
            else:
                result.ignored += 1
        except Exception as exc:  # a projection bug or an input it cannot handle
            failure = ProjectionFailed(projection.name, row.position, f"{type(exc).__name__}: {exc}")
            if strict and row.position not in known:
                raise failure from exc
            _log.warning("%s", failure)
            result.failures.append(failure)
    return deltas, result


async def write_deltas(
    conn: asyncpg.Connection,
    projection: Projection,
    deltas: Deltas,
    *,
    bulk: bool = False,
) -> None:
    """Merges ``deltas`` with the stored states and writes them back, one statement per table.

    ``bulk`` (a rebuild's bulk load) leaves ``after_write`` to the projection's
    ``after_bulk_load``."""
    written: dict[str, dict[str, Mergeable]] = {}
    for table in projection.tables:
        states = deltas.by_table.get(table.name)
        if not states:
            continue
        positions = deltas.positions[table.name]
        ids = sorted(states)
        found = {r["id"]: r for r in await conn.fetch(table.load, ids)}
        columns: list[list[object]] = []
        out_positions: list[int] = []
        out_states: list[str] = []
        for entity_id in ids:
            state, position = states[entity_id], positions[entity_id]
            previous = found.get(entity_id)
            if previous is not None:
                state = Mergeable.loads(previous["state"]).merge(state)
                position = max(position, previous["position"])
            values = table.row(entity_id, state)
            if not columns:
                columns = [[] for _ in values]
            for column, value in zip(columns, values, strict=True):
                column.append(value)
            out_positions.append(position)
            out_states.append(state.dumps())
            written.setdefault(table.name, {})[entity_id] = state
        await conn.execute(table.upsert, ids, *columns, out_positions, out_states)
    if projection.history is not None and deltas.touched:
        touched = sorted(deltas.touched)
        await conn.execute(projection.history, [e for e, _ in touched], [p for _, p in touched])
    if projection.after_write is not None and written and not bulk:
        await projection.after_write(conn, written)


async def apply_isolating(
    conn: asyncpg.Connection,
    projection: Projection,
    rows: Sequence[LogRow],
    *,
    strict: bool,
    bulk: bool = False,
    known: Collection[int] = (),
    folded: tuple[Deltas, BatchResult] | None = None,
) -> BatchResult:
    """Folds ``rows`` (``fold_batch``) and writes what they contribute (``write_deltas``),
    isolating any event whose data the database refuses (``isolating``).

    ``folded``: ``rows`` already folded (``fold_batch``), written as they are unless an event
    must be isolated (then each is folded again on its own)."""

    async def apply(batch: Sequence[LogRow]) -> BatchResult:
        if folded is not None and batch is rows:
            deltas, result = folded
        else:
            deltas, result = fold_batch(projection, batch, strict=strict, known=known)
        await write_deltas(conn, projection, deltas, bulk=bulk)
        return result

    return await isolating(conn, projection.name, rows, apply, strict=strict, known=known)


async def isolating(
    conn: asyncpg.Connection,
    name: str,
    rows: Sequence[LogRow],
    apply: Callable[[Sequence[LogRow]], Awaitable[BatchResult]],
    *,
    strict: bool = False,
    known: Collection[int] = (),
) -> BatchResult:
    """Runs a follower's ``apply`` on the batch in one go; if the database refuses some event's data
    (``DataRefused``: an id no index can hold, a value no column takes), event by event,
    each in a savepoint, so that only that event fails: recorded in the result (live mode, or a
    rebuild meeting a position in ``known``) or raised as ``ProjectionFailed`` naming its position
    (``strict``, a rebuild). Every follower of the log goes through here: one poison event never
    stops the rest."""
    try:
        with translate_errors():
            async with conn.transaction():  # a savepoint
                return await apply(rows)
    except DataRefused:
        pass
    result = BatchResult()
    for row in rows:
        try:
            with translate_errors():
                async with conn.transaction():
                    one = await apply([row])
        except DataRefused as exc:
            failure = ProjectionFailed(name, row.position, exc.message)
            if strict and row.position not in known:
                raise failure from exc
            _log.warning("%s", failure)
            result.failures.append(failure)
            continue
        result.applied += one.applied
        result.ignored += one.ignored
        result.failures += one.failures
    return result
