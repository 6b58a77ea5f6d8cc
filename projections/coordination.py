"""Who runs what: one active follower per name across every process, one rebuild at a time.

Advisory locks of this service are ``(LOCK_NAMESPACE, id)`` pairs; the ids are given by the
registry (``projections.registry.lock_id``). A follower's runner holds its lock for as long as
its connection lives (a second process waits as a standby and takes over if the first goes
away); ``ledger rebuild`` holds ``REBUILD_LOCK_OFFSET`` and ``REBUILD_LOCK_OFFSET + id`` for
each projection it rebuilds. ``ledger status`` reads the held locks to say what is running.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Protocol

import asyncpg

from ledger.db import SERVER_SETTINGS, translate_errors
from ledger.errors import DatabaseError
from projections.sql import projection_queries as sql

__all__ = [
    "LOCK_NAMESPACE",
    "REBUILD_LOCK_OFFSET",
    "LocksBusy",
    "held_locks",
    "release",
    "run_exclusively",
    "take_all",
]

_log = logging.getLogger(__name__)

LOCK_NAMESPACE = 0x4C454447  # "LEDG"
REBUILD_LOCK_OFFSET = 1000
MAX_RESTART_DELAY = 15.0  # seconds a runner that keeps failing waits between starts, at most


class LocksBusy(Exception):
    """Some lock asked for is held by another session."""


class LockHolder(Protocol):
    """What runs under a follower's lock (a runner, the reactor, the automatic reconcile): its
    ``active`` says whether this process holds the lock now."""

    active: bool


async def take_all(conn: asyncpg.Connection, ids: Iterable[int]) -> list[int]:
    """Takes every lock in ``ids`` on ``conn``, or none of them (``LocksBusy``)."""
    taken: list[int] = []
    for lock in ids:
        if not await conn.fetchval(sql.try_lock, LOCK_NAMESPACE, lock):
            await release(conn, taken)
            raise LocksBusy
        taken.append(lock)
    return taken


async def release(conn: asyncpg.Connection, ids: Iterable[int]) -> None:
    for lock in ids:
        await conn.execute(sql.unlock, LOCK_NAMESPACE, lock)


async def held_locks(conn: asyncpg.Connection) -> set[int]:
    """The ids of this service's advisory locks that some session of this database holds."""
    return {r["objid"] for r in await conn.fetch(sql.held_locks) if r["classid"] == LOCK_NAMESPACE}


async def run_exclusively(
    dsn: str,
    name: str,
    lock: int,
    owner: LockHolder,
    body: Callable[[asyncpg.Connection], Awaitable[None]],
    standby_interval: float,
) -> None:
    """Runs ``body`` on a dedicated connection holding advisory lock ``lock``.

    While another process holds the lock this one waits as a standby; if anything goes wrong (the
    connection, and so the lock, lost; a bug), the failure is logged and counted
    (``worker_failures`` and ``worker_error`` in ``ledger status``) and the runner starts again
    after a short, growing delay. ``owner.active`` says whether it holds the lock.
    """
    failures = 0
    while True:
        conn = None
        try:
            with translate_errors():
                conn = await asyncpg.connect(dsn, server_settings=SERVER_SETTINGS)
                if not await conn.fetchval(sql.try_lock, LOCK_NAMESPACE, lock):
                    failures = 0
                    await asyncio.sleep(standby_interval)
                    continue
                owner.active = True
                _log.info("%s: running", name)
                await body(conn)
                failures = 0
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # whatever it is, the runner must not end: note it, wait, start again
            failures += 1
            delay = min(MAX_RESTART_DELAY, 0.5 * 2 ** min(failures - 1, 6))
            shown = exc.__cause__ if isinstance(exc, DatabaseError) and exc.__cause__ else exc  # the driver's words
            reason = f"{type(shown).__name__}: {shown}"[:500]
            if isinstance(exc, DatabaseError):
                _log.warning("%s: %s; restarting in %.1fs", name, reason, delay)
            else:
                _log.exception("%s: failed unexpectedly; restarting in %.1fs", name, delay)
            await _note_failure(dsn, name, reason)
            await asyncio.sleep(delay)
        finally:
            owner.active = False
            if conn is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(conn.close(), 5)


async def _note_failure(dsn: str, name: str, reason: str) -> None:
    """Counts the failure where ``ledger status`` and the metrics read it (best effort: the
    database may be what failed)."""
    with contextlib.suppress(Exception):
        conn = await asyncio.wait_for(asyncpg.connect(dsn, server_settings=SERVER_SETTINGS), 5)
        try:
            await conn.execute(sql.record_worker_failure, name, reason)
        finally:
            await conn.close()
