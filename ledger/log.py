"""The event log: append (serialised, deduplicated, hash-chained), read and verify.

Appends go through the ``ledger_append`` function in ``schema.sql``: it locks the one-row
``ledger_head``, skips event ids already logged (returning their first position), assigns the
next contiguous positions, links each row's hash to the previous one, inserts, and sends one
NOTIFY per batch. PostgreSQL makes a transaction visible before it releases its locks, so a
reader that reads ``position > checkpoint`` in order never skips an event.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import msgspec

from ledger.db import connection
from ledger.sql import log_queries

__all__ = [
    "GENESIS_HASH",
    "AppendResult",
    "ChainReport",
    "EventLog",
    "LogSummary",
    "LoggedEvent",
    "NewEvent",
    "append_with",
    "event_body",
    "events_at",
    "head_position",
    "logged",
    "position_at",
    "read_batch",
    "summary",
    "verify_chain",
]

GENESIS_HASH = bytes(32)
NOTIFY_CHANNEL = "ledger_events"


class NewEvent(msgspec.Struct, frozen=True, kw_only=True):
    """An event to append: ``raw_body`` is the exact JSON bytes (the signed body, for Flex events);
    the log stores them and their parsed form (``payload``)."""

    event_id: str
    event_type: str
    raw_body: bytes
    source: str = "flex"
    event_dt: int | None = None
    occurred_at: datetime | None = None
    headers: str | None = None  # JSON object text
    message_id: str | None = None


class AppendResult(msgspec.Struct, frozen=True):
    position: int
    duplicate: bool


class LoggedEvent(msgspec.Struct, frozen=True, kw_only=True):
    position: int
    event_id: str
    event_type: str
    source: str
    occurred_at: datetime | None
    recorded_at: datetime
    payload: msgspec.Raw


class ChainReport(msgspec.Struct, frozen=True, kw_only=True):
    ok: bool
    rows: int
    head_position: int
    bad_position: int | None = None
    problem: str | None = None


class EventLog:
    """The log, over a connection pool."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def append(self, events: Sequence[NewEvent]) -> list[AppendResult]:
        """Appends a batch in one transaction; results in input order."""
        if not events:
            return []
        async with connection(self.pool) as conn:
            return await append_with(conn, events)

    async def quarantine(self, *, message_id: str | None, headers: str, body: bytes, reason: str) -> int:
        async with connection(self.pool) as conn:
            return int(await conn.fetchval(log_queries.quarantine, message_id, headers, body, reason))

    async def head(self) -> int:
        async with connection(self.pool) as conn:
            return await head_position(conn)

    async def schema_version(self) -> int:
        """The version of the schema applied to this database (``DatabaseUnavailable`` before any)."""
        async with connection(self.pool) as conn:
            return int(await conn.fetchval(log_queries.schema_version))

    async def summary(self) -> LogSummary:
        async with connection(self.pool) as conn:
            return await summary(conn)

    async def recent_rate(self, seconds: float = 60.0) -> float:
        """Events appended per second over the last ``seconds``."""
        async with connection(self.pool) as conn:
            head = await head_position(conn)
            since = await position_at(conn, datetime.now(UTC) - timedelta(seconds=seconds))
        return (head - since) / seconds

    async def quarantined(self, *, before: int | None = None, limit: int = 50) -> list[dict[str, Any]]:
        """Quarantined deliveries, newest first (``id`` below ``before``): body and headers as received."""
        async with connection(self.pool) as conn:
            rows = await conn.fetch(log_queries.quarantine_list, before or 2**63 - 1, limit)
        return [
            {
                "id": r["id"],
                "received_at": r["received_at"],
                "message_id": r["message_id"],
                "headers": msgspec.json.decode(r["headers"]),
                "body": bytes(r["body"]).decode("utf-8", "replace"),
                "reason": r["reason"],
            }
            for r in rows
        ]

    async def list(self, *, after: int, limit: int, event_type: str | None = None) -> list[LoggedEvent]:
        async with connection(self.pool) as conn:
            if event_type is None:
                rows = await conn.fetch(log_queries.list_events, after, limit)
            else:
                rows = await conn.fetch(log_queries.list_events_of_type, after, limit, event_type)
        return [_logged(r) for r in rows]


class LogSummary(msgspec.Struct, kw_only=True):
    head: int  # positions are contiguous from 1: also the number of events
    quarantined: int


async def summary(conn: asyncpg.Connection) -> LogSummary:
    row = await conn.fetchrow(log_queries.log_summary)
    return LogSummary(head=row["head"], quarantined=row["quarantined"])


async def event_body(conn: asyncpg.Connection, event_id: str) -> bytes | None:
    """The raw body of the event with this id, if the log has it."""
    body = await conn.fetchval(log_queries.event_body, event_id)
    return bytes(body) if body is not None else None


async def head_position(conn: asyncpg.Connection) -> int:
    """The position of the last event appended (0 for an empty log)."""
    return int(await conn.fetchval(log_queries.head))


def _logged(r: asyncpg.Record) -> LoggedEvent:
    return LoggedEvent(
        position=r["position"],
        event_id=r["event_id"],
        event_type=r["event_type"],
        source=r["source"],
        occurred_at=r["occurred_at"],
        recorded_at=r["recorded_at"],
        payload=msgspec.Raw(r["payload"].encode()),
    )


