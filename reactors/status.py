"""``ledger status``, ``GET /v1/projections`` and the metrics: how every follower of the log is doing."""

from __future__ import annotations

import asyncpg
import msgspec

from ledger.db import connection
from projections.coordination import REBUILD_LOCK_OFFSET, held_locks
from projections.registry import DELIVERY, FOLLOWERS, FULFILLMENT, SHAPES, lock_id
from projections.sql import projection_queries as sql
from reactors.fulfillment import queue_counts

__all__ = ["FollowerStatus", "delivery_runner", "projection_status", "read_status"]


class FollowerStatus(msgspec.Struct, kw_only=True):
    """One follower of the log, as `ledger status`, `GET /v1/projections`, the console and the metrics show it."""

    name: str
    position: int
    head: int
    lag: int
    state: str  # running | degraded | rebuilding | stopped
    generation: int
    shape: int
    shape_current: bool
    applied_events: int
    ignored_events: int
    failed_events: int
    last_error: str | None
    last_error_position: int | None
    last_error_at: str | None
    rebuild_position: int | None
    rebuilt_at: str | None
    updated_at: str
    worker_failures: int  # times the runner itself failed (its connection, a bug) and restarted
    worker_error: str | None
    worker_error_at: str | None
    skipped_positions: list[int] = msgspec.field(default_factory=list)  # latest 20 events skipped
    kind: str = "projection"  # projection | reactor
    pending_sessions: int | None = None
    failed_sessions: int | None = None
    fulfilled_sessions: int | None = None


async def projection_status(conn: asyncpg.Connection) -> list[FollowerStatus]:
    """Every follower's checkpoint, lag and health; ``state`` says whether a runner holds it."""
    held = await held_locks(conn)
    counts = await queue_counts(conn)
    skipped: dict[str, list[int]] = {}
    for f in await conn.fetch(sql.failures_listed, 20):
        skipped.setdefault(f["name"], []).append(f["position"])
    out = []
    for r in await conn.fetch(sql.state_all):
        name = r["name"]
        if name not in FOLLOWERS:
            continue  # a follower a newer release added, seen from an older one
        running = lock_id(name) in held
        rebuilding = REBUILD_LOCK_OFFSET + lock_id(name) in held
        state = "rebuilding" if rebuilding else "running" if running else "stopped"
        if r["failed_events"] and state == "running":
            state = "degraded"
        reactor = name == FULFILLMENT
        out.append(
            FollowerStatus(
                name=name,
                kind="reactor" if reactor else "projection",
                position=r["position"],
                head=r["head"],
                lag=max(r["head"] - r["position"], 0),
                state=state,
                generation=r["generation"],
                shape=r["shape"],
                shape_current=r["shape"] >= SHAPES.get(name, 1),
                applied_events=r["applied_events"],
                ignored_events=r["ignored_events"],
                failed_events=r["failed_events"],
                last_error=r["last_error"],
                last_error_position=r["last_error_position"],
                last_error_at=r["last_error_at"].isoformat() if r["last_error_at"] else None,
                # the latest 20 events skipped (live mode's decisions, which a rebuild takes again)
                skipped_positions=skipped.get(name, []),
                rebuild_position=r["rebuild_position"],
                rebuilt_at=r["rebuilt_at"].isoformat() if r["rebuilt_at"] else None,
                updated_at=r["updated_at"].isoformat(),
                worker_failures=r["worker_failures"],
                worker_error=r["worker_error"],
                worker_error_at=r["worker_error_at"].isoformat() if r["worker_error_at"] else None,
                pending_sessions=counts.pending if reactor else None,
                failed_sessions=counts.failed if reactor else None,
                fulfilled_sessions=counts.fulfilled if reactor else None,
            )
        )
    return out


async def read_status(pool: asyncpg.Pool) -> list[FollowerStatus]:
    """``projection_status`` on a connection of ``pool``; ``DatabaseUnavailable`` when it cannot be read."""
    async with connection(pool) as conn:
        return await projection_status(conn)


async def delivery_runner(conn: asyncpg.Connection) -> str:
    """``running`` while some process runs outbound delivery (holds its lock), else ``stopped``."""
    return "running" if lock_id(DELIVERY) in await held_locks(conn) else "stopped"
