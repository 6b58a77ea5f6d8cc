"""Upgrading in place: projections whose tables an older release built are rebuilt from the log.

Each projection's checkpoint row keeps the shape of the tables it was built with; a release
whose code writes a newer shape (``Projection.shape``) rebuilds it blue/green (``rebuild``) as
soon as a process with workers starts: the old tables keep serving reads, the runners keep them
current meanwhile, and the switch is atomic. One process does it (the rebuild lock); the others
find the work done or under way. Nothing is asked of the operator, and Flex is never called.
"""

from __future__ import annotations

import asyncio
import logging
import time

import asyncpg

from ledger.db import connect
from ledger.errors import DatabaseError
from projections.apply import ProjectionFailed
from projections.base import Projection
from projections.rebuild import Progress, RebuildBusy, rebuild
from projections.registry import PROJECTIONS
from projections.sql import projection_queries as sql

__all__ = ["outdated", "upgrade_projections"]

_log = logging.getLogger(__name__)


async def outdated(conn: asyncpg.Connection) -> list[Projection]:
    """The projections whose tables are of an older shape than their code writes."""
    stored = {r["name"]: r["shape"] for r in await conn.fetch(sql.shapes)}
    return [p for p in PROJECTIONS.values() if stored.get(p.name, p.shape) < p.shape]


async def upgrade_projections(dsn: str, *, retry_interval: float = 30.0, progress_interval: float = 5.0) -> None:
    """Rebuilds every outdated projection, then returns; retries while another process is at it,
    the database is away, or an event cannot be applied (which is logged, with its position)."""
    last = 0.0

    def show(progress: Progress) -> None:
        nonlocal last
        if time.monotonic() - last >= progress_interval or progress.done:
            last = time.monotonic()
            _log.info(
                "upgrade: rebuilding %s: %d/%d events (%.0f events/s)",
                ", ".join(progress.projections),
                progress.position,
                progress.head,
                progress.events_per_second,
            )

    while True:
        try:
            async with connect(dsn, unlimited=True) as conn:
                stale = await outdated(conn)
                if not stale:
                    return
                names = ", ".join(p.name for p in stale)
                _log.warning("upgrade: %s were built by an older release; rebuilding them from the log", names)
                done = await rebuild(conn, stale, dsn=dsn, on_progress=show)
                _log.warning("upgrade: %s rebuilt from %d events and switched in", names, done.position)
                continue
        except asyncio.CancelledError:
            raise
        except RebuildBusy:
            _log.info("upgrade: another rebuild is running; checking again in %.0fs", retry_interval)
        except ProjectionFailed as exc:
            _log.error("upgrade: %s; the old tables keep serving; retrying in %.0fs", exc, retry_interval)
        except DatabaseError as exc:
            _log.warning("upgrade: %s; retrying in %.0fs", exc, retry_interval)
        await asyncio.sleep(retry_interval)
