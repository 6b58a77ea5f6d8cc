"""The followers' store in memory: the log (``ledger.memory.InMemoryLog``) and the checkpoints, with
the same contract as PostgreSQL's (``projections.follower.PostgresFollowerStore``), so the
follower skeleton and a follower's policy are tested in milliseconds, without a database.

A unit (``unit()``) is all or nothing, as a transaction is: what it changes (the checkpoint's
move, the failures) is applied when it ends, and dropped if it raises; what others change meanwhile
(a rebuild switch) stays. What a policy keeps of its own is the policy's.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any

import msgspec

from ledger.memory import InMemoryLog
from projections.follower import Checkpoint

__all__ = ["CheckpointRow", "InMemoryFollowerStore"]


class CheckpointRow(msgspec.Struct, kw_only=True):
    """What ``projection_state`` keeps of a follower."""

    position: int = 0
    generation: int = 1
    applied_events: int = 0
    ignored_events: int = 0
    failed_events: int = 0
    last_error: str | None = None
    last_error_position: int | None = None
    skipped_positions: list[int] = msgspec.field(default_factory=list)


class _Unit:
    """What one unit changes, applied when it ends without raising (a transaction's commit)."""

    def __init__(self) -> None:
        self.changes: list[Callable[[], None]] = []


class InMemoryFollowerStore:
    def __init__(self, log: InMemoryLog | None = None, names: Sequence[str] = ()) -> None:
        self.log = log if log is not None else InMemoryLog()
        self.checkpoints: dict[str, CheckpointRow] = {name: CheckpointRow() for name in names}

    async def checkpoint(self, name: str) -> Checkpoint:
        row = self.checkpoints.setdefault(name, CheckpointRow())
        return Checkpoint(position=row.position, generation=row.generation, head=await self.log.head())

    async def read(self, after: int, upto: int, patterns: Sequence[str]) -> Sequence[Mapping[str, Any]]:
        return await self.log.read_batch(after, upto, patterns)

    @contextlib.asynccontextmanager
    async def unit(self) -> AsyncIterator[_Unit]:
        unit = _Unit()
        yield unit  # raising here drops what the unit did, as a rolled-back transaction
        for change in unit.changes:
            change()

    async def advance(
        self, unit: Any, name: str, start: int, generation: int, end: int, applied: int, skipped: int
    ) -> bool:
        row = self.checkpoints.setdefault(name, CheckpointRow())
        if row.position != start or row.generation != generation:
            return False

        def move() -> None:
            row.position = end
            row.applied_events += applied
            row.ignored_events += skipped

        unit.changes.append(move)
        return True

    async def record_failure(self, unit: Any, name: str, reason: str, position: int) -> None:
        row = self.checkpoints.setdefault(name, CheckpointRow())

        def record() -> None:
            row.failed_events += 1
            row.last_error, row.last_error_position = reason, position
            if position not in row.skipped_positions:
                row.skipped_positions.append(position)

        unit.changes.append(record)

    def bump_generation(self, name: str, position: int) -> None:
        """What a rebuild switch does to a checkpoint: moved, in a new generation."""
        row = self.checkpoints.setdefault(name, CheckpointRow())
        row.position, row.generation = position, row.generation + 1
