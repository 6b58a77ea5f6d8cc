"""Read routes under ``/v1``: orders, customers, subscriptions, invoices and projection status.

Every route accepts ``?min_position=N`` (the position a webhook reply returned, or another reply's
``Ledger-Position``) and waits, up to a few seconds, until the projections it reads from have
applied it; every reply carries ``Ledger-Position``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import msgspec
from litestar import MediaType, Response, get
from litestar.params import Parameter

from api import schemas
from api.admission import admit
from api.errors import error_response
from api.params import Cursor, MinPosition, OrdersCursor, PathId, Position, Text, checked
from api.schemas import ok
from api.state import AppState
from ledger.errors import NotFound
from projections import documents, history
from projections.registry import PROJECTIONS
from reactors.status import read_status

__all__ = ["FRESHNESS_HEADER", "POSITION_HEADER", "READ_ROUTES", "fresh_headers"]

FRESHNESS_HEADER = "Ledger-Projection-Fresh"
POSITION_HEADER = "Ledger-Position"


def _found_or_404(doc: msgspec.Struct | None, message: str, headers: dict[str, str]) -> Response[Any]:
    """The document, or a 404 that still says whether the projection had caught up (if not, retry).

    A document's own ``position`` was applied by the projection it comes from (its row moved with
    that checkpoint): ``Ledger-Position`` is at least that, so a token taken from this reply always
    covers what the reply showed, even when the checkpoint's notification is still on its way."""
    if doc is None:
        return error_response(404, NotFound.code, message, headers)
    shown = getattr(doc, "position", None)
    if isinstance(shown, int) and POSITION_HEADER in headers:
        headers[POSITION_HEADER] = str(max(int(headers[POSITION_HEADER]), shown))
    return Response(doc, headers=headers)


async def fresh_headers(state: AppState, names: list[str], min_position: int | None) -> dict[str, str]:
    """Waits (no database round trips: the process's checkpoint watcher) until ``names`` (none: the
    log itself) have applied ``min_position``; a position beyond the log head is answered at once,
    as not fresh. Then the read takes its turn with the other reads (api/admission.py).

    Called before the route reads anything, it also gives ``Ledger-Position``: a position every
    projection in ``names`` had applied before the read began, so the reply is at least that
    fresh; passed as ``min_position`` to any other route, it gets a reply at least as fresh."""
    checked("min_position", min_position)
    headers: dict[str, str] = {}
    if min_position is not None:
        reached = await state.checkpoints.wait(names, min_position)
        await admit()
        headers[FRESHNESS_HEADER] = "true" if reached else "false"
    headers[POSITION_HEADER] = str(state.checkpoints.applied(names))
    return headers


PaymentStatus = Literal["unpaid", "partially_paid", "paid", "partially_refunded", "refunded", "disputed", "canceled"]


@get(
    "/orders/{checkout_session_id:str}",
    operation_id="getOrder",
    summary="One order (checkout session)",
    tags=["orders"],
    responses=ok(schemas.Order, "The order", can_404=True),
)
async def get_order(
    state: AppState,
    checkout_session_id: PathId,
    min_position: MinPosition = None,
    as_of_position: Annotated[
        Position,
        Parameter(description="the order exactly as it stood after this log position, folded from the log"),
    ] = None,
    as_of: Annotated[
        datetime | None,
        Parameter(
            description="the order as it stood at this time (ISO-8601): after the last position recorded by then"
        ),
    ] = None,
) -> Response[Any]:
    checked("as_of_position", as_of_position)
    headers = await fresh_headers(state, ["orders"], min_position)
    if as_of_position is None and as_of is None:
        doc = await documents.get_order(state.pool, checkout_session_id)
    else:  # both given: as of whichever comes first
        if as_of is not None and as_of.tzinfo is None:
            as_of = as_of.replace(tzinfo=UTC)
        doc = await history.order_as_of(state.pool, checkout_session_id, position=as_of_position, moment=as_of)
    return _found_or_404(doc, f"no order for checkout session {checkout_session_id!r}", headers)


@get(
    "/orders/{checkout_session_id:str}/events",
    operation_id="listOrderEvents",
    summary="Every log event that touched the order, oldest first",
    tags=["orders"],
    responses=ok(
        schemas.EventList, "The order's events: webhooks, observations, line items, adjustments", can_404=True
    ),
)
async def get_order_events(
    state: AppState, checkout_session_id: PathId, min_position: MinPosition = None
) -> Response[Any]:
    headers = await fresh_headers(state, ["orders"], min_position)
    events = await history.order_events(state.pool, checkout_session_id)
    if events is None:
        return error_response(404, NotFound.code, f"no order for checkout session {checkout_session_id!r}", headers)
    return Response({"data": events}, headers=headers)


@get(
    "/orders",
    operation_id="listOrders",
    summary="Orders, newest first",
    tags=["orders"],
    responses=ok(schemas.OrderPage, "A page of orders"),
)
async def list_orders(
    state: AppState,
    customer_id: Text = None,
    status: Text = None,
    client_reference_id: Text = None,
    payment_status: PaymentStatus | None = None,
    test_mode: bool | None = None,
    limit: Annotated[int, Parameter(ge=1, le=100)] = 20,
    cursor: OrdersCursor = None,
    min_position: MinPosition = None,
) -> Response[Any]:
    for name, value in (("customer_id", customer_id), ("status", status), ("client_reference_id", client_reference_id)):
        checked(name, value)
    headers = await fresh_headers(state, ["orders"], min_position)
    data, next_cursor = await documents.list_orders(
        state.pool,
        customer_id=customer_id,
        status=status,
        client_reference_id=client_reference_id,
        payment_status=payment_status,
        test_mode=test_mode,
        limit=limit,
        cursor=cursor,
    )
    return Response({"data": data, "next_cursor": next_cursor}, headers=headers)


