"""The projection runner: one active runner per projection across every process.

Each runner holds a session advisory lock on its own connection (a second ``ledger serve``
waits as a standby and takes over if the first goes away). It reads the log in batches after
its checkpoint, applies each batch and advances the checkpoint by compare-and-set in the same
transaction. ``NOTIFY ledger_events`` only wakes it; polling from the checkpoint is the truth.
In live mode an event that cannot be applied is recorded (``ledger status``) and skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Protocol

import asyncpg

from ledger.db import SERVER_SETTINGS, UNAVAILABLE
from projections.apply import BatchResult, ProjectionFailed, apply_batch, decode_rows, queries
from projections.base import LogRow, Projection

__all__ = ["LOCK_NAMESPACE", "ProjectionRunner", "catch_up_once", "lock_id", "run_exclusively"]

_log = logging.getLogger(__name__)

LOCK_NAMESPACE = 0x4C454447  # "LEDG": advisory locks of this service are (namespace, id) pairs
_LOCK_IDS = {"orders": 1, "customers": 2, "subscriptions": 3, "fulfillment": 4, "inventory": 5}
REBUILD_LOCK_OFFSET = 1000


def lock_id(name: str) -> int:
    return _LOCK_IDS[name]


class CheckpointMoved(Exception):
    """Another writer (a rebuild switch) moved the checkpoint: reload and go on."""


async def catch_up_once(conn: asyncpg.Connection, projection: Projection, batch_size: int) -> int:
    """Applies at most one batch after the checkpoint. Returns how far the checkpoint moved."""
    state = await conn.fetchrow(queries.state_get, projection.name)
    head = state["head"]
    start = state["position"]
    if start >= head:
        return 0
    end = min(head, start + batch_size)
    records = await conn.fetch(queries.read_batch, start, end, projection.patterns)
    rows, undecodable = decode_rows(records)
    async with conn.transaction():
        result = await _apply_or_isolate(conn, projection, rows)
        skipped = (end - start) - len(records) + undecodable + result.ignored
        moved = await conn.fetch(
            queries.checkpoint_advance, projection.name, start, state["generation"], end, result.applied, skipped
        )
        if not moved:
            raise CheckpointMoved
        for failure in result.failures:
            await conn.execute(queries.record_failure, projection.name, failure.reason, failure.position)
    return int(end - start)


async def _apply_or_isolate(conn: asyncpg.Connection, projection: Projection, rows: list[LogRow]) -> BatchResult:
    """The batch in one go; if the tables refuse some event's data, event by event, so only that
    event is recorded as failed and the projection goes on (live mode)."""
    try:
        async with conn.transaction():  # a savepoint
            return await apply_batch(conn, projection, rows, strict=False)
    except asyncpg.DataError:
        pass
    result = BatchResult()
    for row in rows:
        try:
            async with conn.transaction():
                one = await apply_batch(conn, projection, [row], strict=False)
        except asyncpg.DataError as exc:
            result.failures.append(ProjectionFailed(projection.name, row.position, f"{type(exc).__name__}: {exc}"))
            continue
        result.applied += one.applied
        result.ignored += one.ignored
        result.failures += one.failures
    return result


class Exclusive(Protocol):
    active: bool


async def run_exclusively(
    dsn: str,
    name: str,
    owner: Exclusive,
    body: Callable[[asyncpg.Connection], Awaitable[None]],
    standby_interval: float,
) -> None:
    """Runs ``body`` on a dedicated connection holding ``name``'s session advisory lock.

    While another process holds the lock this one waits as a standby; if the connection (and so
    the lock) is lost, it reconnects and competes again. ``owner.active`` says whether it holds it.
    """
    while True:
        conn = None
        try:
            conn = await asyncpg.connect(dsn, server_settings=SERVER_SETTINGS)
            if not await conn.fetchval(queries.try_lock, LOCK_NAMESPACE, lock_id(name)):
                await asyncio.sleep(standby_interval)
                continue
            owner.active = True
            _log.info("%s: running", name)
            await body(conn)
        except asyncio.CancelledError:
            raise
        except (*UNAVAILABLE, asyncpg.PostgresError) as exc:
            _log.warning("%s: %s; retrying", name, exc)
            await asyncio.sleep(1)
        finally:
            owner.active = False
            if conn is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(conn.close(), 5)


class ProjectionRunner:
    def __init__(
        self,
        dsn: str,
        projection: Projection,
        wake: asyncio.Event,
        *,
        batch_size: int = 1000,
        poll_interval: float = 1.0,
        standby_interval: float = 2.0,
        quiet_period: float = 0.05,
    ) -> None:
        self.dsn = dsn
        self.projection = projection
        self.quiet_period = quiet_period
        self.wake = wake
        self.batch_size = batch_size
        self.poll_interval = poll_interval
        self.standby_interval = standby_interval
        self.active = False

    async def run(self) -> None:
        """Runs until cancelled, surviving database outages."""
        await run_exclusively(self.dsn, self.projection.name, self, self._loop, self.standby_interval)

    async def _loop(self, conn: asyncpg.Connection) -> None:
        while True:
            self.wake.clear()
            try:
                moved = await catch_up_once(conn, self.projection, self.batch_size)
            except CheckpointMoved:
                _log.info("projection %s: checkpoint moved by a rebuild; reloading", self.projection.name)
                continue
            if moved >= self.batch_size:
                continue  # behind: next batch at once
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), self.poll_interval)
            # Let a few group commits gather: one batch per quiet period instead of one per commit,
            # which under load would cost ingest more than it gains in freshness.
            await asyncio.sleep(self.quiet_period)
