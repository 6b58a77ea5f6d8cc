"""The success page's sync: one checkout session asked of Flex now, recorded when the log does not
show it yet, and answered as the order then stands (``POST /v1/orders/{id}/sync``).

Flex is asked first, holding nothing (``before_database`` is awaited only then: the HTTP layer takes
its read turn there); what Flex said is compared with the log, appended as observations when new
(``reactors.reconcile``), and waited for until the orders projection has applied it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

import asyncpg
import msgspec

from ledger.errors import DatabaseUnavailable, FlexUnavailable
from ledger.log import EventLog
from projections import documents
from projections.freshness import CheckpointWatcher
from projections.shapes import Order
from reactors.flex_client import FlexClient
from reactors.reconcile import fetch_session, unrecorded

__all__ = ["Synced", "sync_order"]


class Synced(msgspec.Struct, kw_only=True):
    order: Order
    recorded: bool  # whether Flex showed something the log did not
    fresh: bool | None  # when recorded: whether the orders projection applied it within the wait
    position: int  # what the orders projection had applied when the order was read


async def sync_order(
    session_id: str,
    *,
    clients: Sequence[FlexClient],
    log: EventLog,
    pool: asyncpg.Pool,
    checkpoints: CheckpointWatcher,
    before_database: Callable[[], Awaitable[None]],
) -> Synced:
    """Raises ``SessionUnknown`` (Flex does not know it), ``FlexUnavailable`` (Flex cannot be read,
    or answered what cannot be used), ``DatabaseUnavailable`` (nor the log, or the order is recorded
    but not projected yet)."""
    if not clients:
        raise FlexUnavailable("FLEX_API_KEY is not set: this service cannot ask Flex", retry_after=60)
    resources = await fetch_session(clients, session_id)
    await before_database()
    observations = await unrecorded(pool, resources)
    fresh = None
    if observations:
        results = await log.append(observations)
        fresh = await checkpoints.wait(["orders"], max(r.position for r in results))
    position = checkpoints.applied(["orders"])
    order = await documents.get_order(pool, session_id)
    if order is None:  # recorded, but the orders projection has not applied it within the wait
        raise DatabaseUnavailable("the order is recorded but not projected yet; retry", retry_after=1)
    return Synced(order=order, recorded=bool(observations), fresh=fresh, position=position)
