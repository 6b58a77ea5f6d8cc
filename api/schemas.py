"""The read API's documents and errors as types, for the OpenAPI schema (``responses=`` of each
route). The routes build the same documents (``projections/documents.py``); the fuzzer run by
``tests/e2e/test_openapi.py`` checks every reply against these."""

from __future__ import annotations

import msgspec
from litestar.openapi.datastructures import ResponseSpec

from api.errors import ErrorBody
from ledger.log import LoggedEvent
from projections.shapes import Adjustment, Customer, InventoryLevel, Invoice, Order, Subscription
from reactors.reconcile import ReconcileStatus
from reactors.status import FollowerStatus

__all__ = [
    "ERRORS",
    "READINESS",
    "Customer",
    "ErrorBody",
    "Invoice",
    "Order",
    "ReconcileStatus",
    "Subscription",
    "ok",
]


class OrderPage(msgspec.Struct):
    data: list[Order]
    next_cursor: str | None


class InvoicePage(msgspec.Struct):
    data: list[Invoice]
    next_cursor: str | None


class InventoryLevels(msgspec.Struct):
    data: list[InventoryLevel]


class AdjustmentPage(msgspec.Struct):
    data: list[Adjustment]
    next_cursor: str | None


class FollowerStatuses(msgspec.Struct):
    data: list[FollowerStatus]


class EventList(msgspec.Struct):
    data: list[LoggedEvent]


def _error(description: str) -> ResponseSpec:
    return ResponseSpec(data_container=ErrorBody, description=description, generate_examples=False)


# Every error a read route can answer, in the one error shape.
ERRORS = {
    400: _error("A parameter is not valid: nothing was read."),
    401: _error("No valid API token (Authorization: Bearer ...)."),
    503: _error("The database is unavailable; retry (see Retry-After)."),
}
NOT_FOUND = {404: _error("Not known (yet: with min_position, see the Ledger-Projection-Fresh header).")}


class Readiness(msgspec.Struct):
    status: str  # "ready"
    schema_version: int


# /readyz: ready, or not (an orchestrator takes the process out of rotation on 503).
READINESS = {
    200: ResponseSpec(
        data_container=Readiness,
        description="The database answers and its schema is this release's.",
        generate_examples=False,
    ),
    503: _error("Not ready: the database is unreachable (Retry-After), or its schema is not this release's."),
}


def ok(body: type[msgspec.Struct], description: str, *, can_404: bool = False) -> dict[int, ResponseSpec]:
    """The responses of a read route: ``body`` on 200, and every error it can answer."""
    return {
        200: ResponseSpec(data_container=body, description=description, generate_examples=False),
        **ERRORS,
        **(NOT_FOUND if can_404 else {}),
    }
