"""Routes about what Flex's API knows: the success page's sync, and the reconcile runs."""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Response, get, post
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import Parameter

from api import schemas
from api.admission import admit
from api.params import MinPosition, PathId
from api.read_routes import FRESHNESS_HEADER, POSITION_HEADER, fresh_headers
from api.schemas import ok
from api.state import AppState
from ledger.errors import DatabaseUnavailable, FlexUnavailable, NotFound
from reactors import sync as reactors_sync
from reactors.reconcile import read_reconcile

__all__ = ["RECONCILE_ROUTES"]


@post(
    "/orders/{checkout_session_id:str}/sync",
    operation_id="syncOrder",
    status_code=200,
    summary="Ask Flex for a session now and answer its order (for the success page)",
    description="Fetches the checkout session, its payment intents and its refunds from Flex's API, records "
    "what the log does not show yet as observations (as `ledger reconcile` does; a complete session is then "
    "fulfilled like any other), and answers the order as it then stands. 404 when Flex does not know the "
    "session; 503 with Retry-After when Flex cannot be reached.",
    tags=["orders"],
    opt={"admits_itself": True},
    responses={
        **ok(schemas.Order, "The order, with what Flex said applied", can_404=True),
        503: ResponseSpec(
            data_container=schemas.ErrorBody,
            description="Flex (or the database) cannot be reached now; retry (see Retry-After).",
            generate_examples=False,
        ),
    },
)
async def sync_order(state: AppState, checkout_session_id: PathId) -> Response[Any]:
    outcome = "error"
    try:
        # Waiting on Flex holds no read slot (api/admission.py); the database work after it takes one.
        synced = await reactors_sync.sync_order(
            checkout_session_id,
            clients=list(state.flex_clients.values()),
            log=state.ingest_log,
            pool=state.pool,
            checkpoints=state.checkpoints,
            before_database=admit,
        )
        outcome = "recorded" if synced.recorded else "known"
        headers = {POSITION_HEADER: str(synced.position)}
        if synced.fresh is not None:
            headers[FRESHNESS_HEADER] = "true" if synced.fresh else "false"
        return Response(synced.order, headers=headers)
    except NotFound:
        outcome = "not_found"
        raise
    except FlexUnavailable:
        outcome = "flex_unavailable"
        raise
    except DatabaseUnavailable:
        outcome = "unavailable"
        raise
    finally:
        state.metrics.syncs.labels(outcome).inc()


@get(
    "/reconcile",
    operation_id="getReconcileStatus",
    summary="Reconcile runs: the automatic runner, totals, and the most recent runs",
    tags=["operations"],
    responses=ok(schemas.ReconcileStatus, "The runner's state, totals, and the latest runs, newest first"),
)
async def get_reconcile(
    state: AppState, limit: Annotated[int, Parameter(ge=1, le=100)] = 20, min_position: MinPosition = None
) -> Response[Any]:
    headers = await fresh_headers(state, [], min_position)  # the runs' observations are in the log
    return Response(await read_reconcile(state.pool, limit), headers=headers)


RECONCILE_ROUTES = [sync_order, get_reconcile]
