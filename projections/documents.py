"""The read side: orders, customers, subscriptions and inventory, as API documents."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from typing import Any, TypeVar

import asyncpg
import msgspec

from ledger.db import connection, translate_errors
from ledger.errors import InvalidRequest
from projections.fields import iso
from projections.invoices import renewal_of
from projections.line_items import LineItem
from projections.mergeable import Mergeable
from projections.money import order_money
from projections.order_intents import Intents, intents_of
from projections.shapes import (
    Adjustment,
    Customer,
    Dispute,
    Fulfillment,
    InventoryLevel,
    Invoice,
    Order,
    PaymentIntent,
    Refund,
    Subscription,
)
from projections.sql import projection_queries as queries
from projections.subscriptions import ENTITLING

__all__ = [
    "Intents",
    "customer_document",
    "customers_by_email",
    "decode_cursor",
    "encode_cursor",
    "get_customer",
    "get_invoice",
    "get_order",
    "get_subscription",
    "intents_of",
    "inventory_levels",
    "inventory_levels_body",
    "invoice_document",
    "list_adjustments",
    "list_invoices",
    "list_orders",
    "order_document",
    "subscription_document",
    "with_intents",
    "with_subscriptions",
]


async def _fetch_state(pool: asyncpg.Pool, query: str, entity_id: str) -> tuple[int, Mergeable] | None:
    """One entity's (position, state), by a ``*_get`` query."""
    async with connection(pool) as conn:
        record = await conn.fetchrow(query, entity_id)
    return None if record is None else (record["position"], Mergeable.loads(record["state"]))


_S = TypeVar("_S", bound=msgspec.Struct)


def _taken(shape: type[_S], stored: Mapping[str, Any]) -> _S:
    """``shape`` from a document a fold stored: its fields, ``None`` for any an earlier release did
    not store, and nothing else."""
    return shape(**{name: stored.get(name) for name in shape.__struct_fields__})


def _fulfillment(state: Mergeable, expected: bool) -> Fulfillment:
    """An order's or a renewal's fulfillment block, from what its fold stored; ``expected``: whether
    it is to be fulfilled at all (a complete session; a paid renewal)."""
    fulfillment: str
    if state.flagged("fulfilled"):
        fulfillment = "fulfilled"
    elif state.get("fulfillment_status"):
        fulfillment = state.get("fulfillment_status")
    else:
        fulfillment = "pending" if expected else "not_applicable"
    return Fulfillment(
        status=fulfillment,
        # as the fold stored them (LineItem's fields; an older release's extra keys are ignored)
        line_items=msgspec.convert(state.get("fulfillment_line_items") or [], list[LineItem], strict=False),
        error=(state.get("fulfillment_error") or None) if fulfillment == "failed" else None,
        fulfilled_at=iso(state.min_of("fulfilled_at")),
    )


def order_document(
    record: Mapping[str, Any],
    state: Mergeable,
    intents: list[tuple[str, int, Mergeable | None]],
    completed_twice: bool,
) -> Order:
    status = state.get("status")
    amount_total = state.get("amount_total")
    money = order_money(amount_total=amount_total, order=state, intents=[(pi, s) for pi, _, s in intents])
    flags = []
    if status == "complete" and money.legs_mismatch:
        flags.append("payment_legs_mismatch")
    if status == "complete" and completed_twice:
        flags.append("duplicate_payment")
    if money.over_refunded:
        flags.append("over_refunded")
    if money.refunded_and_disputed:
        flags.append("refunded_and_disputed")
    return Order(
        checkout_session_id=record["checkout_session_id"],
        status=status,
        mode=state.get("mode"),
        customer_id=state.get("customer_id"),
        customer_email=state.get("customer_email"),
        client_reference_id=state.get("client_reference_id"),
        metadata=state.get("metadata"),
        amount_total=amount_total,
        amount_subtotal=state.get("amount_subtotal"),
        total_details=state.get("total_details"),
        shipping_details=state.get("shipping_details"),
        payment_intents=[_taken(PaymentIntent, pi) for pi in money.payment_intents],
        payment_status=money.payment_status,
        amount_paid=money.amount_paid,
        amount_refunded=money.amount_refunded,
        amount_disputed=money.amount_disputed,
        amount_net=money.amount_net,
        refunds=[_taken(Refund, r) for r in money.refunds],
        disputes=[_taken(Dispute, d) for d in money.disputes],
        flags=flags,
        subscription_id=state.get("subscription_id"),
        # Only a complete session is fulfilled (Flex: check `status == "complete"` first).
        fulfillment=_fulfillment(state, status == "complete"),
        created_at=iso(state.get("created_at")),
        completed_at=iso(state.min_of("completed_at")),
        test_mode=state.get("test_mode"),
        position=max([record["position"], *(p for _, p, _ in intents)]),
    )


