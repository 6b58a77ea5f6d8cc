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
from collections.abc import Awaitable, Callable, Mapping
from typing import Protocol

import asyncpg

from ledger.log import read_batch
from projections.apply import BatchResult, decode_rows
from projections.base import LogRow
from projections.sql import projection_queries as sql

__all__ = ["CheckpointMoved", "FollowerPolicy", "follow", "follow_once", "seed_checkpoints"]

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

    async def apply(self, conn: asyncpg.Connection, rows: list[LogRow]) -> BatchResult:
        """Applies a batch in the caller's transaction; ``applied`` and ``failures`` are counted,
        everything else in the batch's range is counted as skipped."""
        ...


async def follow_once(conn: asyncpg.Connection, policy: FollowerPolicy, batch_size: int) -> int:
    """Applies at most one batch after the checkpoint. Returns how far the checkpoint moved."""
    state = await conn.fetchrow(sql.state_get, policy.name)
    head = state["head"]
    start = state["position"]
    if start >= head:
        return 0
    end = min(head, start + batch_size)
    rows, _ = decode_rows(await read_batch(conn, start, end, policy.patterns))
    async with conn.transaction():
        result = await policy.apply(conn, rows)
        skipped = (end - start) - result.applied - len(result.failures)
        moved = await conn.fetch(
            sql.checkpoint_advance, policy.name, start, state["generation"], end, result.applied, skipped
        )
        if not moved:
            raise CheckpointMoved
        for failure in result.failures:
            await conn.execute(sql.record_failure, policy.name, failure.reason, failure.position)
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
