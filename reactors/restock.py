"""Restocks: positive inventory adjustments for what a fulfilled order sold, recorded in the log.

A restock names line items and quantities (none: everything that is left). In one transaction it
locks the session's queue row (two restocks of one order take turns), reads what was sold from the
line items the reactor logged and what earlier restocks took back (``restocks``), refuses the
whole request if any line item would be restocked beyond what it sold, and otherwise appends one
``ledger.inventory.adjusted`` (``reason = "restock"``) per line item and records the request.
Nothing is recorded twice for one request id.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime

import asyncpg

from ledger.log import append_with, event_body
from projections.ledger_events import FETCHED, restocked_events
from projections.line_items import LineItem, UnusableLineItems, parse_line_items
from reactors.sql import reactor_queries as sql

__all__ = ["RestockRefused", "restock"]


class RestockRefused(Exception):
    """The restock asked for cannot be recorded (nothing was): ``str(exc)`` says why."""


async def restock(
    conn: asyncpg.Connection,
    checkout_session_id: str,
    wanted: Mapping[str, int | None] | None = None,
    *,
    request_id: str,
    note: str | None = None,
) -> list[tuple[LineItem, int]]:
    """Restocks ``wanted`` ({line item: quantity, or None for all that is left}; None: every line
    item in full). Returns what was restocked (nothing when this request id was recorded before);
    raises ``RestockRefused`` with nothing recorded."""
    async with conn.transaction():
        queued = await conn.fetchrow(sql.queue_lock, checkout_session_id)
        if queued is None:
            raise RestockRefused(f"{checkout_session_id}: no completed session with that id")
        if queued["status"] != "fulfilled":
            raise RestockRefused(
                f"{checkout_session_id}: not fulfilled (it is {queued['status']}): nothing was sold to restock"
            )
        if await conn.fetchval(sql.restock_request_seen, checkout_session_id, request_id):
            return []  # this request was recorded before: nothing more
        body = await event_body(conn, f"{FETCHED}:{checkout_session_id}")
        try:
            _, items = parse_line_items(json.loads(body or b"{}").get("object"))
        except (UnusableLineItems, ValueError) as exc:
            raise RestockRefused(f"{checkout_session_id}: its logged line items cannot be read ({exc})") from None
        sold = {item.line_item_id: item for item in items}
        unknown = sorted(set(wanted or ()) - set(sold))
        if unknown:
            raise RestockRefused(
                f"{checkout_session_id}: no line item {', '.join(unknown)} in this order (it has {', '.join(sold)})"
            )
        done = {
            r["line_item_id"]: r["quantity"] for r in await conn.fetch(sql.restocked_of_session, checkout_session_id)
        }
        plan: list[tuple[LineItem, int]] = []
        problems = []
        for line_item_id in wanted or sold:
            item = sold[line_item_id]
            left = item.quantity - done.get(line_item_id, 0)
            asked = (wanted or {}).get(line_item_id)
            quantity = left if asked is None else asked
            if quantity > left:
                problems.append(f"{line_item_id}: {quantity} asked, {left} of the {item.quantity} sold left to restock")
            elif quantity > 0:
                plan.append((item, quantity))
        if problems:
            raise RestockRefused(f"{checkout_session_id}: refused, nothing recorded: {'; '.join(problems)}")
        if not plan:
            raise RestockRefused(f"{checkout_session_id}: everything it sold is already restocked")
        now = datetime.now(UTC)
        await append_with(
            conn,
            restocked_events(
                checkout_session_id, plan, request_id=request_id, note=note, now=now, test_mode=queued["test_mode"]
            ),
        )
        await conn.execute(
            sql.restocks_record,
            checkout_session_id,
            request_id,
            [item.line_item_id for item, _ in plan],
            [quantity for _, quantity in plan],
        )
    return plan
