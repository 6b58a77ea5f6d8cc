"""Renewals: every paid invoice of a subscription that is a renewal is fulfilled once, like a checkout.

Flex's subscriptions guide asks merchants to provision or ship again on every paid invoice, not only
on the first checkout. The fulfillment reactor does it through its one queue, with the same retries,
parking and exactly-once guard as checkouts:

* **Intake** (``paid_invoices``): a paid invoice (``invoice.paid``, ``invoice.payment_succeeded``,
  or an observation of Flex's invoice saying ``paid``) is queued once, keyed by its id
  (``kind = 'renewal'``), whatever else arrives about it; not when its ``billing_reason`` already
  says it is no renewal.
* **Decision** (``decide``): whether it is a renewal follows the contract
  (``projections.invoices.renewal_of``), on the invoices and subscriptions projections once both
  have applied the event that queued it. Not decidable yet (Flex gave no ``billing_reason`` and the
  subscription's checkout is not known complete): looked at again later, no attempt counted. Not a
  renewal (the subscription's first invoice, fulfilled as its checkout's sale): ``skipped``.
* **Work** (``renew``): the subscription's items from Flex (``GET /subscriptions/{id}``), then in
  one transaction ``ledger.renewal.fulfilled`` and one ``ledger.inventory.adjusted`` per item
  (``reason = "renewal"``, ``invoice_id`` set); their event ids make them exactly once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg

from ledger.db import connection
from ledger.log import append_with
from projections.base import LogRow
from projections.fields import as_bool, as_str, id_of, resource
from projections.invoices import INVOICES, PAID_EVENTS, invoice_id_of, is_renewal, renewal_of
from projections.ledger_events import renewal_events
from projections.mergeable import Mergeable
from projections.observations import KINDS
from projections.sql import projection_queries
from projections.subscriptions import SUBSCRIPTIONS
from reactors.flex_client import FlexClient
from reactors.sql import reactor_queries as sql

__all__ = ["PAID", "Decision", "decide", "paid_invoices", "renew"]

_OBSERVED_INVOICE = KINDS["invoice"].snapshot_type
PAID = (*PAID_EVENTS, _OBSERVED_INVOICE)  # what may queue a renewal
WAIT = 30.0  # seconds before an undecided invoice is looked at again
_BEHIND = 0.5  # ... when only the projections have yet to apply it (a moment)


def paid_invoices(rows: Sequence[LogRow]) -> dict[str, tuple[int, bool, str | None]]:
    """The paid invoices of a batch: invoice id -> (position, test mode, subscription id)."""
    found: dict[str, tuple[int, bool, str | None]] = {}
    for row in rows:
        if row.event_type not in PAID:
            continue
        invoice = resource(row.payload, "invoice", "invoice_id")
        if invoice is None or (row.event_type == _OBSERVED_INVOICE and invoice.get("status") != "paid"):
            continue
        if is_renewal(as_str(invoice.get("billing_reason"))) is False:
            continue  # Flex says it is not a renewal (the first invoice, a manual one): nothing to queue
        invoice_id = invoice_id_of(invoice)
        if invoice_id is None:
            continue
        subscription = id_of(invoice.get("subscription"), "subscription_id") or as_str(invoice.get("subscription_id"))
        test_mode = as_bool(invoice.get("test_mode", row.payload.get("test_mode"))) or False
        found.setdefault(invoice_id, (row.position, test_mode, subscription))
    return found


@dataclass(frozen=True)
class Decision:
    """Whether a paid invoice is a renewal (``None``: not yet, look again in ``again`` seconds), its
    subscription, and why."""

    renewal: bool | None
    subscription_id: str | None
    reason: str
    again: float = WAIT


async def decide(conn: asyncpg.Connection, invoice_id: str, queued_at: int) -> Decision:
    """The contract's decision, on the projections once they have applied position ``queued_at``."""
    applied = {
        r["name"]: r["position"]
        for r in await conn.fetch(projection_queries.state_all)
        if r["name"] in (INVOICES.name, SUBSCRIPTIONS.name)
    }
    behind = [name for name in (INVOICES.name, SUBSCRIPTIONS.name) if applied.get(name, 0) < queued_at]
    if behind:
        reason = f"waiting for the {' and '.join(behind)} projection to apply position {queued_at}"
        return Decision(None, None, reason, again=_BEHIND)
    [invoice] = [Mergeable.loads(r["state"]) for r in await conn.fetch(projection_queries.invoices_load, [invoice_id])]
    subscription_id = invoice.get("subscription_id")
    found = await conn.fetch(projection_queries.subscriptions_load, [subscription_id] if subscription_id else [])
    subscription = Mergeable.loads(found[0]["state"]) if found else None
    renewal = renewal_of(invoice_id, invoice, subscription)
    if renewal is None:
        return Decision(
            None,
            subscription_id,
            "waiting: Flex gave no billing_reason, and the subscription's checkout is not yet known complete "
            "with the invoice or payment it names",
        )
    if not renewal:
        return Decision(False, subscription_id, "not a renewal: the subscription's first invoice (its checkout's sale)")
    return Decision(True, subscription_id, "a renewal")


async def renew(
    pool: asyncpg.Pool, client: FlexClient, invoice_id: str, subscription_id: str, *, test_mode: bool
) -> bool:
    """Fulfills a renewal: the subscription's items from Flex, recorded once. Returns whether this
    call recorded it (``False``: fulfilled or parked meanwhile). Raises ``FlexApiError``."""
    raw, items = await client.subscription_items(subscription_id)
    now = datetime.now(UTC)
    async with connection(pool) as conn, conn.transaction():
        row = await conn.fetchrow(sql.queue_lock, invoice_id)
        if row is None or row["status"] != "pending":
            return False
        await append_with(conn, renewal_events(invoice_id, subscription_id, raw, items, now, test_mode=test_mode))
        await conn.execute(sql.queue_fulfilled, invoice_id)
    return True
