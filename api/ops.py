"""The operations routes (no token): ``/healthz``, ``/readyz`` and ``/metrics``, served by
``ledger serve`` beside everything else and by ``ledger work`` on ``LEDGER_METRICS_PORT``
(``create_ops_app``), so a split deployment's workers (the reactor, the Flex client) are seen too.

They read through a pool of their own (two connections), so they answer while every read
connection is busy with slow reads.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import asyncpg
from litestar import Litestar, Response, get

from api.errors import EXCEPTION_HANDLERS, error_response
from api.metrics import CONTENT_TYPE_LATEST, Metrics
from api.schemas import READINESS
from api.state import AppState
from ledger.db import READ_SETTINGS, SCHEMA_VERSION, connection, create_pool
from ledger.errors import DatabaseError
from ledger.log import EventLog
from reactors import destinations
from reactors.destinations import Destination
from reactors.reconcile import ReconcileStatus, read_reconcile
from reactors.status import FollowerStatus, read_status

__all__ = ["OPS_ROUTES", "create_ops_app", "ops_pool"]


async def ops_pool(dsn: str) -> asyncpg.Pool:
    return await create_pool(dsn, max_size=2, timeout=5, command_timeout=15, server_settings=READ_SETTINGS)


@get("/healthz", operation_id="getHealth", summary="The process is alive", tags=["operations"])
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@get(
    "/readyz",
    operation_id="getReadiness",
    summary="Database reachable and schema current",
    tags=["operations"],
    responses=READINESS,
)
async def readyz(state: AppState) -> object:
    try:
        async with asyncio.timeout(2):
            version = await state.ops_log.schema_version()
    except (TimeoutError, DatabaseError):
        return error_response(503, "not_ready", "the database is unreachable", {"Retry-After": "5"})
    if version != SCHEMA_VERSION:
        return error_response(503, "not_ready", f"schema version is {version}, expected {SCHEMA_VERSION}")
    return {"status": "ready", "schema_version": version}


@get(
    "/metrics",
    operation_id="getMetrics",
    summary="Prometheus metrics",
    tags=["operations"],
    media_type=CONTENT_TYPE_LATEST,
)
async def prometheus_metrics(state: AppState) -> Response[bytes]:
    followers: list[FollowerStatus] | None
    reconcile: ReconcileStatus | None
    outbound: list[Destination] | None
    try:
        async with asyncio.timeout(5):
            followers = await read_status(state.ops_log.pool)
            reconcile = await read_reconcile(state.ops_log.pool, 1)
            async with connection(state.ops_log.pool) as conn:
                outbound = await destinations.list_all(conn)
    except (TimeoutError, DatabaseError):
        followers = reconcile = outbound = None  # what this process knows, without the database
    return Response(state.metrics.render(followers, reconcile, outbound), media_type=CONTENT_TYPE_LATEST)


OPS_ROUTES = [healthz, readyz, prometheus_metrics]


def create_ops_app(dsn: str, metrics: Metrics) -> Litestar:
    """``/healthz``, ``/readyz`` and ``/metrics`` alone (``ledger work``)."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        pool = await ops_pool(dsn)
        app.state.ops_log = EventLog(pool)
        try:
            yield
        finally:
            await pool.close()

    return Litestar(
        route_handlers=OPS_ROUTES,
        lifespan=[lifespan],
        state=AppState({"metrics": metrics}),
        exception_handlers=EXCEPTION_HANDLERS,  # type: ignore[arg-type]
        openapi_config=None,
        logging_config=None,
        debug=False,
    )
