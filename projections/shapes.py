"""The read side's documents, one definition each: msgspec Structs that ``projections.documents``
builds, the API encodes as they are and describes with them in its OpenAPI document
(``api/schemas.py``), and the console renders.

Fields are only ever added, with defaults, so clients written against an earlier reply go on
working (msgspec's schema evolution rules).
"""

from __future__ import annotations

from typing import Any

import msgspec

from projections.line_items import LineItem  # an order's line items are these, as stored

__all__ = [
    "Adjustment",
    "Customer",
    "Dispute",
    "Fulfillment",
    "InventoryLevel",
    "Invoice",
    "Order",
    "PaymentIntent",
    "Refund",
    "Subscription",
]


class PaymentIntent(msgspec.Struct):
    payment_intent_id: str
    status: str | None
    amount: int | None
    amount_received: int | None
    payment_card_type: str | None


class Refund(msgspec.Struct):
    refund_id: str
    payment_intent_id: str | None
    amount: int | None
    status: str | None
    reason: str | None
    created_at: str | None


class Dispute(msgspec.Struct):
    dispute_id: str
    payment_intent_id: str | None
    amount: int | None
    status: str | None
    reason: str | None
    evidence_due_by: str | None


class Fulfillment(msgspec.Struct):
    status: str  # pending | fulfilled | failed | not_applicable
    line_items: list[LineItem]
    error: str | None
    fulfilled_at: str | None


class Order(msgspec.Struct):
    checkout_session_id: str
    status: str | None
    mode: str | None
    customer_id: str | None
    customer_email: str | None
    client_reference_id: str | None
    metadata: dict[str, Any] | None
    amount_total: int | None
    amount_subtotal: int | None
    total_details: dict[str, Any] | None
    shipping_details: dict[str, Any] | None
    payment_intents: list[PaymentIntent]
    payment_status: str
    amount_paid: int
    amount_refunded: int
    amount_disputed: int
    amount_net: int
    refunds: list[Refund]
    disputes: list[Dispute]
    flags: list[str]
    subscription_id: str | None
    fulfillment: Fulfillment
    created_at: str | None
    completed_at: str | None
    test_mode: bool | None
    position: int


class Customer(msgspec.Struct):
    customer_id: str
    email: str | None
    first_name: str | None
    last_name: str | None
    phone: str | None
    order_ids: list[str]
    subscription_ids: list[str]
    deleted: bool
    deleted_at: str | None
    created_at: str | None
    test_mode: bool | None
    position: int


class Subscription(msgspec.Struct):
    subscription_id: str
    customer_id: str | None
    status: str | None
    checkout_session_id: str | None
    payment_status: str | None
    latest_invoice: str | None
    last_paid_at: str | None
    current_period_start: str | None
    current_period_end: str | None
    cancel_at_period_end: bool | None
    canceled_at: str | None
    price_ids: list[str]
    created_at: str | None
    test_mode: bool | None
    position: int
    entitled: bool = False  # while its status is active or trialing
    invoice_ids: list[str] = msgspec.field(default_factory=list)


class Invoice(msgspec.Struct):
    """One invoice of a subscription (``projections.invoices``)."""

    invoice_id: str
    subscription_id: str | None
    customer_id: str | None
    status: str | None  # draft | open | paid | void | uncollectible
    amount_due: int | None
    amount_paid: int | None
    period_start: str | None
    period_end: str | None
    payment_intent_id: str | None
    billing_reason: str | None  # as Flex sends it, else null
    renewal: bool | None  # null: not yet decidable
    fulfillment: Fulfillment
    paid_at: str | None
    created_at: str | None
    test_mode: bool | None
    position: int


class InventoryLevel(msgspec.Struct):
    """Totals of one (price, product) in one mode (``inventory_levels``)."""

    price_id: str | None
    product_id: str | None
    test_mode: bool
    quantity_sold: int
    quantity_restocked: int
    quantity_net: int
    adjustment_count: int
    position: int


class Adjustment(msgspec.Struct):
    """One row of the inventory adjustments feed: a sale or a restock of one line item, or the
    renewal of one subscription item (``checkout_session_id`` null, ``invoice_id`` set)."""

    adjustment_id: str
    position: int
    checkout_session_id: str | None
    line_item_id: str
    price_id: str | None
    product_id: str | None
    upc_code: str | None
    quantity_delta: int
    reason: str  # sale | restock | renewal
    created_at: str | None
    test_mode: bool
    invoice_id: str | None = None  # renewals only
