"""The ledger's own events about fulfillment: what the reactor appends and projections read.

Their ``event_id`` is derived from what they are about, so the log's unique ``event_id`` is the
exactly-once guard: one ``ledger.inventory.adjusted`` per (checkout session, line item) and per
(renewal invoice, subscription item), one ``ledger.line_items.fetched`` per session, one
``ledger.renewal.fulfilled`` per renewal invoice, one ``ledger.fulfillment.failed`` and one
``ledger.fulfillment.retry_requested`` per session (or renewal invoice) and retry generation.

A fulfillment is keyed by its checkout session (``checkout_session_id``) or, for a renewal, by its
invoice (``invoice_id``): ``fulfillment_key`` names the field.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from typing import Any

import msgspec

from ledger.log import NewEvent
from projections.base import LogRow
from projections.fields import as_int, as_str, dict_of, newest_first_key
from projections.line_items import LineItem
from projections.mergeable import Mergeable

__all__ = [
    "ADJUSTED",
    "FAILED",
    "FETCHED",
    "RENEWED",
    "RETRY_REQUESTED",
    "adjustment_id",
    "failed_event",
    "fetched_events",
    "fold_fulfilled",
    "fold_fulfillment_outcome",
    "fulfillment_key",
    "renewal_events",
    "restocked_events",
    "retry_requested_event",
]

FETCHED = "ledger.line_items.fetched"
ADJUSTED = "ledger.inventory.adjusted"
FAILED = "ledger.fulfillment.failed"
RETRY_REQUESTED = "ledger.fulfillment.retry_requested"
RENEWED = "ledger.renewal.fulfilled"


def fulfillment_key(kind: str) -> str:
    """The field that names what a fulfillment event is about: a checkout's session, a renewal's invoice."""
    return "invoice_id" if kind == "renewal" else "checkout_session_id"


def adjustment_id(checkout_session_id: str, line_item_id: str) -> str:
    digest = hashlib.sha256(f"{checkout_session_id}\x00{line_item_id}".encode()).hexdigest()[:24]
    return f"adj_{digest}"


def _event(event_id: str, event_type: str, now: datetime, obj: dict[str, Any]) -> NewEvent:
    body = {"event_id": event_id, "event_type": event_type, "event_dt": int(now.timestamp()), "object": obj}
    return NewEvent(
        event_id=event_id,
        event_type=event_type,
        source="ledger",
        raw_body=json.dumps(body, separators=(",", ":")).encode(),
        event_dt=int(now.timestamp()),
        occurred_at=now,
    )


def _iso(now: datetime) -> str:
    return now.astimezone(UTC).isoformat().replace("+00:00", "Z")


def fetched_events(
    checkout_session_id: str,
    raw: list[dict[str, Any]],
    items: list[LineItem],
    now: datetime,
    *,
    test_mode: bool = False,
) -> list[NewEvent]:
    """The line items as Flex returned them, then one inventory adjustment per line item."""
    events = [
        _event(
            f"{FETCHED}:{checkout_session_id}",
            FETCHED,
            now,
            {
                "checkout_session_id": checkout_session_id,
                "line_items": raw,
                "fetched_at": _iso(now),
                "test_mode": test_mode,
            },
        )
    ]
    owner = {"checkout_session_id": checkout_session_id}
    for item in items:
        events.append(
            _adjusted(checkout_session_id, owner, item.line_item_id, item, -item.quantity, "sale", now, test_mode)
        )
    return events


def renewal_events(
    invoice_id: str,
    subscription_id: str,
    raw: list[dict[str, Any]],
    items: list[LineItem],
    now: datetime,
    *,
    test_mode: bool = False,
) -> list[NewEvent]:
    """A paid renewal fulfilled: the subscription's items as Flex returned them, then one inventory
    adjustment per item (``reason`` renewal, ``invoice_id`` set, no checkout session)."""
    events = [
        _event(
            f"{RENEWED}:{invoice_id}",
            RENEWED,
            now,
            {
                "invoice_id": invoice_id,
                "subscription_id": subscription_id,
                "items": raw,
                "fulfilled_at": _iso(now),
                "test_mode": test_mode,
            },
        )
    ]
    owner = {"checkout_session_id": None, "invoice_id": invoice_id}
    renewed = [_adjusted(invoice_id, owner, i.line_item_id, i, -i.quantity, "renewal", now, test_mode) for i in items]
    return events + renewed


def restocked_events(
    checkout_session_id: str,
    restocked: list[tuple[LineItem, int]],
    *,
    request_id: str,
    note: str | None,
    now: datetime,
    test_mode: bool,
) -> list[NewEvent]:
    """One ``restock`` adjustment (a positive delta) per line item restocked by one request."""
    owner = {"checkout_session_id": checkout_session_id}
    return [
        _adjusted(
            checkout_session_id,
            owner,
            f"{item.line_item_id}:restock:{request_id}",
            item,
            quantity,
            "restock",
            now,
            test_mode,
            note=note,
            request_id=request_id,
        )
        for item, quantity in restocked
    ]


def _adjusted(
    owner_id: str,
    owner: dict[str, Any],
    key: str,
    item: LineItem,
    delta: int,
    reason: str,
    now: datetime,
    test_mode: bool,
    **details: Any,
) -> NewEvent:
    """One ``ledger.inventory.adjusted`` of ``item`` by ``delta``, for the session or invoice that
    ``owner`` names: its event id, and its adjustment's id, derived from (``owner_id``, ``key``)."""
    adjustment = {
        "adjustment_id": adjustment_id(owner_id, key),
        **owner,
        "line_item_id": item.line_item_id,
        "price_id": item.price_id,
        "product_id": item.product_id,
        "upc_code": item.upc_code,
        "quantity_delta": delta,
        "reason": reason,
        **details,
        "created_at": _iso(now),
        "test_mode": test_mode,
    }
    return _event(f"{ADJUSTED}:{owner_id}:{key}", ADJUSTED, now, {"adjustment": adjustment})


