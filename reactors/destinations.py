"""The merchant's destinations: added, listed, shown, disabled, enabled, deleted, their secret
rotated, history replayed, failed messages retried. The command line, the read API and the
console all call these; ``reactors.delivery`` delivers.

A destination's signing secret is shown once, when it is made (``add``, ``rotate_secret``), and
never again: every listing leaves it out. It is kept in the database as given to the merchant
(``destinations.secret``), since signing needs it: a dump of the database reveals it.
"""

from __future__ import annotations

import base64
import secrets
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import msgspec

from ledger.errors import InvalidRequest, NotFound
from reactors.messages import MESSAGE_TYPES
from reactors.outbound_guard import check_url, resolve
from reactors.sql import reactor_queries as sql

__all__ = [
    "MODES",
    "ROTATION_OVERLAP",
    "Destination",
    "DestinationMessage",
    "MessagePage",
    "add",
    "delete",
    "disable",
    "enable",
    "get",
    "list_all",
    "messages",
    "new_secret",
    "replay",
    "retry_failed",
    "rotate_secret",
]

MODES = ("live", "test", "all")
ROTATION_OVERLAP = timedelta(hours=24)
STATUSES = ("retrying", "failed", "delivered")


class Destination(msgspec.Struct, kw_only=True):
    """A destination as listed (never its secret)."""

    id: str
    url: str
    types: list[str]
    mode: str  # live | test | all
    description: str | None
    state: str  # enabled | disabled | disabled_by_receiver
    position: int  # messages derived through this log position
    lag: int  # log positions not derived yet
    delivered: int
    retrying: int
    failed: int
    last_error: str | None
    last_error_at: str | None
    rotating_until: str | None  # the previous secret also signs until then
    created_at: str


class DestinationMessage(msgspec.Struct, kw_only=True):
    message_id: str
    type: str
    position: int
    status: str  # retrying | failed | delivered
    attempts: int
    next_attempt_at: str | None
    last_status_code: int | None
    last_error: str | None
    last_attempt_at: str | None
    delivered_at: str | None


class MessagePage(msgspec.Struct):
    data: list[DestinationMessage]
    next_cursor: str | None


class Created(msgspec.Struct, kw_only=True):
    """What ``add`` answers: the destination and its secret, shown this once."""

    destination: Destination
    secret: str


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _destination(r: asyncpg.Record) -> Destination:
    return Destination(
        id=r["destination_id"],
        url=r["url"],
        types=list(r["types"]),
        mode=r["mode"],
        description=r["description"],
        state=r["state"],
        position=r["position"],
        lag=r["lag"],
        delivered=r["delivered"],
        retrying=r["retrying"],
        failed=r["failed"],
        last_error=r["last_error"],
        last_error_at=_iso(r["last_error_at"]),
        rotating_until=_iso(r["previous_secret_until"]) if r["previous_secret_until"] else None,
        created_at=_iso(r["created_at"]) or "",
    )


