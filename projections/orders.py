"""The ``orders`` projection: one order per checkout session, its payment intents, and the money
after the sale (refunds, disputes, cancellations).

* Every field takes the value of the newest snapshot that carries it, newest by
  ``projections.fields.newest_first_key``: a state that can never be left first (a completed,
  expired or canceled session; a succeeded or canceled payment), then the event's own time and id.
  An explicit ``null`` clears a field; a missing one changes nothing.
* Payment intents are kept by id, in their own table, whether they arrive before or after the
  session; a split cart is one order with two payment intents. The read side joins the ids the
  session lists with the intents that name the session.
* Refunds and disputes are kept on their payment intent (``refund:<id>``, ``dispute:<id>``), so
  they reach the order through it whichever arrives first; the money is worked out when the order
  is read (``projections/money.py``).
"""

from __future__ import annotations

from typing import Any

from projections.base import Deltas, LogRow, Projection, Table
from projections.fields import (
    as_bool,
    as_int,
    as_str,
    epoch_micros,
    event_micros,
    id_of,
    newest_first_key,
    nulled,
    resource,
)
from projections.fields import dict_of as _dict
from projections.ledger_events import (
    ADJUSTED,
    FAILED,
    FETCHED,
    RETRY_REQUESTED,
    fold_fulfilled,
    fold_fulfillment_outcome,
)
from projections.line_items import UnusableLineItems, parse_line_items
from projections.mergeable import Key, Mergeable
from projections.observations import OBSERVED
from projections.order_intents import settle_every_payment_status, settle_payment_status
from projections.sql import projection_queries as sql

__all__ = ["ORDERS", "REFUND_EVENTS", "SESSION_FINAL", "refunds_in"]

# Session states a session never leaves.
SESSION_FINAL = frozenset({"complete", "expired", "canceled"})
_SESSION_STATUS_FROM_TYPE = {
    "checkout.session.completed": "complete",
    "checkout.session.expired": "expired",
    "checkout.session.created": "open",
}
_PAYMENT_FINAL = frozenset({"succeeded", "canceled"})
_PAYMENT_STATUS_FROM_TYPE = {
    "payment_intent.succeeded": "succeeded",
    "payment_intent.canceled": "canceled",
    "payment_intent.payment_failed": "requires_payment_method",
    "payment_intent.processing": "processing",
    "payment_intent.requires_action": "requires_action",
    "payment_intent.amount_capturable_updated": "requires_capture",
}
_REFUND_FINAL = frozenset({"failed", "canceled"})
# Event types that carry refunds: refund.created/updated, charge.refunded, charge.refund.updated.
REFUND_EVENTS = ("refund.", "charge.refund")
_DISPUTE_FINAL = frozenset({"won", "lost"})
_DISPUTE_STATUS_FROM_TYPE = {
    "charge.dispute.created": "needs_response",
    "charge.dispute.funds_reinstated": "won",
}


def _payment_intent(
    row: LogRow, obj: dict[str, Any], status_hint: str | None, deltas: Deltas, session_id: str | None
) -> str | None:
    pi_id = as_str(obj.get("payment_intent_id")) or as_str(obj.get("id"))
    if pi_id is None:
        return None
    status = as_str(obj.get("status")) or status_hint
    key = newest_first_key(row.payload, final=status in _PAYMENT_FINAL)
    state = deltas.state("order_payment_intents", pi_id, row.position)
    state.offer("status", status, key)
    state.offer("amount", as_int(obj.get("amount")), key)
    state.offer("amount_received", as_int(obj.get("amount_received")), key, clears=nulled(obj, "amount_received"))
    state.offer("payment_card_type", as_str(obj.get("payment_card_type")), key)
    state.offer("customer_id", id_of(obj.get("customer"), "customer_id"), key)
    state.offer("test_mode", as_bool(obj.get("test_mode", row.payload.get("test_mode"))), key)
    linked = (
        session_id
        or id_of(obj.get("checkout_session"), "checkout_session_id")
        or as_str(obj.get("checkout_session_id"))
    )
    state.offer("checkout_session_id", linked, key)
    return pi_id


