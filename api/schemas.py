"""The read API's documents and errors as types, for the OpenAPI schema (``responses=`` of each
route). The routes build the same documents (``projections/documents.py``); the fuzzer run by
``tests/e2e/test_openapi.py`` checks every reply against these."""

from __future__ import annotations

import msgspec
from litestar.openapi.datastructures import ResponseSpec

from api.errors import ErrorBody
from ledger.log import LoggedEvent
from projections.shapes import Customer, Order, Subscription
from reactors.status import FollowerStatus

__all__ = ["ERRORS", "Customer", "ErrorBody", "Order", "Subscription", "ok"]


class OrderPage(msgspec.Struct):
    data: list[Order]
    next_cursor: str | None


class InventoryLevel(msgspec.Struct):
    price_id: str | None
    product_id: str | None
    test_mode: bool
    quantity_sold: int
    quantity_restocked: int
    quantity_net: int
    adjustment_count: int
    position: int


class InventoryLevels(msgspec.Struct):
    data: list[InventoryLevel]


class Adjustment(msgspec.Struct):
    adjustment_id: str
    position: int
    checkout_session_id: str
    line_item_id: str
    price_id: str | None
    product_id: str | None
    upc_code: str | None
    quantity_delta: int
    reason: str
    created_at: str | None
    test_mode: bool


class AdjustmentPage(msgspec.Struct):
    data: list[Adjustment]
    next_cursor: str | None


class FollowerStatuses(msgspec.Struct):
    data: list[FollowerStatus]


class EventList(msgspec.Struct):
    data: list[LoggedEvent]


class KindCounts(msgspec.Struct):
    examined: int
    known: int
    recorded: int
    missed: int
    skipped: int = 0  # listed by Flex but unusable (no id, an id no index holds, \u0000): never recorded


class ReconcileRun(msgspec.Struct):
    run_id: int
    trigger: str  # command | automatic
    started_at: str
    finished_at: str
    since: str
    outcome: str  # ok | failed
    error: str | None
    examined: int
    known: int
    recorded: int  # observations recorded: what the webhooks had not brought (drift)
    missed: int  # of those, money: a completed checkout, a succeeded payment or refund
    kinds: dict[str, KindCounts]
    first_position: int | None
    last_position: int | None
    skipped: int = 0


class ReconcileStatus(msgspec.Struct):
    runner: str  # running (some process runs the automatic reconcile) | stopped
    runs: int
    failures: int
    recorded: int
    missed: int
    last_success_at: str | None
    data: list[ReconcileRun]
    skipped: int = 0


def _error(description: str) -> ResponseSpec:
    return ResponseSpec(data_container=ErrorBody, description=description, generate_examples=False)


# Every error a read route can answer, in the one error shape.
ERRORS = {
    400: _error("A parameter is not valid: nothing was read."),
    401: _error("No valid API token (Authorization: Bearer ...)."),
    503: _error("The database is unavailable; retry (see Retry-After)."),
}
NOT_FOUND = {404: _error("Not known (yet: with min_position, see the Ledger-Projection-Fresh header).")}


def ok(body: type[msgspec.Struct], description: str, *, can_404: bool = False) -> dict[int, ResponseSpec]:
    """The responses of a read route: ``body`` on 200, and every error it can answer."""
    return {
        200: ResponseSpec(data_container=body, description=description, generate_examples=False),
        **ERRORS,
        **(NOT_FOUND if can_404 else {}),
    }
