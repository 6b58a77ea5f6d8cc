"""Realistic Flex events for a checkout, as Flex would send them (field names per Flex's docs).

Used by the tests, the benchmarks, ``ledger send`` and ``ledger demo``. Every event carries its
own ``event_dt``; a scenario's events are returned in the order Flex would emit them.
"""

from __future__ import annotations

import hashlib
import random
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from ledger.log import NewEvent
from projections.ledger_events import fetched_events
from projections.line_items import parse_line_items

__all__ = [
    "PERIOD",
    "Checkout",
    "cancel_at_period_end_events",
    "cancel_events",
    "checkout_events",
    "dispute_events",
    "fulfillment_events",
    "refund_events",
    "renewal_events",
    "renewal_invoice_id",
]


def _ulid(rng: random.Random) -> str:
    return uuid.UUID(int=rng.getrandbits(128)).hex[:26].upper()


@dataclass
class Checkout:
    """One shopper's checkout: what a scenario is built from."""

    seed: int = 0
    mode: str = "payment"  # or "subscription"
    split: bool = False  # two payment intents (HSA/FSA card + regular card)
    items: int = 1
    start: int = 1_767_225_600  # 2026-01-01T00:00:00Z
    test_mode: bool = False  # a live checkout unless asked
    capture: str = "automatic"  # "manual": authorized at checkout, captured (or voided) later
    billing_reason: bool = True  # a subscription's invoices say why they were made (Flex may not)

    def __post_init__(self) -> None:
        rng = random.Random(self.seed)
        self.rng = rng
        self.session_id = f"fcs_{_ulid(rng)}"
        self.customer_id = f"fcus_{_ulid(rng)}"
        self.email = f"shopper{self.seed}@example.com"
        self.reference = f"order-{self.seed}"
        self.prices: list[dict[str, Any]] = [
            {
                "price_id": f"fprice_{_ulid(rng)}",
                "unit_amount": rng.randint(5, 200) * 100,
                "product": f"fprod_{_ulid(rng)}",
            }
            for _ in range(self.items)
        ]
        self.quantities = [rng.randint(1, 3) for _ in range(self.items)]
        self.total = sum(p["unit_amount"] * q for p, q in zip(self.prices, self.quantities, strict=True))
        self.intents = [f"fpi_{_ulid(rng)}" for _ in range(2 if self.split else 1)]
        hsa = self.total if not self.split else (self.total * 2) // 3
        self.amounts = [hsa] if not self.split else [hsa, self.total - hsa]
        self.subscription_id = f"fsub_{_ulid(rng)}" if self.mode == "subscription" else None
        self.invoice_id = f"in_{_ulid(rng)}" if self.mode == "subscription" else None

    def _event(self, event_type: str, at: int, obj: dict[str, Any]) -> dict[str, Any]:
        return {
            "event_dt": at,
            "event_id": f"evt_{uuid.UUID(int=self.rng.getrandbits(128)).hex}",
            "event_type": event_type,
            "object": obj,
        }

    def line_items(self) -> list[dict[str, Any]]:
        """What the Line Items API returns for this session."""
        return [
            {
                "line_item_id": f"li_{self.session_id[4:]}_{i}",
                "description": f"Item {i + 1}",
                "quantity": q,
                "amount_subtotal": p["unit_amount"] * q,
                "amount_total": p["unit_amount"] * q,
                "amount_discount": 0,
                "amount_tax": 0,
                "price": {
                    "price_id": p["price_id"],
                    "unit_amount": p["unit_amount"],
                    "product": {"product_id": p["product"], "name": f"Product {i + 1}", "upc_code": f"0{i:011d}"},
                },
            }
            for i, (p, q) in enumerate(zip(self.prices, self.quantities, strict=True))
        ]

    def subscription_items(self) -> list[dict[str, Any]]:
        """A subscription's items as Flex's subscription object holds them: what each renewal fulfills."""
        return [
            {
                "subscription_item_id": f"si_{hashlib.sha256(f'{self.subscription_id}:{i}'.encode()).hexdigest()[:24]}",
                "quantity": q,
                "price": {"price_id": p["price_id"], "unit_amount": p["unit_amount"], "product": p["product"]},
            }
            for i, (p, q) in enumerate(zip(self.prices, self.quantities, strict=True))
        ]

    def session(self, status: str) -> dict[str, Any]:
        return {
            "checkout_session_id": self.session_id,
            "status": status,
            "mode": self.mode,
            "amount_total": self.total,
            "amount_subtotal": self.total,
            "client_reference_id": self.reference,
            "customer": self.customer_id,
            "customer_email": self.email,
            "payment_intents": list(self.intents) if status == "complete" else [],
            "subscription": self.subscription_id,
            "invoice": self.invoice_id,
            "created_at": self.start,
            "expires_at": self.start + 3600,
            "success_url": "https://shop.example.com/thanks?session={CHECKOUT_SESSION_ID}",
            "capture_method": self.capture,
            "total_details": {"amount_discount": 0, "amount_tax": 0, "amount_shipping": 0},
            "shipping_details": {
                "line1": f"{self.seed} Main St",
                "city": "Springfield",
                "state": "IL",
                "postal_code": "62701",
                "country": "US",
            },
            "metadata": {"cart": f"cart-{self.seed}"},
            "test_mode": self.test_mode,
        }


