"""Console sessions signed out: remembered in the database, so that a copied cookie stops
working at once on every process that serves the console, not only when it expires.

A session's cookie carries its own random id; signing out records it here until the moment the
cookie would be refused anyway (8 hours after it was opened), and every console request checks it
(one primary-key probe).
"""

from __future__ import annotations

from datetime import datetime

import asyncpg

from ledger.db import connection
from ledger.sql import log_queries

__all__ = ["is_revoked", "revoke"]


async def revoke(pool: asyncpg.Pool, session_id: str, expires_at: datetime) -> None:
    async with connection(pool) as conn:
        await conn.execute(log_queries.console_revoke, session_id, expires_at)


async def is_revoked(pool: asyncpg.Pool, session_id: str) -> bool:
    async with connection(pool) as conn:
        return bool(await conn.fetchval(log_queries.console_revoked, session_id))
