"""The ``invoices`` projection: every invoice of every subscription, from ``invoice.*`` webhooks and
from observations of Flex's ``GET /invoices`` (``invoice.observed``).

Among conflicting snapshots the newest wins, newest by ``fields.newest_first_key``: a state an
invoice never leaves (``paid``, ``void``) first, then the event's own time, the millisecond time of
a ULID-shaped ``event_id``, then the ``event_id`` itself; never the log position (arrival). An
invoice marked ``uncollectible`` may still be paid, and then it is ``paid``.

Flex does not document its invoice object (``../shared/flex/REFERENCE.md`` §4.9); what is read
here accepts each shape seen or inferred: the id as ``invoice_id`` or ``id``; the subscription,
customer and payment intent as ids or as objects; amounts as integer cents; times as ISO-8601 or
Unix seconds; ``billing_reason`` when Flex sends it (else null). An event that names no status
takes the one its type implies (``invoice.paid`` is paid).
"""

from __future__ import annotations

from typing import Any

from projections.base import Deltas, LogRow, Projection, Table
from projections.fields import (
    as_bool,
    as_int,
    as_str,
    dict_of,
    epoch_micros,
    id_of,
    newest_first_key,
    nulled,
    resource,
)
from projections.ledger_events import FAILED, RENEWED, RETRY_REQUESTED, fold_fulfilled, fold_fulfillment_outcome
from projections.line_items import UnusableLineItems, parse_subscription_items
from projections.mergeable import Mergeable
from projections.observations import OBSERVED
from projections.sql import projection_queries as sql

__all__ = ["INVOICES", "INVOICE_STATUSES", "PAID_EVENTS", "invoice_id_of", "is_renewal", "renewal_of"]

INVOICE_STATUSES = ("draft", "open", "paid", "void", "uncollectible")
# The events that say an invoice was paid (the subscriptions guide names both).
PAID_EVENTS = ("invoice.paid", "invoice.payment_succeeded")
# What an event's type says of the invoice's status when its object does not.
_STATUS_OF_TYPE = {
    "invoice.created": "draft",
    "invoice.finalized": "open",
    "invoice.payment_failed": "open",  # still to be paid: Flex retries
    "invoice.payment_action_required": "open",
    "invoice.paid": "paid",
    "invoice.payment_succeeded": "paid",
    "invoice.voided": "void",
    "invoice.marked_uncollectible": "uncollectible",
}
_FINAL = frozenset({"paid", "void"})
_FULFILLMENT_EVENTS = frozenset({RENEWED, FAILED, RETRY_REQUESTED})
_TIMES = ("period_start", "period_end", "created_at", "due_date")


def is_renewal(billing_reason: str | None) -> bool | None:
    """Whether an invoice is a renewal by what Flex says of it: ``subscription_cycle`` is one; any
    other reason (``subscription_create``, a manual invoice, a change of plan) is not; ``None`` when
    Flex does not say (``renewals`` decides then, from the subscription's checkout session)."""
    if billing_reason is None:
        return None
    return billing_reason == "subscription_cycle"


def renewal_of(invoice_id: str, invoice: Mergeable, subscription: Mergeable | None) -> bool | None:
    """Whether an invoice is a renewal, by the contract's rule, from its own state and its
    subscription's (``projections.subscriptions``); ``None`` while it cannot be decided yet.

    Flex's ``billing_reason`` decides when it is given. Otherwise an invoice is its subscription's
    first (paid through the checkout, fulfilled as the checkout's sale) when the completed checkout
    session names it, or names the payment intent that paid it; any other invoice of the
    subscription is a renewal. Until the session is known complete the answer waits, so the order in
    which the events arrive never changes it."""
    by_reason = is_renewal(invoice.get("billing_reason"))
    if by_reason is not None:
        return by_reason
    if invoice.get("subscription_id") is None:
        return False  # not a subscription's invoice
    if subscription is None or subscription.get("checkout_status") != "complete":
        return None
    first = subscription.get("checkout_invoice")
    if first is not None:
        return bool(invoice_id != first)
    paid_by, intents = invoice.get("payment_intent_id"), subscription.items("checkout_payment_intents")
    if paid_by is not None and intents:
        return paid_by not in intents
    return None


def invoice_id_of(invoice: dict[str, Any]) -> str | None:
    return as_str(invoice.get("invoice_id")) or as_str(invoice.get("id"))


