"""The ``customers`` projection: contact details from ``customer.*`` events (and, with lower
priority, from sessions' ``customer_email``), the customer's orders and subscriptions.

``customer.deleted`` marks the customer deleted; nothing is erased.
"""

from __future__ import annotations

from typing import Any

from projections.base import Deltas, LogRow, Projection, Table
from projections.fields import as_bool, as_str, epoch_micros, event_micros, id_of, newest_first_key, nulled, resource
from projections.fields import dict_of as _dict
from projections.mergeable import Mergeable
from projections.observations import OBSERVED
from projections.sql import projection_queries as sql

__all__ = ["CUSTOMERS"]

# Facts from the customer object itself outrank what a session or subscription says about it.
_FROM_CUSTOMER, _FROM_OTHERS = 1, 0


def _customer(row: LogRow, deltas: Deltas) -> bool:
    obj = resource(row.payload, "customer", "customer_id")
    if obj is None:
        return False
    customer_id = as_str(obj.get("customer_id")) or as_str(obj.get("id"))
    if customer_id is None:
        return False
    when = event_micros(row.payload)
    deleted = row.event_type == "customer.deleted" or obj.get("deleted") is True
    key = [_FROM_CUSTOMER, *newest_first_key(row.payload, final=deleted)]
    state = deltas.state("customers", customer_id, row.position)
    for field in ("email", "first_name", "last_name", "phone"):
        state.offer(field, as_str(obj.get(field)), key, clears=nulled(obj, field))
    state.offer("created_at", epoch_micros(obj.get("created_at")), key)
    state.offer("test_mode", as_bool(obj.get("test_mode", row.payload.get("test_mode"))), key)
    if deleted:
        state.flag("deleted")
        state.earliest("deleted_at", when or None)
    return True


def _session(row: LogRow, deltas: Deltas) -> bool:
    session = resource(row.payload, "checkout_session", "checkout_session_id")
    if session is None:
        return False
    defaults = _dict(session.get("defaults"))
    customer = session.get("customer")
    customer_id = (
        id_of(customer, "customer_id") or as_str(session.get("customer_id")) or as_str(defaults.get("customer_id"))
    )
    session_id = as_str(session.get("checkout_session_id"))
    if customer_id is None or session_id is None:
        return False
    key = [_FROM_OTHERS, *newest_first_key(row.payload)]
    state = deltas.state("customers", customer_id, row.position)
    state.add("order_ids", session_id)
    state.add("subscription_ids", id_of(session.get("subscription"), "subscription_id"))
    email = as_str(session.get("customer_email")) or as_str(defaults.get("email"))
    if email is None and isinstance(customer, dict):
        email = as_str(customer.get("email"))
    state.offer("email", email, key)
    for field in ("first_name", "last_name"):
        state.offer(field, as_str(defaults.get(field)), key)
    return True


def _subscription(row: LogRow, deltas: Deltas) -> bool:
    sub = resource(row.payload, "subscription", "subscription_id")
    if sub is None:
        return False
    customer_id = id_of(sub.get("customer"), "customer_id")
    subscription_id = as_str(sub.get("subscription_id"))
    if customer_id is None or subscription_id is None:
        return False
    deltas.state("customers", customer_id, row.position).add("subscription_ids", subscription_id)
    return True


def fold(row: LogRow, deltas: Deltas) -> bool:
    if row.event_type.startswith("customer.subscription."):
        return _subscription(row, deltas)
    if row.event_type.startswith("customer."):
        return _customer(row, deltas)
    if row.event_type.startswith("checkout.session."):
        return _session(row, deltas)
    return False


def _row(_: str, state: Mergeable) -> tuple[Any, ...]:
    return (state.get("email"), state.flagged("deleted"))


CUSTOMERS = Projection(
    name="customers",
    prefixes=("customer.", "checkout.session.", OBSERVED),
    tables=(Table("customers", load=sql.customers_load, upsert=sql.customers_upsert, row=_row),),
    fold=fold,
    # 2: merge keys from the events' content, explicit nulls; modes; money after the sale. 3: history.
    shape=3,
    derived=("customer_history",),
    history_table="customer_history",
    history=sql.customer_history_add,
    description="customers with their contact details, orders and subscriptions",
)