def failed_event(
    key: str, generation: int, error: str, status: int | None, now: datetime, *, kind: str = "checkout"
) -> NewEvent:
    """A fulfillment (of a checkout session, or of a renewal invoice: ``kind``) parked as failed."""
    return _event(
        f"{FAILED}:{key}:{generation}",
        FAILED,
        now,
        # the reason may quote Flex's reply: never a character the log cannot store, never a novel
        {
            fulfillment_key(kind): key,
            "generation": generation,
            "error": error.replace("\x00", "\ufffd")[:2000],
            "status": status,
        },
    )


def retry_requested_event(key: str, generation: int, now: datetime, *, kind: str = "checkout") -> NewEvent:
    return _event(
        f"{RETRY_REQUESTED}:{key}:{generation}",
        RETRY_REQUESTED,
        now,
        {fulfillment_key(kind): key, "generation": generation},
    )


def fold_fulfilled(row: LogRow, state: Mergeable, items: list[LineItem], at: int | None) -> None:
    """What was fulfilled (an order's line items, a renewal's subscription items) into the state
    of its order or invoice: ``fulfilled`` is final."""
    state.offer("fulfillment_line_items", [msgspec.to_builtins(i) for i in items], newest_first_key(row.payload))
    state.flag("fulfilled")
    state.earliest("fulfilled_at", at)


def fold_fulfillment_outcome(row: LogRow, state: Mergeable) -> bool:
    """A failed or retried fulfillment into its order's or invoice's state: the latest retry
    generation decides, ``failed`` over ``pending`` within one generation."""
    obj = dict_of(row.payload.get("object"))
    generation = as_int(obj.get("generation")) or 1
    if row.event_type == FAILED:
        key = [generation, 1, *newest_first_key(row.payload)]
        state.offer("fulfillment_status", "failed", key)
        state.offer("fulfillment_error", as_str(obj.get("error")) or "failed", key)
        return True
    if row.event_type == RETRY_REQUESTED:
        key = [generation, 0, *newest_first_key(row.payload)]
        state.offer("fulfillment_status", "pending", key)
        state.offer("fulfillment_error", "", key)
        return True
    return False
