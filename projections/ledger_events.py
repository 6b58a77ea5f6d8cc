"""The ledger's own events about fulfillment: what the reactor appends and projections read.

Their ``event_id`` is derived from what they are about, so the log's unique ``event_id`` is the
exactly-once guard: one ``ledger.inventory.adjusted`` per (checkout session, line item), one
``ledger.line_items.fetched`` per session, one ``ledger.fulfillment.failed`` and one
``ledger.fulfillment.retry_requested`` per session and retry generation.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from typing import Any

from ledger.log import NewEvent
from projections.line_items import LineItem

__all__ = [
    "ADJUSTED",
    "FAILED",
    "FETCHED",
    "RETRY_REQUESTED",
    "adjustment_id",
    "failed_event",
    "fetched_events",
    "restocked_events",
    "retry_requested_event",
]

FETCHED = "ledger.line_items.fetched"
ADJUSTED = "ledger.inventory.adjusted"
FAILED = "ledger.fulfillment.failed"
RETRY_REQUESTED = "ledger.fulfillment.retry_requested"


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
    for item in items:
        adjustment = {
            "adjustment_id": adjustment_id(checkout_session_id, item.line_item_id),
            "checkout_session_id": checkout_session_id,
            "line_item_id": item.line_item_id,
            "price_id": item.price_id,
            "product_id": item.product_id,
            "upc_code": item.upc_code,
            "quantity_delta": -item.quantity,
            "reason": "sale",
            "created_at": _iso(now),
            "test_mode": test_mode,
        }
        events.append(
            _event(f"{ADJUSTED}:{checkout_session_id}:{item.line_item_id}", ADJUSTED, now, {"adjustment": adjustment})
        )
    return events


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
    events = []
    for item, quantity in restocked:
        key = f"{item.line_item_id}:restock:{request_id}"
        adjustment = {
            "adjustment_id": adjustment_id(checkout_session_id, key),
            "checkout_session_id": checkout_session_id,
            "line_item_id": item.line_item_id,
            "price_id": item.price_id,
            "product_id": item.product_id,
            "upc_code": item.upc_code,
            "quantity_delta": quantity,
            "reason": "restock",
            "note": note,
            "request_id": request_id,
            "created_at": _iso(now),
            "test_mode": test_mode,
        }
        events.append(_event(f"{ADJUSTED}:{checkout_session_id}:{key}", ADJUSTED, now, {"adjustment": adjustment}))
    return events


def failed_event(checkout_session_id: str, generation: int, error: str, status: int | None, now: datetime) -> NewEvent:
    return _event(
        f"{FAILED}:{checkout_session_id}:{generation}",
        FAILED,
        now,
        # the reason may quote Flex's reply: never a character the log cannot store, never a novel
        {
            "checkout_session_id": checkout_session_id,
            "generation": generation,
            "error": error.replace("\x00", "\ufffd")[:2000],
            "status": status,
        },
    )


def retry_requested_event(checkout_session_id: str, generation: int, now: datetime) -> NewEvent:
    return _event(
        f"{RETRY_REQUESTED}:{checkout_session_id}:{generation}",
        RETRY_REQUESTED,
        now,
        {"checkout_session_id": checkout_session_id, "generation": generation},
    )
