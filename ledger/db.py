"""The database: connecting, ``schema.sql``, and error translation (migrations: ``ledger.migrate``).

Driver and network exceptions become the ledger's own (``DatabaseUnavailable``, ``DataRefused``,
``DatabaseError``) here and nowhere else: ``translate_errors``, which ``connection`` and ``connect``
apply to everything done on the connections they give.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import asyncpg

from ledger.errors import DatabaseError, DatabaseUnavailable, DataRefused

__all__ = [
    "DATA_REFUSED",
    "READ_SETTINGS",
    "SCHEMA_VERSION",
    "connection",
    "create_pool",
    "retrying_conflicts",
    "schema_sql",
    "translate_errors",
]

SCHEMA_VERSION = 12

# What the database says when a row's data cannot be stored (a value its type refuses, a row or
# index entry too large, a constraint): that row's fault alone, never worth retrying as it is.
DATA_REFUSED: tuple[type[Exception], ...] = (
    asyncpg.DataError,
    asyncpg.ProgramLimitExceededError,
    asyncpg.IntegrityConstraintViolationError,
)

# Appenders and readers give up rather than queue behind a stuck client.
SERVER_SETTINGS = {
    "lock_timeout": "5s",
    "statement_timeout": "10s",
    "idle_in_transaction_session_timeout": "30s",
    "application_name": "flex-ledger",
}
# The read pool plans each query for its arguments (and for the tables' current size on disk, which
# the planner reads at every planning, statistics or not): a list page's plan depends on the page
# size asked, and a plan cached while a table was small must not outlive that.
READ_SETTINGS = {**SERVER_SETTINGS, "plan_cache_mode": "force_custom_plan"}


def schema_sql() -> str:
    """``schema.sql``: packaged into the wheel, or at the repository root in a checkout."""
    packaged = resources.files("ledger").joinpath("schema.sql")
    if packaged.is_file():
        return packaged.read_text(encoding="utf-8")
    return (Path(__file__).resolve().parent.parent / "schema.sql").read_text(encoding="utf-8")


# What "the database is unreachable, too slow or refusing us" looks like from asyncpg.
UNAVAILABLE: tuple[type[BaseException], ...] = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.InterfaceError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.TooManyConnectionsError,
    asyncpg.exceptions.QueryCanceledError,  # statement_timeout
    asyncpg.exceptions.LockNotAvailableError,  # lock_timeout
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CrashShutdownError,
    asyncpg.exceptions.InsufficientResourcesError,
    asyncpg.exceptions.IdleInTransactionSessionTimeoutError,
    asyncpg.exceptions.UndefinedTableError,  # schema not applied yet
    asyncpg.exceptions.UndefinedFunctionError,
)


@contextlib.contextmanager
def translate_errors() -> Iterator[None]:
    """Classifies what the driver raises, once: the database down, slow or not set up becomes
    ``DatabaseUnavailable``; one row's data refused, ``DataRefused``; any other failed statement,
    ``DatabaseError``. The driver's exception is kept as ``__cause__``."""
    try:
        yield
    except UNAVAILABLE as exc:
        raise DatabaseUnavailable(f"the database is unavailable ({type(exc).__name__}); retry later") from exc
    except DATA_REFUSED as exc:
        raise DataRefused(f"{type(exc).__name__}: {exc}") from exc
    except asyncpg.PostgresError as exc:
        raise DatabaseError(f"{type(exc).__name__}: {exc}") from exc


async def create_pool(
    dsn: str, *, min_size: int = 0, max_size: int = 10, server_settings: dict[str, str] | None = None, **kwargs: Any
) -> asyncpg.Pool:
    """A pool that connects lazily, so a process can start (and recover) while the database is down."""
    return await asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        server_settings=server_settings or SERVER_SETTINGS,
        max_inactive_connection_lifetime=60,
        **kwargs,
    )


# What PostgreSQL aborts a transaction for only because another ran at the same moment: running
# it again is the documented remedy, and it then succeeds or fails on its own merits.
CONFLICTS: tuple[type[Exception], ...] = (
    asyncpg.exceptions.DeadlockDetectedError,
    asyncpg.exceptions.SerializationError,
)
_T = TypeVar("_T")


async def retrying_conflicts(work: Callable[[], Awaitable[_T]], *, attempts: int = 8) -> _T:
    """Runs ``work`` (one whole transaction) again, after a short random pause, when PostgreSQL
    aborted it as a deadlock victim or a serialization failure; the last failure goes up."""
    for attempt in range(1, attempts + 1):
        try:
            return await work()
        except Exception as exc:  # a conflict, as the driver raised it or as translated
            if not isinstance(exc, CONFLICTS) and not isinstance(exc.__cause__, CONFLICTS):
                raise
            if attempt == attempts:
                raise
            await asyncio.sleep(random.uniform(0.01, 0.05 * 2**attempt))
    raise AssertionError("unreachable")


@contextlib.asynccontextmanager
async def connection(pool: asyncpg.Pool) -> AsyncIterator[asyncpg.Connection]:
    """A connection of ``pool`` for one piece of work, what the driver raises translated
    (``translate_errors``): how everything above this layer borrows one."""
    with translate_errors():
        async with pool.acquire() as conn:
            yield conn


@contextlib.asynccontextmanager
async def connect(dsn: str, *, unlimited: bool = False) -> AsyncIterator[asyncpg.Connection]:
    """One connection, what the driver raises translated (``translate_errors``); ``unlimited`` lifts
    the statement time limit (operator commands over the whole log)."""
    settings = {**SERVER_SETTINGS, "statement_timeout": "0"} if unlimited else SERVER_SETTINGS
    with translate_errors():
        conn = await asyncpg.connect(dsn, server_settings=settings)
    try:
        with translate_errors():
            yield conn
    finally:
        await conn.close()
