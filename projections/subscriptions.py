"""The ``subscriptions`` projection: lifecycle status and payment state per subscription.

Among conflicting updates the newest snapshot wins, newest by ``fields.newest_first_key``: a
canceled subscription first (it is never left), then the event's own time, the millisecond time of
a ULID-shaped ``event_id``, then the ``event_id`` itself; never the log position, which is arrival.
A subscription that recovers (``past_due`` then ``active``) ends ``active``.
``customer.subscription.deleted`` means ``canceled``. ``invoice.*`` events that name a
subscription update its payment state.
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
from projections.mergeable import Mergeable
from projections.observations import OBSERVED
from projections.orders import SESSION_FINAL
from projections.sql import projection_queries as sql

__all__ = ["ENTITLING", "SUBSCRIPTIONS"]

# States a subscription never leaves; between the others (past_due -> active is a recovery, not a
# step back) the newest snapshot decides.
_FINAL = frozenset({"canceled", "incomplete_expired"})
# The statuses in which a customer has what the subscription sells (its ``entitled``).
ENTITLING = frozenset({"active", "trialing"})
_INVOICE_PAYMENT = {
    "invoice.created": "open",
    "invoice.finalized": "open",
    "invoice.updated": None,
    "invoice.paid": "paid",
    "invoice.payment_succeeded": "paid",
    "invoice.payment_failed": "failed",
    "invoice.payment_action_required": "action_required",
    "invoice.voided": "void",
    "invoice.marked_uncollectible": "uncollectible",
}
_PAYMENT_FINAL = frozenset({"paid", "void", "uncollectible"})


def _subscription(row: LogRow, deltas: Deltas) -> bool:
    sub = resource(row.payload, "subscription", "subscription_id")
    if sub is None:
        return False
    subscription_id = as_str(sub.get("subscription_id")) or as_str(sub.get("id"))
    if subscription_id is None:
        return False
    when = event_micros(row.payload)
    status = "canceled" if row.event_type == "customer.subscription.deleted" else as_str(sub.get("status"))
    key = newest_first_key(row.payload, final=status in _FINAL)
    state = deltas.state("subscriptions", subscription_id, row.position)
    state.offer("status", status, key)
    state.offer("customer_id", id_of(sub.get("customer"), "customer_id"), [1, *key])
    for field in ("current_period_start", "current_period_end", "trial_start", "trial_end", "cancel_at"):
        state.offer(field, epoch_micros(sub.get(field)), key, clears=nulled(sub, field))
    state.offer("cancel_at_period_end", as_bool(sub.get("cancel_at_period_end")), key)
    state.offer("latest_invoice", id_of(sub.get("latest_invoice"), "invoice_id"), key)
    state.offer("test_mode", as_bool(sub.get("test_mode", row.payload.get("test_mode"))), key)
    state.offer("created_at", epoch_micros(sub.get("created_at")), key)
    items = sub.get("items")
    if isinstance(items, list):
        for item in items:
            if isinstance(item, dict):
                state.add("price_ids", id_of(item.get("price"), "price_id"))
    if status == "canceled":
        state.earliest("canceled_at", when or None)
    return True


def _invoice(row: LogRow, deltas: Deltas) -> bool:
    invoice = resource(row.payload, "invoice", "invoice_id")
    if invoice is None:
        return False
    subscription_id = id_of(invoice.get("subscription"), "subscription_id") or as_str(invoice.get("subscription_id"))
    if subscription_id is None:
        return False
    when = event_micros(row.payload)
    payment = _INVOICE_PAYMENT.get(row.event_type) or as_str(invoice.get("status"))
    key = newest_first_key(row.payload, final=payment in _PAYMENT_FINAL)
    state = deltas.state("subscriptions", subscription_id, row.position)
    state.offer("payment_status", payment, key)
    invoice_id = as_str(invoice.get("invoice_id")) or as_str(invoice.get("id"))
    state.offer("latest_invoice", invoice_id, key)
    state.add("invoice_ids", invoice_id)
    state.offer("latest_invoice_amount", as_int(invoice.get("amount_paid", invoice.get("total"))), key)
    state.offer("customer_id", id_of(invoice.get("customer"), "customer_id"), [0, *key])
    if payment == "paid":
        state.latest("last_paid_at", when or None)
    return True


def _session(row: LogRow, deltas: Deltas) -> bool:
    session = resource(row.payload, "checkout_session", "checkout_session_id")
    if session is None:
        return False
    subscription_id = id_of(session.get("subscription"), "subscription_id")
    session_id = as_str(session.get("checkout_session_id"))
    if subscription_id is None or session_id is None:
        return False
    status = as_str(session.get("status"))
    key = newest_first_key(row.payload, final=status in SESSION_FINAL)
    state = deltas.state("subscriptions", subscription_id, row.position)
    state.offer("checkout_session_id", session_id, key)
    state.offer("customer_id", id_of(session.get("customer"), "customer_id"), [0, *key])
    # What tells its first invoice from a renewal when Flex gives no billing_reason (invoices.py):
    # whether the checkout completed, and the invoice and payments it names.
    state.offer("checkout_status", status, key)
    state.offer("checkout_invoice", id_of(session.get("invoice"), "invoice_id"), key)
    intents = session.get("payment_intents")
    for intent in intents if isinstance(intents, list) else [session.get("payment_intent")]:
        state.add("checkout_payment_intents", id_of(intent, "payment_intent_id"))
    return True


def fold(row: LogRow, deltas: Deltas) -> bool:
    if row.event_type.startswith("customer.subscription."):
        return _subscription(row, deltas)
    if row.event_type.startswith("invoice."):
        return _invoice(row, deltas)
    if row.event_type.startswith("checkout.session."):
        return _session(row, deltas)
    return False


def _row(_: str, state: Mergeable) -> tuple[Any, ...]:
    return (state.get("customer_id"), state.get("status"))


SUBSCRIPTIONS = Projection(
    name="subscriptions",
    prefixes=("customer.subscription.", "invoice.", "checkout.session.", OBSERVED),
    tables=(Table("subscriptions", load=sql.subscriptions_load, upsert=sql.subscriptions_upsert, row=_row),),
    fold=fold,
    # 2: merge keys from the events' content, explicit nulls; modes; money after the sale. 3: history.
    # 4: the subscription's invoice ids, and what its checkout says of its first invoice.
    shape=4,
    derived=("subscription_history",),
    history_table="subscription_history",
    history=sql.subscription_history_add,
    description="subscriptions with lifecycle status and payment state",
)
