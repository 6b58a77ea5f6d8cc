"""The ``orders`` projection: one order per checkout session, and its payment intents.

* A session's status only moves forward (``open`` < ``expired``/``canceled`` < ``paid`` <
  ``complete``): a late or duplicate event never downgrades it.
* Other session fields come from the snapshot with the highest (status rank, event time, log
  position) that carries them.
* Payment intents are kept by id, in their own table, whether they arrive before or after the
  session; a split cart is one order with two payment intents. The read side joins the ids the
  session lists with the intents that name the session.
"""

from __future__ import annotations

from typing import Any

import msgspec

from projections.base import Deltas, LogRow, Projection, Table
from projections.fields import as_bool, as_int, as_str, epoch_micros, event_micros, id_of, resource
from projections.fields import dict_of as _dict
from projections.fulfillment.events import FAILED, FETCHED, RETRY_REQUESTED
from projections.fulfillment.line_items import UnusableLineItems, parse_line_items
from projections.mergeable import Mergeable

__all__ = ["ORDERS", "PAYMENT_STATUS_RANK", "SESSION_STATUS_RANK"]

SESSION_STATUS_RANK = {"open": 0, "expired": 1, "canceled": 1, "paid": 2, "complete": 3}
_SESSION_STATUS_FROM_TYPE = {
    "checkout.session.completed": "complete",
    "checkout.session.expired": "expired",
    "checkout.session.created": "open",
}
PAYMENT_STATUS_RANK = {
    "requires_payment_method": 0,
    "requires_confirmation": 1,
    "requires_action": 2,
    "processing": 3,
    "requires_capture": 4,
    "canceled": 5,
    "succeeded": 6,
}
_PAYMENT_STATUS_FROM_TYPE = {
    "payment_intent.succeeded": "succeeded",
    "payment_intent.canceled": "canceled",
    "payment_intent.payment_failed": "requires_payment_method",
    "payment_intent.processing": "processing",
    "payment_intent.requires_action": "requires_action",
    "payment_intent.amount_capturable_updated": "requires_capture",
}


def _payment_intent(
    obj: dict[str, Any], status_hint: str | None, when: int, position: int, deltas: Deltas, session_id: str | None
) -> str | None:
    pi_id = as_str(obj.get("payment_intent_id")) or as_str(obj.get("id"))
    if pi_id is None:
        return None
    status = as_str(obj.get("status")) or status_hint
    rank = PAYMENT_STATUS_RANK.get(status or "", -1)
    key = [rank, when, position]
    state = deltas.state("order_payment_intents", pi_id, position)
    state.offer("status", status, key)
    state.offer("amount", as_int(obj.get("amount")), key)
    state.offer("amount_received", as_int(obj.get("amount_received")), key)
    state.offer("payment_card_type", as_str(obj.get("payment_card_type")), key)
    state.offer("customer_id", id_of(obj.get("customer"), "customer_id"), key)
    linked = (
        session_id
        or id_of(obj.get("checkout_session"), "checkout_session_id")
        or as_str(obj.get("checkout_session_id"))
    )
    state.offer("checkout_session_id", linked, key)
    return pi_id