def checkout_events(c: Checkout) -> list[dict[str, Any]]:
    """The events of one completed checkout, in emission order, each a second apart."""
    t = c.start
    events = [
        c._event(
            "customer.created",
            t + 1,
            {
                "customer": {
                    "customer_id": c.customer_id,
                    "email": c.email,
                    "first_name": "Sam",
                    "last_name": f"Shopper{c.seed}",
                    "test_mode": c.test_mode,
                }
            },
        )
    ]
    for i, (pi, amount) in enumerate(zip(c.intents, c.amounts, strict=True)):
        card = "primary" if i == 0 else "secondary"
        base = {
            "payment_intent_id": pi,
            "amount": amount,
            "customer": c.customer_id,
            "payment_card_type": card,
            "capture_method": c.capture,
            "test_mode": c.test_mode,
        }
        events.append(
            c._event(
                "payment_intent.created", t + 2 + i, {"payment_intent": {**base, "status": "requires_payment_method"}}
            )
        )
    for i, (pi, amount) in enumerate(zip(c.intents, c.amounts, strict=True)):
        base = {"payment_intent_id": pi, "amount": amount, "customer": c.customer_id, "test_mode": c.test_mode}
        if c.capture == "manual":  # authorized only: captured or voided after the checkout
            held = {**base, "amount_capturable": amount, "amount_received": 0, "status": "requires_capture"}
            events.append(c._event("payment_intent.amount_capturable_updated", t + 10 + i, {"payment_intent": held}))
        else:
            paid = {**base, "amount_received": amount, "status": "succeeded"}
            events.append(c._event("payment_intent.succeeded", t + 10 + i, {"payment_intent": paid}))
    if c.mode == "subscription":
        sub = {
            "subscription_id": c.subscription_id,
            "customer": c.customer_id,
            "latest_invoice": c.invoice_id,
            "items": c.subscription_items(),
            "test_mode": c.test_mode,
            "current_period_start": t + 12,
            "current_period_end": t + 12 + PERIOD,
            "created_at": t + 12,
        }
        events.append(
            c._event("customer.subscription.created", t + 12, {"subscription": {**sub, "status": "incomplete"}})
        )
        events.append(
            c._event(
                "invoice.payment_succeeded",
                t + 13,
                {
                    "invoice": {
                        "invoice_id": c.invoice_id,
                        "subscription": c.subscription_id,
                        "customer": c.customer_id,
                        "amount_due": c.total,
                        "amount_paid": c.total,
                        "status": "paid",
                        "payment_intent": c.intents[0],
                        "period_start": t + 12,
                        "period_end": t + 12 + PERIOD,
                        "created_at": t + 12,
                        **({"billing_reason": "subscription_create"} if c.billing_reason else {}),
                        "test_mode": c.test_mode,
                    }
                },
            )
        )
        events.append(c._event("customer.subscription.updated", t + 14, {"subscription": {**sub, "status": "active"}}))
    events.append(c._event("checkout.session.completed", t + 20, {"checkout_session": c.session("complete")}))
    return events


PERIOD = 30 * 86400  # a subscription's billing period in the scenarios


def renewal_invoice_id(c: Checkout, cycle: int) -> str:
    """The invoice of a subscription's ``cycle`` (1: the first renewal; 0 is the checkout's)."""
    if cycle == 0:
        assert c.invoice_id is not None
        return c.invoice_id
    return f"in_{hashlib.sha256(f'{c.subscription_id}:{cycle}'.encode()).hexdigest()[:26].upper()}"