async def with_intents(conn: asyncpg.Connection, records: list[asyncpg.Record]) -> list[Order]:
    """The orders as documents: two round trips for the whole page (intents, then the completed
    sessions sharing their client_reference_id)."""
    orders = await intents_of(conn, records)
    references = sorted(
        {
            s.get("client_reference_id")
            for _, s, _ in orders
            if s.get("status") == "complete" and s.get("client_reference_id")
        }
    )
    completed: dict[str, set[str]] = {}
    if references:
        for row in await conn.fetch(queries.orders_completed_by_reference, references):
            completed.setdefault(row["client_reference_id"], set()).add(row["checkout_session_id"])
    out = []
    for record, state, intents in orders:
        others = completed.get(state.get("client_reference_id") or "", set()) - {record["checkout_session_id"]}
        out.append(order_document(record, state, intents, completed_twice=bool(others)))
    return out


async def get_order(pool: asyncpg.Pool, checkout_session_id: str) -> Order | None:
    async with connection(pool) as conn:
        record = await conn.fetchrow(queries.order_get, checkout_session_id)
        if record is None:
            return None
        return (await with_intents(conn, [record]))[0]


def encode_cursor(sort_at: int, key: str) -> str:
    """A list's cursor: the (sort_at, key) of the page's last row (orders, invoices)."""
    return f"{sort_at}:{key}"


_BIGINT_MAX = 2**63 - 1
# The first page of orders: before every possible (sort_at, checkout_session_id).
_FIRST_PAGE = (_BIGINT_MAX, "")


def decode_cursor(cursor: str) -> tuple[int, str]:
    """``sort_at:checkout_session_id``; cursors of earlier releases were that text in base64url."""
    try:
        raw = cursor if ":" in cursor else base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        sort_at, _, session_id = raw.partition(":")
        value = int(sort_at)
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise InvalidRequest("cursor is not one this API returned") from None
    if not -_BIGINT_MAX <= value <= _BIGINT_MAX or "\0" in session_id:
        raise InvalidRequest("cursor is not one this API returned")
    return value, session_id


def _orders_query(customer_id: str | None, status: str | None, client_reference_id: str | None) -> str:
    """The query whose index leads with the most selective filter given."""
    if client_reference_id is not None:
        return queries.orders_list_by_reference
    if customer_id is not None:
        return queries.orders_list_by_customer
    if status is not None:
        return queries.orders_list_by_status
    return queries.orders_list


async def list_orders(
    pool: asyncpg.Pool,
    *,
    customer_id: str | None,
    status: str | None,
    client_reference_id: str | None,
    limit: int,
    cursor: str | None,
    payment_status: str | None = None,
    test_mode: bool | None = None,
) -> tuple[list[Order], str | None]:
    after = decode_cursor(cursor) if cursor is not None else _FIRST_PAGE
    query = _orders_query(customer_id, status, client_reference_id)
    async with connection(pool) as conn:
        records = await conn.fetch(
            query, customer_id, status, client_reference_id, after[0], after[1], limit, payment_status, test_mode
        )
        orders = await with_intents(conn, list(records))
    next_cursor = None
    if len(records) == limit:
        last = records[-1]
        next_cursor = encode_cursor(last["sort_at"], last["checkout_session_id"])
    return orders, next_cursor


