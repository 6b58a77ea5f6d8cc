"""The projection runner: one active runner per projection across every process.

Each runner follows the log (``projections.follower``) on a connection holding its projection's
advisory lock (``projections.coordination``): a second ``ledger serve`` waits as a standby and
takes over if the first goes away. In live mode an event that cannot be applied is recorded
(``ledger status``) and skipped; the rest of its batch is applied.
"""

from __future__ import annotations

import asyncio

import asyncpg

from projections.apply import BatchResult, apply_isolating
from projections.base import LogRow, Projection
from projections.coordination import run_exclusively
from projections.follower import follow, follow_once
from projections.registry import lock_id

__all__ = ["ProjectionRunner", "catch_up_once"]


class ProjectionPolicy:
    """A projection's policy as a follower of the log: its batch folded into its tables."""

    def __init__(self, projection: Projection) -> None:
        self.projection = projection
        self.name = projection.name
        self.patterns = projection.patterns

    async def apply(self, conn: asyncpg.Connection, rows: list[LogRow]) -> BatchResult:
        """The batch in one go; if the tables refuse some event's data, event by event, so only
        that event is recorded as failed and the projection goes on."""
        return await apply_isolating(conn, self.projection, rows, strict=False)


async def catch_up_once(conn: asyncpg.Connection, projection: Projection, batch_size: int) -> int:
    """Applies at most one batch after the checkpoint. Returns how far the checkpoint moved."""
    return await follow_once(conn, ProjectionPolicy(projection), batch_size)


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
        name = self.projection.name
        await run_exclusively(self.dsn, name, lock_id(name), self, self._follow, self.standby_interval)

    async def _follow(self, conn: asyncpg.Connection) -> None:
        await follow(
            conn,
            ProjectionPolicy(self.projection),
            self.wake,
            batch_size=self.batch_size,
            poll_interval=self.poll_interval,
            quiet_period=self.quiet_period,
        )