async def events_at(conn: asyncpg.Connection, positions: Sequence[int]) -> list[asyncpg.Record]:
    """The events at ``positions``, in log order: as ``read_batch`` reads them, and as ``LoggedEvent``
    fields (``logged``)."""
    return list(await conn.fetch(log_queries.events_at, list(positions)))


def logged(records: Sequence[asyncpg.Record]) -> list[LoggedEvent]:
    return [_logged(r) for r in records]


async def position_at(conn: asyncpg.Connection, moment: datetime) -> int:
    """The last position recorded at or before ``moment`` (0 when none): a binary search over the
    positions, one primary-key probe per step, whatever the size of the log."""
    low, high = 0, await head_position(conn)
    while low < high:
        middle = (low + high + 1) // 2
        if await conn.fetchval(log_queries.recorded_at, middle) <= moment:
            low = middle
        else:
            high = middle - 1
    return low


async def read_batch(conn: asyncpg.Connection, after: int, upto: int, patterns: Sequence[str]) -> list[asyncpg.Record]:
    """The events at positions ``after < position <= upto`` whose type is ``LIKE`` one of ``patterns``,
    in log order: how every follower of the log (projection runner, rebuild, reactor) reads it."""
    return list(await conn.fetch(log_queries.read_batch, after, upto, patterns))


async def append_with(conn: asyncpg.Connection, events: Sequence[NewEvent]) -> list[AppendResult]:
    """Appends a batch on ``conn``: in the caller's transaction if one is open, else in its own."""
    rows = await conn.fetch(
        log_queries.append,
        [e.event_id for e in events],
        [e.event_type for e in events],
        [e.source for e in events],
        [e.event_dt for e in events],
        [e.occurred_at for e in events],
        [e.raw_body for e in events],
        [e.headers for e in events],
        [e.message_id for e in events],
    )
    return [AppendResult(r["out_position"], r["out_duplicate"]) for r in rows]


async def verify_chain(
    conn: asyncpg.Connection,
    *,
    segment: int = 20_000,
    progress: Callable[[int], None] | None = None,
    helpers: Sequence[asyncpg.Connection] = (),
) -> ChainReport:
    """Walks the log up to the head as it stands when the walk starts, in segments of positions,
    checking positions, links and hashes, and that the last row is the one the head names.

    The head is read first: the log only grows past it, so events appended during the walk are
    neither walked nor taken for a broken tail (a check that cries wolf on a live log is worse
    than none). Every row up to that head must be there and must hash to it.

    ``helpers``: more connections to the same database; segments are checked on all of them at
    once (the hashing is the database's work: one core per connection), and the link between two
    segments is checked here, in log order, so the first problem reported is the first in the log."""
    head = await conn.fetchrow(log_queries.head)
    if head is None:
        return ChainReport(ok=False, rows=0, head_position=0, bad_position=0, problem="the log's head row is missing")
    upto, head_hash = int(head["position"]), bytes(head["hash"])
    bounds = [(start, min(start + segment, upto)) for start in range(0, upto, segment)]
    idle: asyncio.Queue[asyncpg.Connection] = asyncio.Queue()
    for c in (conn, *helpers):
        idle.put_nowait(c)

    async def check(after: int, end: int) -> asyncpg.Record:
        c = await idle.get()
        try:
            return await c.fetchrow(log_queries.verify_chain, after, end)
        finally:
            idle.put_nowait(c)

    window = 2 * (1 + len(helpers))  # segments asked for ahead of the one being looked at
    pending = [asyncio.ensure_future(check(*b)) for b in bounds[:window]]
    prev_hash, rows = GENESIS_HASH, 0
    try:
        for i, (after, end) in enumerate(bounds):
            if i + window < len(bounds):
                pending.append(asyncio.ensure_future(check(*bounds[i + window])))
            seg = await pending[i]
            if seg["rows"] == 0 or (seg["last_position"] < end and seg["bad_position"] is None):
                last = seg["last_position"] or after
                return _broken(
                    rows + seg["rows"],
                    upto,
                    last + 1,
                    f"the log ends at position {last} but its head says {upto}"
                    if end == upto
                    else f"position {last + 1} is missing",
                )
            if seg["first_position"] == after + 1 and bytes(seg["first_prev_hash"]) != prev_hash:
                return _broken(rows, upto, after + 1, "its link to the previous row is broken")
            if seg["bad_position"] is not None:
                return _broken(rows, upto, seg["bad_position"], seg["problem"])
            rows += seg["rows"]
            prev_hash = bytes(seg["last_hash"])
            if progress is not None:
                progress(rows)
    finally:
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
    if prev_hash != head_hash:
        return _broken(rows, upto, upto, "the last row's hash does not match the head")
    # A row beyond the head is one no append wrote (an append moves the head in the transaction
    # that inserts its rows); head and rows are read in one snapshot, so an append is never one.
    now = await conn.fetchrow(log_queries.rows_beyond_head)
    if now is not None and now["beyond"]:
        return ChainReport(
            ok=False,
            rows=rows,
            head_position=upto,
            bad_position=int(now["head"]) + 1,
            problem=f"the log holds rows beyond position {now['head']}, where its head says it ends",
        )
    return ChainReport(ok=True, rows=rows, head_position=upto)


def _broken(rows: int, upto: int, position: int, problem: str) -> ChainReport:
    return ChainReport(ok=False, rows=rows, head_position=upto, bad_position=position, problem=problem)