def read_refund(row: LogRow, refund: dict[str, Any], pi_id: str | None = None) -> dict[str, Any] | None:
    """A refund as the order shows it, with the payment intent it names (else ``pi_id``)."""
    refund_id = as_str(refund.get("refund_id")) or as_str(refund.get("id"))
    if refund_id is None:
        return None
    items = refund.get("items")
    first_item = _dict(items[0]) if isinstance(items, list) and items else {}
    return {
        "refund_id": refund_id,
        "payment_intent_id": (
            as_str(refund.get("payment_intent_id"))
            or id_of(refund.get("payment_intent"), "payment_intent_id")
            or id_of(first_item.get("payment_intent"), "payment_intent_id")
            or pi_id
        ),
        "amount": as_int(refund.get("amount")),
        "status": as_str(refund.get("status")) or ("succeeded" if row.event_type == "charge.refunded" else None),
        "reason": as_str(refund.get("reason")),
        "created_at": epoch_micros(refund.get("created_at") or refund.get("created")),
    }


def refunds_in(row: LogRow) -> list[dict[str, Any]]:
    """The refunds a ``refund.*``, ``charge.refunded`` or ``charge.refund.updated`` event carries."""
    found: list[dict[str, Any] | None]
    if row.event_type.startswith("refund."):
        found = [resource(row.payload, "refund", "refund_id")]
        pi_id = None
    else:
        obj = _dict(row.payload.get("object"))
        charge = resource(row.payload, "charge", "charge_id") or {}
        found = [obj["refund"]] if isinstance(obj.get("refund"), dict) else [*_listed(charge.get("refunds"))]
        pi_id = id_of(charge.get("payment_intent"), "payment_intent_id") or as_str(charge.get("payment_intent_id"))
    refunds = (read_refund(row, r, pi_id) for r in found if isinstance(r, dict))
    return [r for r in refunds if r is not None]


def _refund(row: LogRow, doc: dict[str, Any] | None, deltas: Deltas, *, order: Mergeable | None) -> bool:
    """A refund, on its payment intent (or, when only its session is known, on the order)."""
    if doc is None:
        return False
    pi_id = doc["payment_intent_id"]
    key = newest_first_key(row.payload, final=doc["status"] in _REFUND_FINAL)
    target = deltas.state("order_payment_intents", pi_id, row.position) if pi_id else order
    if target is None:
        return False
    target.offer(f"refund:{doc['refund_id']}", doc, key)
    target.add("refund_ids", doc["refund_id"])
    return True


def _dispute(
    row: LogRow, dispute: dict[str, Any], deltas: Deltas, *, pi_id: str | None, order: Mergeable | None
) -> bool:
    dispute_id = as_str(dispute.get("dispute_id")) or as_str(dispute.get("id"))
    if dispute_id is None:
        return False
    pi_id = (
        as_str(dispute.get("payment_intent_id")) or id_of(dispute.get("payment_intent"), "payment_intent_id") or pi_id
    )
    status = as_str(dispute.get("status")) or _DISPUTE_STATUS_FROM_TYPE.get(row.event_type)
    evidence = _dict(dispute.get("evidence_details"))
    doc = {
        "dispute_id": dispute_id,
        "payment_intent_id": pi_id,
        "amount": as_int(dispute.get("amount")),
        "status": status,
        "reason": as_str(dispute.get("reason")),
        "evidence_due_by": epoch_micros(dispute.get("evidence_due_by") or evidence.get("due_by")),
    }
    key = newest_first_key(row.payload, final=status in _DISPUTE_FINAL)
    target = deltas.state("order_payment_intents", pi_id, row.position) if pi_id else order
    if target is None:
        return False
    target.offer(f"dispute:{dispute_id}", doc, key)
    target.add("dispute_ids", dispute_id)
    return True


def _listed(value: Any) -> list[dict[str, Any]]:
    """A list of objects, whether sent as a list or as Stripe's ``{"data": [...]}``."""
    if isinstance(value, dict):
        value = value.get("data")
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


def _offer_object(state: Mergeable, field: str, obj: dict[str, Any], key: Key) -> None:
    value = obj.get(field)
    state.offer(field, value if isinstance(value, dict) else None, key, clears=nulled(obj, field))


