"""The ``inventory`` projection: the adjustments feed, from ``ledger.inventory.adjusted`` events
(sales and restocks of a checkout's line items; renewals of a subscription's items).

The per-price and per-product totals (``inventory_levels``) move with every adjustment written,
in the same statement, so reading them never sums the whole feed. Rebuilding it reads the log
only: the line items were fetched from Flex once, by the fulfillment reactor, and logged.
"""

from __future__ import annotations

from typing import Any

from projections.base import Deltas, LogRow, Projection, Table
from projections.fields import as_bool, as_int, as_str, dict_of, epoch_micros, iso, newest_first_key
from projections.ledger_events import ADJUSTED
from projections.mergeable import Mergeable
from projections.shapes import Adjustment
from projections.sql import projection_queries as sql

__all__ = ["INVENTORY", "adjustment_at"]

_FIELDS = ("checkout_session_id", "line_item_id", "price_id", "product_id", "upc_code", "reason", "invoice_id")


def fold(row: LogRow, deltas: Deltas) -> bool:
    if row.event_type != ADJUSTED:
        return False
    adjustment = dict_of(dict_of(row.payload.get("object")).get("adjustment"))
    adjustment_id = as_str(adjustment.get("adjustment_id"))
    delta = as_int(adjustment.get("quantity_delta"))
    if adjustment_id is None or delta is None:
        return False
    key = newest_first_key(row.payload)
    state = deltas.state("inventory_adjustments", adjustment_id, row.position)
    for field in _FIELDS:
        state.offer(field, as_str(adjustment.get(field)), key)
    state.offer("quantity_delta", delta, key)
    state.offer("created_at", epoch_micros(adjustment.get("created_at")), key)
    state.offer("test_mode", as_bool(adjustment.get("test_mode")), key)
    return True


def _row(_: str, state: Mergeable) -> tuple[Any, ...]:
    return (
        state.get("checkout_session_id"),
        state.get("line_item_id"),
        state.get("price_id"),
        state.get("product_id"),
        state.get("upc_code"),
        state.get("quantity_delta"),
        state.get("reason") or "sale",
        state.get("created_at"),
        bool(state.get("test_mode")),  # adjustments logged before modes were kept: live
        state.get("invoice_id"),
    )


def adjustment_at(row: LogRow) -> Adjustment | None:
    """The adjustment one ``ledger.inventory.adjusted`` event records, as the feed shows it (folded by
    ``fold``, as the projection does); ``None`` for any other event."""
    deltas = Deltas()
    if not fold(row, deltas):
        return None
    [(adjustment_id, state)] = deltas.by_table["inventory_adjustments"].items()
    (session, line_item, price, product, upc, delta, reason, created_at, test_mode, invoice) = _row(
        adjustment_id, state
    )
    return Adjustment(
        adjustment_id=adjustment_id,
        position=row.position,
        checkout_session_id=session,
        line_item_id=line_item,
        price_id=price,
        product_id=product,
        upc_code=upc,
        quantity_delta=delta,
        reason=reason,
        created_at=iso(created_at),
        test_mode=test_mode,
        invoice_id=invoice,
    )


INVENTORY = Projection(
    name="inventory",
    prefixes=(ADJUSTED,),
    tables=(Table("inventory_adjustments", load=sql.adjustments_load, upsert=sql.adjustments_upsert, row=_row),),
    fold=fold,
    shape=2,  # 2: merge keys from the events' content, explicit nulls; modes; money after the sale
    description="inventory adjustments (sales, restocks, renewals) and totals per price, product and mode",
    derived=("inventory_levels",),
)