def renewal_events(
    c: Checkout, cycle: int, *, outcome: str = "paid", both_paid_events: bool = True
) -> list[dict[str, Any]]:
    """Renewal ``cycle`` (1, 2, ...) of a subscription checkout, a period after the one before: its
    invoice created and finalized, then paid (``invoice.paid`` and ``invoice.payment_succeeded``),
    failed (``invoice.payment_failed``, the subscription ``past_due``) or ``recovered`` (failed,
    then paid a day later), and the subscription's period moved on."""
    assert c.subscription_id is not None
    assert cycle >= 1
    start = c.start + 12 + cycle * PERIOD
    invoice = {
        "invoice_id": renewal_invoice_id(c, cycle),
        "subscription": c.subscription_id,
        "customer": c.customer_id,
        "amount_due": c.total,
        "amount_paid": 0,
        "period_start": start,
        "period_end": start + PERIOD,
        "created_at": start,
        "payment_intent": f"fpi_{hashlib.sha256(f'{c.subscription_id}:{cycle}:pi'.encode()).hexdigest()[:26]}",
        **({"billing_reason": "subscription_cycle"} if c.billing_reason else {}),
        "test_mode": c.test_mode,
    }
    sub = {
        "subscription_id": c.subscription_id,
        "customer": c.customer_id,
        "latest_invoice": invoice["invoice_id"],
        "items": c.subscription_items(),
        "current_period_start": start,
        "current_period_end": start + PERIOD,
        "test_mode": c.test_mode,
    }
    events = [
        c._event("invoice.created", start, {"invoice": {**invoice, "status": "draft"}}),
        c._event("invoice.finalized", start + 1, {"invoice": {**invoice, "status": "open"}}),
    ]
    paid_at = start + 2
    if outcome in ("failed", "recovered"):
        events.append(c._event("invoice.payment_failed", start + 2, {"invoice": {**invoice, "status": "open"}}))
        events.append(
            c._event("customer.subscription.updated", start + 3, {"subscription": {**sub, "status": "past_due"}})
        )
        paid_at = start + 86400
    if outcome in ("paid", "recovered"):
        paid = {**invoice, "status": "paid", "amount_paid": c.total}
        events.append(c._event("invoice.paid", paid_at, {"invoice": paid}))
        if both_paid_events:
            events.append(c._event("invoice.payment_succeeded", paid_at, {"invoice": paid}))
        events.append(
            c._event("customer.subscription.updated", paid_at + 1, {"subscription": {**sub, "status": "active"}})
        )
    return events


def cancel_at_period_end_events(c: Checkout, cycle: int) -> list[dict[str, Any]]:
    """The subscription set to end with the period of ``cycle``, then ended (``deleted``) then."""
    assert c.subscription_id is not None
    start = c.start + 12 + cycle * PERIOD
    sub = {
        "subscription_id": c.subscription_id,
        "customer": c.customer_id,
        "current_period_start": start,
        "current_period_end": start + PERIOD,
        "test_mode": c.test_mode,
    }
    return [
        c._event(
            "customer.subscription.updated",
            start + 10,
            {"subscription": {**sub, "status": "active", "cancel_at_period_end": True}},
        ),
        c._event("customer.subscription.deleted", start + PERIOD, {"subscription": {**sub, "status": "canceled"}}),
    ]


def fulfillment_events(c: Checkout, *, test_mode: bool = False) -> list[NewEvent]:
    """What the fulfillment reactor appends for this checkout once Flex has answered its line
    items (as the stand-in answers): the fetched line items, then one adjustment per line item."""
    raw, items = parse_line_items({"line_items": c.line_items()})
    return fetched_events(c.session_id, raw, items, datetime.fromtimestamp(c.start + 60, UTC), test_mode=test_mode)


def refund_events(c: Checkout, amount: int, *, at: int = 100, outcome: str = "succeeded") -> list[dict[str, Any]]:
    """A refund of ``amount`` on the checkout's first payment intent: created pending, then
    ``outcome`` (``succeeded``, ``failed`` or ``canceled``), ``at`` seconds after the checkout."""
    refund = {
        "refund_id": f"fre_{_ulid(c.rng)}",
        "payment_intent_id": c.intents[0],
        "amount": amount,
        "reason": "requested_by_customer",
        "created_at": datetime.fromtimestamp(c.start + at, UTC).isoformat(),
        "metadata": {},
        "test_mode": c.test_mode,
    }
    return [
        c._event("refund.created", c.start + at, {"refund": {**refund, "status": "pending"}}),
        c._event("refund.updated", c.start + at + 5, {"refund": {**refund, "status": outcome}}),
    ]


def dispute_events(c: Checkout, *, at: int = 200, outcome: str = "lost") -> list[dict[str, Any]]:
    """A dispute of the first payment intent's full amount: created, funds withdrawn, then closed
    ``won`` or ``lost``. Flex documents the event names, not the dispute object: Stripe's shape."""
    dispute = {
        "dispute_id": f"dp_{_ulid(c.rng)}",
        "payment_intent": c.intents[0],
        "amount": c.amounts[0],
        "reason": "fraudulent",
        "evidence_details": {"due_by": c.start + at + 7 * 86400},
        "test_mode": c.test_mode,
    }
    return [
        c._event("charge.dispute.created", c.start + at, {"dispute": {**dispute, "status": "needs_response"}}),
        c._event(
            "charge.dispute.funds_withdrawn", c.start + at + 1, {"dispute": {**dispute, "status": "under_review"}}
        ),
        c._event("charge.dispute.closed", c.start + at + 86400, {"dispute": {**dispute, "status": outcome}}),
    ]


def cancel_events(c: Checkout, *, at: int = 300) -> list[dict[str, Any]]:
    """The authorizations of a manual-capture checkout voided (``payment_intent.canceled``)."""
    return [
        c._event(
            "payment_intent.canceled",
            c.start + at + i,
            {
                "payment_intent": {
                    "payment_intent_id": pi,
                    "amount": amount,
                    "amount_received": 0,
                    "customer": c.customer_id,
                    "status": "canceled",
                    "test_mode": c.test_mode,
                }
            },
        )
        for i, (pi, amount) in enumerate(zip(c.intents, c.amounts, strict=True))
    ]