async def get_customer(pool: asyncpg.Pool, customer_id: str) -> Customer | None:
    found = await _fetch_state(pool, queries.customer_get, customer_id)
    return None if found is None else customer_document(customer_id, *found)


def customer_document(customer_id: str, position: int, state: Mergeable) -> Customer:
    """A customer as the read API serves it, from its merged state."""
    return Customer(
        customer_id=customer_id,
        email=state.get("email"),
        first_name=state.get("first_name"),
        last_name=state.get("last_name"),
        phone=state.get("phone"),
        order_ids=state.items("order_ids"),
        subscription_ids=state.items("subscription_ids"),
        deleted=state.flagged("deleted"),
        deleted_at=iso(state.min_of("deleted_at")),
        created_at=iso(state.get("created_at")),
        test_mode=state.get("test_mode"),
        position=position,
    )


async def get_subscription(pool: asyncpg.Pool, subscription_id: str) -> Subscription | None:
    found = await _fetch_state(pool, queries.subscription_get, subscription_id)
    return None if found is None else subscription_document(subscription_id, *found)


def subscription_document(subscription_id: str, position: int, state: Mergeable) -> Subscription:
    """A subscription as the read API serves it, from its merged state."""
    return Subscription(
        subscription_id=subscription_id,
        customer_id=state.get("customer_id"),
        status=state.get("status"),
        checkout_session_id=state.get("checkout_session_id"),
        payment_status=state.get("payment_status"),
        latest_invoice=state.get("latest_invoice"),
        last_paid_at=iso(state.max_of("last_paid_at")),
        current_period_start=iso(state.get("current_period_start")),
        current_period_end=iso(state.get("current_period_end")),
        cancel_at_period_end=state.get("cancel_at_period_end"),
        canceled_at=iso(state.min_of("canceled_at")),
        price_ids=state.items("price_ids"),
        created_at=iso(state.get("created_at")),
        test_mode=state.get("test_mode"),
        position=position,
        entitled=state.get("status") in ENTITLING,
        invoice_ids=state.items("invoice_ids"),
    )


async def get_invoice(pool: asyncpg.Pool, invoice_id: str, *, renewals: bool = True) -> Invoice | None:
    async with connection(pool) as conn:
        record = await conn.fetchrow(queries.invoice_get, invoice_id)
        if record is None:
            return None
        return (await with_subscriptions(conn, [record], renewals=renewals))[0]


async def with_subscriptions(
    conn: asyncpg.Connection, records: list[asyncpg.Record], *, renewals: bool = True
) -> list[Invoice]:
    """Invoices as documents, each with what its subscription says of it (``renewal``): one round
    trip for the whole page."""
    states = [Mergeable.loads(r["state"]) for r in records]
    wanted = sorted({s.get("subscription_id") for s in states if s.get("subscription_id")})
    subscriptions = {r["id"]: Mergeable.loads(r["state"]) for r in await conn.fetch(queries.subscriptions_load, wanted)}
    return [
        invoice_document(
            r["invoice_id"], r["position"], state, subscriptions.get(state.get("subscription_id")), renewals=renewals
        )
        for r, state in zip(records, states, strict=True)
    ]


def invoice_document(
    invoice_id: str, position: int, state: Mergeable, subscription: Mergeable | None = None, *, renewals: bool = True
) -> Invoice:
    """An invoice as the read API serves it, from its merged state (and its subscription's);
    ``renewals``: whether paid renewals are fulfilled here (``LEDGER_FULFILL_RENEWALS``)."""
    renewal = renewal_of(invoice_id, state, subscription)
    return Invoice(
        invoice_id=invoice_id,
        subscription_id=state.get("subscription_id"),
        customer_id=state.get("customer_id"),
        status=state.get("status"),
        amount_due=state.get("amount_due"),
        amount_paid=state.get("amount_paid"),
        period_start=iso(state.get("period_start")),
        period_end=iso(state.get("period_end")),
        payment_intent_id=state.get("payment_intent_id"),
        billing_reason=state.get("billing_reason"),
        renewal=renewal,
        fulfillment=_fulfillment(state, bool(renewals and renewal and state.get("status") == "paid")),
        paid_at=iso(state.min_of("paid_at")),
        created_at=iso(state.get("created_at")),
        test_mode=state.get("test_mode"),
        position=position,
    )


