"""An order's money, worked out from its payment intents when it is read (pure; no database).

``amount_paid`` sums the succeeded payment intents (``amount_received``, else ``amount``);
``amount_refunded`` sums succeeded refunds; ``amount_disputed`` sums disputes that are open or
lost; ``amount_net = amount_paid - amount_refunded - amount_disputed``. ``payment_status``:
``canceled`` when every intent is canceled and none succeeded; else ``disputed`` when a dispute is
open or lost; else ``refunded`` when ``amount_refunded >= amount_paid > 0``; else
``partially_refunded`` when it is above 0; else ``paid`` when ``amount_paid >= amount_total``;
``partially_paid`` above 0; ``unpaid`` otherwise. Pending and failed refunds are listed, not counted.

Two states Flex should never report are kept visible rather than smoothed over:
``over_refunded`` (succeeded refunds add up to more than was paid: ``amount_net`` is then negative,
exactly the sum of what Flex reported) and ``refunded_and_disputed`` (one payment intent has a
succeeded refund and an open or lost dispute: ``amount_net`` subtracts both, so the same money may
be counted twice until the dispute closes).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec

from projections.fields import iso
from projections.mergeable import Mergeable

__all__ = ["Money", "order_money"]

# Dispute states in which the money is back with the merchant (or never left).
_DISPUTE_SETTLED = frozenset({"won", "warning_closed", "charge_refunded", "prevented"})


class Money(msgspec.Struct, kw_only=True):
    payment_intents: list[dict[str, Any]]
    refunds: list[dict[str, Any]]
    disputes: list[dict[str, Any]]
    amount_paid: int
    amount_refunded: int
    amount_disputed: int
    amount_net: int
    payment_status: str
    legs_mismatch: bool
    over_refunded: bool
    refunded_and_disputed: bool


def _collected(states: Sequence[Mergeable], kind: str) -> list[dict[str, Any]]:
    """The refunds or disputes kept on the intents (first) and on the order, one per id."""
    found: dict[str, dict[str, Any]] = {}
    for state in states:
        for item_id in state.items(f"{kind}_ids"):
            doc = state.get(f"{kind}:{item_id}")
            if isinstance(doc, dict) and item_id not in found:
                found[item_id] = doc
    return [found[k] for k in sorted(found)]


def order_money(
    *, amount_total: int | None, order: Mergeable, intents: Sequence[tuple[str, Mergeable | None]]
) -> Money:
    known = [state for _, state in intents if state is not None]
    documents = []
    paid = 0
    statuses = []
    for pi_id, state in intents:
        get = state.get if state is not None else (lambda *_: None)
        status = get("status")
        statuses.append(status)
        received = get("amount_received")
        if status == "succeeded":
            paid += received if received is not None else get("amount") or 0
        documents.append(
            {
                "payment_intent_id": pi_id,
                "status": status,
                "amount": get("amount"),
                "amount_received": received,
                "payment_card_type": get("payment_card_type"),
            }
        )
    refunds = _collected([*known, order], "refund")
    disputes = _collected([*known, order], "dispute")
    refunded = sum(r.get("amount") or 0 for r in refunds if r.get("status") == "succeeded")
    open_or_lost = [d for d in disputes if d.get("status") not in _DISPUTE_SETTLED]
    disputed = sum(d.get("amount") or 0 for d in open_or_lost)
    if statuses and all(s == "canceled" for s in statuses):
        status = "canceled"
    elif open_or_lost:
        status = "disputed"
    elif paid > 0 and refunded >= paid:
        status = "refunded"
    elif refunded > 0:
        status = "partially_refunded"
    elif amount_total is not None and paid >= amount_total and (paid > 0 or (amount_total == 0 and statuses)):
        status = "paid"
    elif paid > 0:
        status = "partially_paid"
    else:
        status = "unpaid"
    succeeded_legs = [s for s in statuses if s == "succeeded"]
    refunded_intents = {r.get("payment_intent_id") for r in refunds if r.get("status") == "succeeded"}
    disputed_intents = {d.get("payment_intent_id") for d in open_or_lost}
    return Money(
        payment_intents=documents,
        refunds=[{**r, "created_at": iso(r.get("created_at"))} for r in refunds],
        disputes=[{**d, "evidence_due_by": iso(d.get("evidence_due_by"))} for d in disputes],
        amount_paid=paid,
        amount_refunded=refunded,
        amount_disputed=disputed,
        amount_net=paid - refunded - disputed,
        payment_status=status,
        legs_mismatch=bool(succeeded_legs) and amount_total is not None and paid != amount_total,
        over_refunded=refunded > paid,
        refunded_and_disputed=bool(refunded_intents & disputed_intents),
    )
