"""Following the log: read after a checkpoint, apply, move the checkpoint by compare-and-set.

Every follower of the log — each projection's runner and the fulfillment reactor's intake — is
this one skeleton with its own ``FollowerPolicy``: a name (its ``projection_state`` row), the event
types it reads, and what it does with a batch inside the transaction that moves its checkpoint
(poison isolated by ``projections.apply.isolating``). The lock, the standby and the restarts
with backoff are ``projections.coordination.run_exclusively``'s. ``follow_once`` runs one batch;
``follow`` runs batches as the log grows: at once while behind, else when woken (``NOTIFY``) or
after ``poll_interval``, whichever comes first. Polling from the checkpoint is the truth; a wake-up
only saves time. A checkpoint moved under a follower (a rebuild switch) is reloaded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

import asyncpg
import msgspec

from ledger.log import read_batch
from projections.apply import BatchResult, decode_rows
from projections.base import LogRow
from projections.sql import projection_queries as sql

__all__ = [
    "Checkpoint",
    "CheckpointMoved",
    "FollowerPolicy",
    "FollowerStore",
    "PostgresFollowerStore",
    "follow",
    "follow_once",
    "seed_checkpoints",
]

_log = logging.getLogger(__name__)


class CheckpointMoved(Exception):
    """Another writer (a rebuild switch) moved the checkpoint: reload and go on."""


class FollowerPolicy(Protocol):
    """One follower of the log."""

    @property
    def name(self) -> str: ...

    @property
    def patterns(self) -> list[str]:
        """The event types it reads, as SQL ``LIKE`` patterns."""
        ...

    async def apply(self, conn: Any, rows: list[LogRow]) -> BatchResult:
        """Applies a batch in the unit the checkpoint moves in (``conn``: the connection holding the
        transaction, for PostgreSQL); ``applied`` and ``failures`` are counted, everything else in
        the batch's range is counted as skipped."""
        ...


class Checkpoint(msgspec.Struct, frozen=True):
    position: int
    generation: int  # bumped by every rebuild switch
    head: int  # the log's head when it was read


class FollowerStore(Protocol):
    """Where a follower's checkpoint and the log it follows are kept: PostgreSQL
    (``PostgresFollowerStore``, what runs) or memory (``projections.memory.InMemoryFollowerStore``,
    for tests of the skeleton and its policies). ``tests/store_contract.py`` holds both to one
    contract."""

    async def checkpoint(self, name: str) -> Checkpoint: ...

    async def read(self, after: int, upto: int, patterns: Sequence[str]) -> Sequence[Mapping[str, Any]]:
        """The events at ``after < position <= upto`` of the types, in log order (position,
        event_type, raw_body)."""
        ...

    def unit(self) -> AbstractAsyncContextManager[Any]:
        """What a policy's batch and the checkpoint's move share: all of it, or none of it. It
        yields what the policy's ``apply`` is handed (a connection, for PostgreSQL)."""
        ...

    async def advance(
        self, unit: Any, name: str, start: int, generation: int, end: int, applied: int, skipped: int
    ) -> bool:
        """Compare-and-set: moves the checkpoint from ``start`` (in ``generation``) to ``end``."""
        ...

    async def record_failure(self, unit: Any, name: str, reason: str, position: int) -> None: ...


class PostgresFollowerStore:
    """``FollowerStore`` on one connection (the follower's own, under its lock)."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn

    async def checkpoint(self, name: str) -> Checkpoint:
        state = await self.conn.fetchrow(sql.state_get, name)
        return Checkpoint(position=state["position"], generation=state["generation"], head=state["head"])

    async def read(self, after: int, upto: int, patterns: Sequence[str]) -> Sequence[Mapping[str, Any]]:
        return await read_batch(self.conn, after, upto, patterns)

    @contextlib.asynccontextmanager
    async def unit(self) -> AsyncIterator[asyncpg.Connection]:
        async with self.conn.transaction():
            yield self.conn

    async def advance(
        self, unit: Any, name: str, start: int, generation: int, end: int, applied: int, skipped: int
    ) -> bool:
        return bool(await self.conn.fetch(sql.checkpoint_advance, name, start, generation, end, applied, skipped))

    async def record_failure(self, unit: Any, name: str, reason: str, position: int) -> None:
        await self.conn.execute(sql.record_failure, name, reason, position)


async def follow_once(where: asyncpg.Connection | FollowerStore, policy: FollowerPolicy, batch_size: int) -> int:
    """Applies at most one batch after the checkpoint, in one unit with the checkpoint's move (on a
    connection: PostgreSQL). Returns how far the checkpoint moved."""
    store = PostgresFollowerStore(where) if isinstance(where, asyncpg.Connection) else where
    checkpoint = await store.checkpoint(policy.name)
    start = checkpoint.position
    if start >= checkpoint.head:
        return 0
    end = min(checkpoint.head, start + batch_size)
    rows, _ = decode_rows(await store.read(start, end, policy.patterns))
    async with store.unit() as unit:
        result = await policy.apply(unit, rows)
        skipped = (end - start) - result.applied - len(result.failures)
        if not await store.advance(unit, policy.name, start, checkpoint.generation, end, result.applied, skipped):
            raise CheckpointMoved
        for failure in result.failures:
            await store.record_failure(unit, policy.name, failure.reason, failure.position)
    return int(end - start)


async def follow(
    conn: asyncpg.Connection,
    policy: FollowerPolicy,
    wake: asyncio.Event,
    *,
    batch_size: int,
    poll_interval: float,
    quiet_period: float,
    when_caught_up: Callable[[asyncpg.Connection], Awaitable[None]] | None = None,
) -> None:
    """Follows the log until cancelled. ``when_caught_up`` runs each time the follower reaches the
    head it read; ``quiet_period`` lets a few group commits gather after a wake-up, so that under
    load there is one batch per quiet period instead of one per commit."""
    while True:
        wake.clear()
        try:
            moved = await follow_once(conn, policy, batch_size)
        except CheckpointMoved:
            _log.info("%s: checkpoint moved by a rebuild; reloading", policy.name)
            continue
        if moved >= batch_size:
            continue  # behind: next batch at once
        if when_caught_up is not None:
            await when_caught_up(conn)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(wake.wait(), poll_interval)
        await asyncio.sleep(quiet_period)


async def seed_checkpoints(conn: asyncpg.Connection, shapes: Mapping[str, int]) -> None:
    """A checkpoint row for each follower (name: the shape of its tables) that has none; a new
    follower starts at position 0."""
    await conn.execute(sql.checkpoints_seed, list(shapes), list(shapes.values()))