def _session(row: LogRow, session: dict[str, Any], deltas: Deltas) -> bool:
    session_id = as_str(session.get("checkout_session_id")) or as_str(session.get("id"))
    if session_id is None:
        return False
    when = event_micros(row.payload)
    status = as_str(session.get("status")) or _SESSION_STATUS_FROM_TYPE.get(row.event_type)
    rank = SESSION_STATUS_RANK.get(status or "", -1)
    key = [rank, when, row.position]
    state = deltas.state("orders", session_id, row.position)
    state.offer("status", status, key)
    state.offer("mode", as_str(session.get("mode")), key)
    defaults = _dict(session.get("defaults"))
    customer = session.get("customer")
    state.offer(
        "customer_id",
        id_of(customer, "customer_id") or as_str(session.get("customer_id")) or as_str(defaults.get("customer_id")),
        key,
    )
    email = as_str(session.get("customer_email"))
    if email is None and isinstance(session.get("customer_details"), dict):
        email = as_str(session["customer_details"].get("email"))
    if email is None and isinstance(customer, dict):
        email = as_str(customer.get("email"))
    state.offer("customer_email", email or as_str(defaults.get("email")), key)
    state.offer("client_reference_id", as_str(session.get("client_reference_id")), key)
    state.offer("amount_total", as_int(session.get("amount_total")), key)
    state.offer("amount_subtotal", as_int(session.get("amount_subtotal")), key)
    state.offer("subscription_id", id_of(session.get("subscription"), "subscription_id"), key)
    state.offer("test_mode", as_bool(session.get("test_mode", row.payload.get("test_mode"))), key)
    created = epoch_micros(session.get("created_at"))
    state.offer("created_at", created, key)
    state.earliest("seen_at", when or None)
    if status == "complete":
        state.earliest("completed_at", when or None)
    intents = session.get("payment_intents")
    for item in [*(intents if isinstance(intents, list) else []), session.get("payment_intent")]:
        if isinstance(item, dict):
            state.add("payment_intent_ids", _payment_intent(item, None, when, row.position, deltas, session_id))
        else:
            state.add("payment_intent_ids", as_str(item))
    return True


def _fulfillment(row: LogRow, deltas: Deltas) -> bool:
    """The order's fulfillment block, from the reactor's ledger events.

    ``fulfilled`` is final; otherwise the latest retry generation decides, ``failed`` over
    ``pending`` within one generation.
    """
    obj = _dict(row.payload.get("object"))
    session_id = as_str(obj.get("checkout_session_id"))
    if session_id is None:
        return False
    state = deltas.state("orders", session_id, row.position)
    if row.event_type == FETCHED:
        try:
            _, items = parse_line_items(obj)
        except UnusableLineItems:
            return False
        state.offer("fulfillment_line_items", [msgspec.to_builtins(i) for i in items], [row.position])
        state.flag("fulfilled")
        state.earliest("fulfilled_at", epoch_micros(obj.get("fetched_at")) or event_micros(row.payload) or None)
        return True
    generation = as_int(obj.get("generation")) or 1
    if row.event_type == FAILED:
        key = [generation, 1, row.position]
        state.offer("fulfillment_status", "failed", key)
        state.offer("fulfillment_error", as_str(obj.get("error")) or "failed", key)
        return True
    if row.event_type == RETRY_REQUESTED:
        key = [generation, 0, row.position]
        state.offer("fulfillment_status", "pending", key)
        state.offer("fulfillment_error", "", key)
        return True
    return False


def fold(row: LogRow, deltas: Deltas) -> bool:
    if row.event_type.startswith("ledger."):
        return _fulfillment(row, deltas)
    if row.event_type.startswith("checkout.session."):
        session = resource(row.payload, "checkout_session", "checkout_session_id")
        return session is not None and _session(row, session, deltas)
    if row.event_type.startswith("payment_intent."):
        obj = resource(row.payload, "payment_intent", "payment_intent_id")
        if obj is None:
            return False
        hint = _PAYMENT_STATUS_FROM_TYPE.get(row.event_type)
        return _payment_intent(obj, hint, event_micros(row.payload), row.position, deltas, None) is not None
    return False


def _order_row(_: str, state: Mergeable) -> tuple[Any, ...]:
    sort_at = state.get("created_at") or state.min_of("seen_at") or 0
    return (
        state.get("status"),
        state.get("customer_id"),
        state.get("client_reference_id"),
        state.get("subscription_id"),
        sort_at,
    )


def _intent_row(_: str, state: Mergeable) -> tuple[Any, ...]:
    return (state.get("checkout_session_id"),)


ORDERS = Projection(
    name="orders",
    prefixes=("checkout.session.", "payment_intent.", FETCHED, FAILED, RETRY_REQUESTED),
    tables=(
        Table("orders", load="orders_load", upsert="orders_upsert", row=_order_row),
        Table("order_payment_intents", load="intents_load", upsert="intents_upsert", row=_intent_row),
    ),
    fold=fold,
    description="orders (one per checkout session) and their payment intents",
)