@get(
    "/customers/{customer_id:str}",
    operation_id="getCustomer",
    summary="One customer",
    tags=["customers"],
    responses=ok(schemas.Customer, "The customer", can_404=True),
)
async def get_customer(state: AppState, customer_id: PathId, min_position: MinPosition = None) -> Response[Any]:
    headers = await fresh_headers(state, ["customers"], min_position)
    return _found_or_404(await documents.get_customer(state.pool, customer_id), f"no customer {customer_id!r}", headers)


@get(
    "/subscriptions/{subscription_id:str}",
    operation_id="getSubscription",
    summary="One subscription",
    tags=["subscriptions"],
    responses=ok(schemas.Subscription, "The subscription", can_404=True),
)
async def get_subscription(state: AppState, subscription_id: PathId, min_position: MinPosition = None) -> Response[Any]:
    headers = await fresh_headers(state, ["subscriptions"], min_position)
    return _found_or_404(
        await documents.get_subscription(state.pool, subscription_id), f"no subscription {subscription_id!r}", headers
    )


InvoiceStatus = Literal["draft", "open", "paid", "void", "uncollectible"]


@get(
    "/invoices/{invoice_id:str}",
    operation_id="getInvoice",
    summary="One invoice",
    tags=["subscriptions"],
    responses=ok(schemas.Invoice, "The invoice", can_404=True),
)
async def get_invoice(state: AppState, invoice_id: PathId, min_position: MinPosition = None) -> Response[Any]:
    headers = await fresh_headers(state, ["invoices"], min_position)
    doc = await documents.get_invoice(state.pool, invoice_id, renewals=state.settings.fulfill_renewals)
    return _found_or_404(doc, f"no invoice {invoice_id!r}", headers)


@get(
    "/invoices",
    operation_id="listInvoices",
    summary="Invoices, newest first",
    tags=["subscriptions"],
    responses=ok(schemas.InvoicePage, "A page of invoices"),
)
async def list_invoices(
    state: AppState,
    subscription_id: Text = None,
    customer_id: Text = None,
    status: InvoiceStatus | None = None,
    test_mode: bool | None = None,
    limit: Annotated[int, Parameter(ge=1, le=100)] = 20,
    cursor: OrdersCursor = None,
    min_position: MinPosition = None,
) -> Response[Any]:
    for name, value in (("subscription_id", subscription_id), ("customer_id", customer_id)):
        checked(name, value)
    headers = await fresh_headers(state, ["invoices"], min_position)
    data, next_cursor = await documents.list_invoices(
        state.pool,
        subscription_id=subscription_id,
        customer_id=customer_id,
        status=status,
        test_mode=test_mode,
        limit=limit,
        cursor=cursor,
        renewals=state.settings.fulfill_renewals,
    )
    return Response({"data": data, "next_cursor": next_cursor}, headers=headers)


@get(
    "/projections",
    operation_id="listProjections",
    summary="Every projection's position, lag and state",
    tags=["operations"],
    responses=ok(schemas.FollowerStatuses, "Every projection and the fulfillment reactor"),
)
async def list_projections(state: AppState, min_position: MinPosition = None) -> Response[Any]:
    headers = await fresh_headers(state, list(PROJECTIONS), min_position)
    data = await read_status(state.pool)
    return Response({"data": data}, headers=headers)


@get(
    "/inventory",
    operation_id="getInventory",
    summary="Quantity sold, restocked and net per price and product, for one mode",
    tags=["inventory"],
    responses=ok(schemas.InventoryLevels, "One row per (price, product) of the mode"),
)
async def get_inventory(
    state: AppState,
    test_mode: Annotated[bool, Parameter(description="test-mode stock instead of live")] = False,
    min_position: MinPosition = None,
) -> Response[Any]:
    headers = await fresh_headers(state, ["inventory"], min_position)
    body = await documents.inventory_levels_body(state.pool, test_mode=test_mode)
    return Response(body, media_type=MediaType.JSON, headers=headers)


@get(
    "/inventory/adjustments",
    operation_id="listInventoryAdjustments",
    summary="The inventory adjustments feed, oldest first",
    tags=["inventory"],
    responses=ok(schemas.AdjustmentPage, "A page of the feed"),
)
async def list_adjustments(
    state: AppState,
    after: Position = None,
    limit: Annotated[int, Parameter(ge=1, le=1000)] = 100,
    cursor: Cursor = None,
    test_mode: Annotated[
        bool | None, Parameter(description="only test-mode (true) or live (false) adjustments")
    ] = None,
    min_position: MinPosition = None,
) -> Response[Any]:
    from api.events import parse_cursor

    checked("after", after)
    headers = await fresh_headers(state, ["inventory"], min_position)
    data, next_cursor = await documents.list_adjustments(
        state.pool, after=parse_cursor(cursor, after), limit=limit, test_mode=test_mode
    )
    return Response({"data": data, "next_cursor": next_cursor}, headers=headers)


READ_ROUTES = [
    get_order,
    get_order_events,
    list_orders,
    get_customer,
    get_subscription,
    get_invoice,
    list_invoices,
    list_projections,
    get_inventory,
    list_adjustments,
]