def _invoices_query(subscription_id: str | None, customer_id: str | None, status: str | None) -> str:
    """The query whose index leads with the most selective filter given."""
    if subscription_id is not None:
        return queries.invoices_list_by_subscription
    if customer_id is not None:
        return queries.invoices_list_by_customer
    if status is not None:
        return queries.invoices_list_by_status
    return queries.invoices_list


async def list_invoices(
    pool: asyncpg.Pool,
    *,
    subscription_id: str | None,
    customer_id: str | None,
    status: str | None,
    test_mode: bool | None,
    limit: int,
    cursor: str | None,
    renewals: bool = True,
) -> tuple[list[Invoice], str | None]:
    after = decode_cursor(cursor) if cursor is not None else _FIRST_PAGE
    query = _invoices_query(subscription_id, customer_id, status)
    async with connection(pool) as conn:
        records = await conn.fetch(query, subscription_id, customer_id, status, after[0], after[1], limit, test_mode)
        invoices = await with_subscriptions(conn, list(records), renewals=renewals)
    next_cursor = None
    if len(records) == limit:
        next_cursor = encode_cursor(records[-1]["sort_at"], records[-1]["invoice_id"])
    return invoices, next_cursor


async def list_adjustments(
    pool: asyncpg.Pool, *, after: int, limit: int, test_mode: bool | None = None
) -> tuple[list[Adjustment], str | None]:
    """A page of the adjustments feed after position ``after``, and the cursor of the next page."""
    async with connection(pool) as conn:
        rows = await conn.fetch(queries.adjustments_list, after, limit, test_mode)
    data = [
        Adjustment(
            adjustment_id=r["adjustment_id"],
            position=r["position"],
            checkout_session_id=r["checkout_session_id"],
            line_item_id=r["line_item_id"],
            price_id=r["price_id"],
            product_id=r["product_id"],
            upc_code=r["upc_code"],
            quantity_delta=r["quantity_delta"],
            reason=r["reason"],
            created_at=iso(r["created_at"]),
            test_mode=r["test_mode"],
            invoice_id=r["invoice_id"],
        )
        for r in rows
    ]
    return data, (str(rows[-1]["position"]) if len(rows) == limit else None)


async def customers_by_email(pool: asyncpg.Pool, email: str) -> list[str]:
    """The ids of the customers with this email (a search of the console)."""
    async with connection(pool) as conn:
        return sorted(r["customer_id"] for r in await conn.fetch(queries.customers_by_email, email))


async def inventory_levels_body(pool: asyncpg.Pool, *, test_mode: bool = False) -> bytes:
    """``{"data": inventory_levels(...)}`` as JSON, built by PostgreSQL (see the query)."""
    with translate_errors():
        body: str = await pool.fetchval(queries.inventory_levels_body, test_mode)
    return body.encode()


async def inventory_levels(
    pool: asyncpg.Pool, *, test_mode: bool = False, after: tuple[str, str] | None = None, limit: int | None = None
) -> list[InventoryLevel]:
    """One row per (price, product) of the mode asked (live by default): all of them, or a page of
    ``limit`` in (price, product) order after ``after``."""
    async with connection(pool) as conn:
        if limit is None:
            rows = await conn.fetch(queries.inventory_levels, test_mode)
        else:
            price, product = after or ("", "")
            rows = await conn.fetch(queries.inventory_levels_page, test_mode, price, product, limit)
    return [
        InventoryLevel(
            price_id=r["price_id"],
            product_id=r["product_id"],
            test_mode=r["test_mode"],
            quantity_sold=r["quantity_sold"],
            quantity_restocked=r["quantity_restocked"],
            quantity_net=r["quantity_net"],
            adjustment_count=r["adjustment_count"],
            position=r["position"],
        )
        for r in rows
    ]