def _status(row: LogRow, invoice: dict[str, Any]) -> str | None:
    status = as_str(invoice.get("status"))
    if status in INVOICE_STATUSES:
        return status
    return _STATUS_OF_TYPE.get(row.event_type)


def _renewal(row: LogRow, deltas: Deltas) -> bool:
    """The renewal's fulfillment, from the reactor's ledger events (as an order's, from its own)."""
    obj = dict_of(row.payload.get("object"))
    invoice_id = as_str(obj.get("invoice_id"))
    if invoice_id is None:
        return False  # a checkout's fulfillment: the orders projection's
    state = deltas.state("invoices", invoice_id, row.position)
    if row.event_type == RENEWED:
        try:
            _, items = parse_subscription_items({"items": obj.get("items")})
        except UnusableLineItems:
            return False
        fold_fulfilled(row, state, items, epoch_micros(obj.get("fulfilled_at")) or None)
        return True
    return fold_fulfillment_outcome(row, state)


def fold(row: LogRow, deltas: Deltas) -> bool:
    if row.event_type in _FULFILLMENT_EVENTS:
        return _renewal(row, deltas)
    if not row.event_type.startswith("invoice."):
        return False
    invoice = resource(row.payload, "invoice", "invoice_id") or _bare(row.payload)
    if invoice is None:
        return False
    invoice_id = invoice_id_of(invoice)
    if invoice_id is None:
        return False
    status = _status(row, invoice)
    key = newest_first_key(row.payload, final=status in _FINAL)
    state = deltas.state("invoices", invoice_id, row.position)
    state.offer("status", status, key)
    subscription = id_of(invoice.get("subscription"), "subscription_id") or as_str(invoice.get("subscription_id"))
    state.offer("subscription_id", subscription, key)
    customer = id_of(invoice.get("customer"), "customer_id") or as_str(invoice.get("customer_id"))
    state.offer("customer_id", customer, key)
    intent = id_of(invoice.get("payment_intent"), "payment_intent_id") or as_str(invoice.get("payment_intent_id"))
    state.offer("payment_intent_id", intent, key, clears=nulled(invoice, "payment_intent"))
    for field in ("amount_due", "amount_paid", "amount_remaining", "total", "subtotal"):
        state.offer(field, as_int(invoice.get(field)), key, clears=nulled(invoice, field))
    for field in _TIMES:
        state.offer(field, epoch_micros(invoice.get(field)), key, clears=nulled(invoice, field))
    state.offer("billing_reason", as_str(invoice.get("billing_reason")), key, clears=nulled(invoice, "billing_reason"))
    state.offer("test_mode", as_bool(invoice.get("test_mode", row.payload.get("test_mode"))), key)
    when = epoch_micros(row.payload.get("event_dt"))
    state.earliest("seen_at", when)
    if status == "paid":
        state.earliest("paid_at", epoch_micros(_transitions(invoice).get("paid_at")) or when)
    if row.event_type == "invoice.payment_failed":
        state.latest("payment_failed_at", when)
    return True


def _bare(payload: dict[str, Any]) -> dict[str, Any] | None:
    """An ``invoice.*`` event's object when it is the invoice itself with only an ``id``."""
    obj = payload.get("object")
    return obj if isinstance(obj, dict) and "id" in obj and "invoice" not in obj else None


def _transitions(invoice: dict[str, Any]) -> dict[str, Any]:
    found = invoice.get("status_transitions")
    return found if isinstance(found, dict) else {}


def sort_at(state: Mergeable) -> int:
    """Newest first: the invoice's creation, else its period's start, else when it was first seen."""
    return int(state.get("created_at") or state.get("period_start") or state.min_of("seen_at") or 0)


def _row(_: str, state: Mergeable) -> tuple[Any, ...]:
    return (
        state.get("subscription_id"),
        state.get("customer_id"),
        state.get("status"),
        state.get("test_mode"),
        sort_at(state),
    )


INVOICES = Projection(
    name="invoices",
    prefixes=("invoice.", OBSERVED, RENEWED, FAILED, RETRY_REQUESTED),
    tables=(Table("invoices", load=sql.invoices_load, upsert=sql.invoices_upsert, row=_row),),
    fold=fold,
    shape=1,
    derived=("invoice_history",),
    history_table="invoice_history",
    history=sql.invoice_history_add,
    description="invoices of subscriptions: status, amounts, period, whether each is a renewal, its fulfillment",
)