def new_secret() -> str:
    """A signing secret in Standard Webhooks' form: ``whsec_`` and 32 random bytes in base64."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def _checked_types(types: list[str]) -> list[str]:
    out = []
    for t in types:
        t = t.strip()
        if not t:
            continue
        if t.endswith("*"):
            if not any(m.startswith(t[:-1]) for m in MESSAGE_TYPES):
                raise InvalidRequest(f"no message type starts with {t[:-1]!r} (types: {', '.join(MESSAGE_TYPES)})")
        elif t not in MESSAGE_TYPES:
            raise InvalidRequest(f"unknown message type {t!r} (types: {', '.join(MESSAGE_TYPES)})")
        out.append(t)
    return out


async def add(
    conn: asyncpg.Connection,
    url: str,
    *,
    types: list[str] | None = None,
    mode: str = "live",
    description: str | None = None,
    allow_private: bool = False,
) -> Created:
    """Registers a destination, starting at the log's head. ``InvalidRequest`` for a bad URL, type or
    mode; ``AddressRefused`` when the URL resolves to an address delivery may not connect to."""
    check_url(url)
    if description is not None and (len(description) > 500 or not description.isprintable()):
        raise InvalidRequest("a description is at most 500 printable characters")
    if mode not in MODES:
        raise InvalidRequest(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
    chosen = _checked_types(types or [])
    await resolve(url, allow_private=allow_private)
    secret = new_secret()
    destination_id = "dst_" + secrets.token_hex(12)
    await conn.fetchrow(sql.destination_insert, destination_id, url, chosen, mode, description, secret)
    return Created(destination=await get(conn, destination_id), secret=secret)


async def list_all(conn: asyncpg.Connection) -> list[Destination]:
    return [_destination(r) for r in await conn.fetch(sql.destinations_all, None)]


async def get(conn: asyncpg.Connection, destination_id: str) -> Destination:
    row = await conn.fetchrow(sql.destinations_all, destination_id)
    if row is None:
        raise NotFound(f"no destination {destination_id!r}")
    return _destination(row)


async def _changed(conn: asyncpg.Connection, query: str, destination_id: str, *args: Any) -> Destination:
    if await conn.fetchval(query, destination_id, *args) is None:
        raise NotFound(f"no destination {destination_id!r}")
    return await get(conn, destination_id)


async def disable(conn: asyncpg.Connection, destination_id: str) -> Destination:
    """Stops it: no attempts, no messages derived; what happens meanwhile is sent once it is enabled again."""
    return await _changed(conn, sql.destination_set_state, destination_id, "disabled")


async def enable(conn: asyncpg.Connection, destination_id: str) -> Destination:
    """Attempts again (also after a receiver's ``410``): what was queued is due at once."""
    async with conn.transaction():
        await _changed(conn, sql.destination_set_state, destination_id, "enabled")
        await conn.execute(sql.messages_due_now, destination_id)
    return await get(conn, destination_id)


async def delete(conn: asyncpg.Connection, destination_id: str) -> None:
    """Deletes the destination and its messages."""
    if await conn.fetchval(sql.destination_delete, destination_id) is None:
        raise NotFound(f"no destination {destination_id!r}")


async def rotate_secret(conn: asyncpg.Connection, destination_id: str) -> str:
    """A new secret, returned this once; for ``ROTATION_OVERLAP`` messages carry both signatures."""
    secret = new_secret()
    until = datetime.now(UTC) + ROTATION_OVERLAP
    if await conn.fetchval(sql.destination_rotate, destination_id, secret, until) is None:
        raise NotFound(f"no destination {destination_id!r}")
    return secret


async def replay(conn: asyncpg.Connection, destination_id: str, from_position: int) -> Destination:
    """Delivers again every message from log position ``from_position`` on: derived again from the
    log, with the same ids and bodies as the first time."""
    if from_position < 1:
        raise InvalidRequest("--from-position must be at least 1")
    return await _changed(conn, sql.destination_rewind, destination_id, from_position)


async def retry_failed(conn: asyncpg.Connection, destination_id: str, message_ids: list[str] | None) -> list[str]:
    """Queues failed messages again (these ids, or all of them when ``None``); returns their ids."""
    await get(conn, destination_id)
    rows = await conn.fetch(sql.messages_retry_failed, destination_id, message_ids)
    return [r["message_id"] for r in rows]


def _cursor(text: str | None) -> tuple[int, str]:
    if not text:
        return 0, ""
    position, _, message = text.partition(":")
    try:
        return int(position), message
    except ValueError:
        raise InvalidRequest("cursor is not one this API returned") from None


async def messages(
    conn: asyncpg.Connection, destination_id: str, *, status: str | None, limit: int, cursor: str | None
) -> MessagePage:
    """A page of the destination's messages in log order, of one status or all."""
    if status is not None and status not in STATUSES:
        raise InvalidRequest(f"status must be one of {', '.join(STATUSES)}, not {status!r}")
    await get(conn, destination_id)
    position, after = _cursor(cursor)
    rows = await conn.fetch(sql.messages_list, destination_id, status, position, limit, after)
    data = [
        DestinationMessage(
            message_id=r["message_id"],
            type=r["type"],
            position=r["position"],
            status=r["status"],
            attempts=r["attempts"],
            next_attempt_at=_iso(r["next_attempt_at"]) if r["status"] == "retrying" else None,
            last_status_code=r["last_status_code"],
            last_error=r["last_error"],
            last_attempt_at=_iso(r["last_attempt_at"]),
            delivered_at=_iso(r["delivered_at"]),
        )
        for r in rows
    ]
    next_cursor = f"{rows[-1]['position']}:{rows[-1]['message_id']}" if len(rows) == limit else None
    return MessagePage(data=data, next_cursor=next_cursor)