def _session(row: LogRow, session: dict[str, Any], deltas: Deltas) -> bool:
    session_id = as_str(session.get("checkout_session_id")) or as_str(session.get("id"))
    if session_id is None:
        return False
    when = event_micros(row.payload)
    status = as_str(session.get("status")) or _SESSION_STATUS_FROM_TYPE.get(row.event_type)
    key = newest_first_key(row.payload, final=status in SESSION_FINAL)
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
    state.offer(
        "client_reference_id",
        as_str(session.get("client_reference_id")),
        key,
        clears=nulled(session, "client_reference_id"),
    )
    state.offer("amount_total", as_int(session.get("amount_total")), key)
    state.offer("amount_subtotal", as_int(session.get("amount_subtotal")), key)
    for field in ("total_details", "shipping_details", "metadata"):
        _offer_object(state, field, session, key)
    state.offer("subscription_id", id_of(session.get("subscription"), "subscription_id"), key)
    state.offer("test_mode", as_bool(session.get("test_mode", row.payload.get("test_mode"))), key)
    created = epoch_micros(session.get("created_at"))
    state.offer("created_at", created, key)
    state.earliest("seen_at", when or None)
    if status == "complete":
        state.earliest("completed_at", when or None)
    intents = session.get("payment_intents")
    listed: list[str] = []
    for item in [*(intents if isinstance(intents, list) else []), session.get("payment_intent")]:
        pi_id = _payment_intent(row, item, None, deltas, session_id) if isinstance(item, dict) else as_str(item)
        if pi_id is not None:
            listed.append(pi_id)
            state.add("payment_intent_ids", pi_id)
            # the intent knows its session too: its refunds and disputes find the order through it
            deltas.state("order_payment_intents", pi_id, row.position).offer("checkout_session_id", session_id, key)
    # Refunds and disputes the session carries: on their payment intent, else the session's only one.
    only = listed[0] if len(set(listed)) == 1 else None
    for refund in _listed(session.get("refunds")):
        _refund(row, read_refund(row, refund, only), deltas, order=state)
    for dispute in _listed(session.get("disputes")):
        _dispute(row, dispute, deltas, pi_id=only, order=state)
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
        fold_fulfilled(row, state, items, epoch_micros(obj.get("fetched_at")) or event_micros(row.payload) or None)
        return True
    return fold_fulfillment_outcome(row, state)


def fold(row: LogRow, deltas: Deltas) -> bool:
    event_type = row.event_type
    if event_type == ADJUSTED:  # a sale or restock of the order's line items: its history only
        adjustment = _dict(_dict(row.payload.get("object")).get("adjustment"))
        session_id = as_str(adjustment.get("checkout_session_id"))
        if session_id is not None:
            deltas.touch(session_id, row.position)
        return session_id is not None
    if event_type.startswith("ledger."):
        return _fulfillment(row, deltas)
    if event_type.startswith("checkout.session."):
        session = resource(row.payload, "checkout_session", "checkout_session_id")
        return session is not None and _session(row, session, deltas)
    if event_type.startswith("payment_intent."):
        obj = resource(row.payload, "payment_intent", "payment_intent_id")
        if obj is None:
            return False
        return _payment_intent(row, obj, _PAYMENT_STATUS_FROM_TYPE.get(event_type), deltas, None) is not None
    if event_type.startswith(REFUND_EVENTS):
        return any([_refund(row, refund, deltas, order=None) for refund in refunds_in(row)])
    if event_type.startswith("charge.dispute."):
        dispute = resource(row.payload, "dispute", "dispute_id")
        return dispute is not None and _dispute(row, dispute, deltas, pi_id=None, order=None)
    return False


def _order_row(_: str, state: Mergeable) -> tuple[Any, ...]:
    sort_at = state.get("created_at") or state.min_of("seen_at") or 0
    return (
        state.get("status"),
        state.get("customer_id"),
        state.get("client_reference_id"),
        state.get("subscription_id"),
        state.get("test_mode"),
        sort_at,
    )


def _intent_row(_: str, state: Mergeable) -> tuple[Any, ...]:
    return (state.get("checkout_session_id"),)


ORDERS = Projection(
    name="orders",
    prefixes=(
        "checkout.session.",
        OBSERVED,
        "payment_intent.",
        *REFUND_EVENTS,
        "charge.dispute.",
        FETCHED,
        FAILED,
        RETRY_REQUESTED,
        ADJUSTED,
    ),
    tables=(
        Table("orders", load=sql.orders_load, upsert=sql.orders_upsert, row=_order_row),
        Table("order_payment_intents", load=sql.intents_load, upsert=sql.intents_upsert, row=_intent_row),
    ),
    fold=fold,
    # 2: merge keys from the events' content, explicit nulls; modes; money after the sale. 3: history.
    shape=3,
    derived=("order_history",),
    history_table="order_history",
    history=sql.order_history_add,
    description="orders (one per checkout session), their payment intents, refunds and disputes",
    after_write=settle_payment_status,
    after_bulk_load=settle_every_payment_status,
    bulk_load_reads=("order_payment_intents_session_idx",),
)
