"""The operator console's pages: server-rendered HTML over the same read side as the API.

Every page but sign-in needs a session (``api/console/session.py``); every form carries the CSRF
token. Nothing here reads the database itself: the pages call the same functions as the read API
(``projections.documents``, ``projections.history``, ``reactors.status``, ...).
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from litestar import Request, get, post
from litestar.enums import RequestEncodingType
from litestar.params import Body, Parameter
from litestar.response import Redirect, Template

from api.auth import client_address
from api.console.session import SESSION_HOURS, new_session, session_expiry, signed_in_token
from api.params import checked
from api.state import AppState
from ledger.console_sessions import revoke
from ledger.db import connection
from ledger.errors import InvalidRequest, NotFound
from projections import documents, history
from projections.shapes import Order
from reactors import destinations as outbound
from reactors.fulfillment import failed_sessions, retry_failed
from reactors.reconcile import read_reconcile
from reactors.status import read_status

__all__ = ["CONSOLE_PAGES"]

Form = Annotated[dict[str, str], Body(media_type=RequestEncodingType.URL_ENCODED)]
PAYMENT_STATUSES = ("unpaid", "partially_paid", "paid", "partially_refunded", "refunded", "disputed", "canceled")
ORDER_STATUSES = ("open", "complete", "expired", "canceled", "paid")
PAGE = 25


def _page(name: str, request: Request[Any, Any, Any], **context: Any) -> Template:
    return Template(template_name=name, context={"path": request.url.path, **context})


@get("/login", opt={"public": True}, name="console-login")
async def login_form(request: Request[Any, Any, Any], error: str | None = None) -> Template:
    return _page("login.html", request, error=error)


@post("/login", opt={"public": True}, status_code=303)
async def sign_in(request: Request[Any, Any, Any], state: AppState, data: Form) -> Redirect | Template:
    address = client_address(request)
    state.auth_failures.check(address)  # too many failures from here: 429, this token unchecked
    token = signed_in_token(state.api_tokens, data.get("token", "").strip())
    if token is None:
        state.auth_failures.failed(address)
        return Template(
            template_name="login.html",
            context={"path": request.url.path, "error": "That is not one of this service's API tokens."},
            status_code=200,  # the form again, with why (a 4xx page would be a browser console error)
        )
    request.set_session(new_session(token))
    return Redirect("/console", status_code=303)


@post("/logout", status_code=303)
async def sign_out(request: Request[Any, Any, Any], state: AppState) -> Redirect:
    """Clears the cookie and revokes the session on the server: a copy of the cookie taken
    before stops working at once."""
    session = request.session
    if isinstance(session.get("sid"), str):
        await revoke(state.pool, session["sid"], session_expiry(session))
    request.clear_session()
    return Redirect("/console/login", status_code=303)


@get("/")
async def overview(request: Request[Any, Any, Any], state: AppState) -> Template:
    log = await state.read_log.summary()
    followers = await read_status(state.pool)
    reconcile = await read_reconcile(state.pool, 1)
    fulfillment = next((f for f in followers if f.name == "fulfillment"), None)
    return _page(
        "overview.html",
        request,
        log=log,
        rate=await state.read_log.recent_rate(60),
        followers=followers,
        fulfillment=fulfillment,
        reconcile=reconcile,
        session_hours=SESSION_HOURS,
    )


@get("/orders")
async def orders(
    request: Request[Any, Any, Any],
    state: AppState,
    q: Annotated[str | None, Parameter(max_length=255)] = None,
    status: str | None = None,
    payment_status: str | None = None,
    mode: str | None = None,
    cursor: Annotated[str | None, Parameter(max_length=300)] = None,
) -> Template:
    q = (q or "").strip() or None
    status = status if status in ORDER_STATUSES else None
    payment_status = payment_status if payment_status in PAYMENT_STATUSES else None
    test_mode = {"live": False, "test": True}.get(mode or "")

    async def page(*, customer_id: str | None = None, reference: str | None = None) -> tuple[list[Any], str | None]:
        return await documents.list_orders(
            state.pool,
            customer_id=customer_id,
            status=status,
            client_reference_id=reference,
            payment_status=payment_status,
            test_mode=test_mode,
            limit=PAGE,
            cursor=cursor,
        )

    found: list[Order] = []
    next_cursor = None
    searched_by = None
    try:
        checked("q", q)  # the read API's one rule for text: no control character, 255 at most
        if q is not None and q.startswith("fcs_"):
            searched_by = "checkout session id"
            order = await documents.get_order(state.pool, q)
            found = [order] if order is not None else []
        elif q is not None and "@" in q:
            searched_by = "email"
            for customer_id in await documents.customers_by_email(state.pool, q):
                found += (await page(customer_id=customer_id))[0]
        else:
            searched_by = "your order id (client_reference_id)" if q else None
            found, next_cursor = await page(reference=q)
    except InvalidRequest as exc:  # a search, or a cursor, this console did not make
        searched_by = f"nothing: {exc.message}"
    return _page(
        "orders.html",
        request,
        orders=found,
        next_cursor=next_cursor,
        q=q or "",
        status=status or "",
        payment_status=payment_status or "",
        mode=mode or "",
        searched_by=searched_by,
        order_statuses=ORDER_STATUSES,
        payment_statuses=PAYMENT_STATUSES,
    )


@get("/orders/{checkout_session_id:str}")
async def order(
    request: Request[Any, Any, Any],
    state: AppState,
    checkout_session_id: str,
    at: Annotated[int | None, Parameter(ge=0, le=2**53)] = None,
    step: Annotated[int | None, Parameter(ge=0, le=100_000)] = None,
) -> Template:
    checked("checkout_session_id", checkout_session_id)
    timeline = await history.order_timeline(state.pool, checkout_session_id)
    if timeline is None:
        raise NotFound(f"no order for checkout session {checkout_session_id!r}")
    positions = [e["position"] for e in timeline]
    if step is not None and positions:
        at = positions[min(step, len(positions) - 1)]
    if at is not None:
        shown = await history.order_as_of(state.pool, checkout_session_id, position=at)
        selected = max([i for i, p in enumerate(positions) if p <= at], default=-1)
    else:
        shown = await documents.get_order(state.pool, checkout_session_id)
        selected = len(positions) - 1
    for event in timeline:
        event["pretty_body"] = _pretty(event["raw_body"])
        event["pretty_headers"] = json.dumps(event["headers"], indent=2, sort_keys=True)
    return _page(
        "order.html",
        request,
        session_id=checkout_session_id,
        order=shown,
        timeline=timeline,
        at=at,
        selected=selected,
    )


def _pretty(raw: str) -> str:
    try:
        return json.dumps(json.loads(raw), indent=2, ensure_ascii=False)
    except ValueError:
        return raw


@get("/subscriptions/{subscription_id:str}")
async def subscription(request: Request[Any, Any, Any], state: AppState, subscription_id: str) -> Template:
    checked("subscription_id", subscription_id)
    found = await documents.get_subscription(state.pool, subscription_id)
    if found is None:
        raise NotFound(f"no subscription {subscription_id!r}")
    invoices, _ = await documents.list_invoices(
        state.pool,
        subscription_id=subscription_id,
        customer_id=None,
        status=None,
        test_mode=None,
        limit=100,
        cursor=None,
        renewals=state.settings.fulfill_renewals,
    )
    return _page("subscription.html", request, subscription=found, invoices=invoices)


@get("/fulfillment")
async def fulfillment(request: Request[Any, Any, Any], state: AppState, retried: str | None = None) -> Template:
    return _page("fulfillment.html", request, failed=await failed_sessions(state.pool), retried=retried)


@post("/fulfillment/retry", status_code=303)
async def retry(state: AppState, data: Form) -> Redirect:
    session_id = data.get("session_id", "").strip()
    if not session_id:
        raise InvalidRequest("name the session to retry")
    checked("session_id", session_id)  # as the read API checks ids: a 400 page, never the database's error
    done = await retry_failed(state.pool, [session_id])
    return Redirect(f"/console/fulfillment?retried={session_id if done else ''}", status_code=303)


@get("/quarantine")
async def quarantine(
    request: Request[Any, Any, Any], state: AppState, before: Annotated[int | None, Parameter(ge=1)] = None
) -> Template:
    rows = await state.read_log.quarantined(before=before, limit=PAGE)  # the read pool: never ingest's
    return _page("quarantine.html", request, rows=rows, next_before=rows[-1]["id"] if len(rows) == PAGE else None)


@get("/inventory")
async def inventory(
    request: Request[Any, Any, Any],
    state: AppState,
    mode: str | None = None,
    after: Annotated[int | None, Parameter(ge=0)] = None,
    level: Annotated[str | None, Parameter(max_length=600)] = None,
) -> Template:
    test_mode = mode == "test"
    level = level if level and "\x00" not in level else None
    price, _, product = (level or "").partition("\x1f")
    levels = await documents.inventory_levels(
        state.pool, test_mode=test_mode, after=(price, product) if level else None, limit=PAGE * 4
    )
    next_level = f"{levels[-1].price_id}\x1f{levels[-1].product_id}" if len(levels) == PAGE * 4 else None
    adjustments, next_cursor = await documents.list_adjustments(
        state.pool, after=after or 0, limit=50, test_mode=test_mode
    )
    return _page(
        "inventory.html",
        request,
        levels=levels,
        next_level=next_level,
        adjustments=adjustments,
        next_after=next_cursor,
        mode="test" if test_mode else "live",
    )


@get("/projections")
async def projections(request: Request[Any, Any, Any], state: AppState) -> Template:
    status = await read_reconcile(state.pool, 10)
    return _page(
        "projections.html", request, followers=await read_status(state.pool), reconcile=status, runs=status.data
    )


@get("/destinations")
async def destinations(request: Request[Any, Any, Any], state: AppState, retried: str | None = None) -> Template:
    async with connection(state.pool) as conn:
        listed = await outbound.list_all(conn)
        failed = {
            d.id: (await outbound.messages(conn, d.id, status="failed", limit=PAGE, cursor=None)).data
            for d in listed
            if d.failed
        }
    return _page("destinations.html", request, destinations=listed, failed=failed, retried=retried)


@post("/destinations/retry", status_code=303)
async def retry_message(state: AppState, data: Form) -> Redirect:
    destination_id = data.get("destination_id", "").strip()
    message_id = data.get("message_id", "").strip()
    if not destination_id:
        raise InvalidRequest("name the destination")
    checked("destination_id", destination_id)
    if message_id:
        checked("message_id", message_id)
    async with connection(state.pool) as conn:
        done = await outbound.retry_failed(conn, destination_id, [message_id] if message_id else None)
    return Redirect(f"/console/destinations?retried={len(done)}", status_code=303)


CONSOLE_PAGES = [
    login_form,
    sign_in,
    sign_out,
    overview,
    orders,
    order,
    subscription,
    fulfillment,
    retry,
    quarantine,
    inventory,
    projections,
    destinations,
    retry_message,
]
