"""The application factory: routes, lifespan (database, schema, group commit), errors."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
from litestar import Litestar, Request, Router
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import SwaggerRenderPlugin
from litestar.openapi.spec import Components, SecurityScheme
from litestar.static_files import create_static_files_router

import ledger
from api.admission import ReadAdmission, admit_unless_waiting
from api.auth import require_token
from api.console import TEMPLATE_CONFIG, console_router
from api.destination_routes import DESTINATION_ROUTES
from api.errors import EXCEPTION_HANDLERS
from api.events import list_events
from api.logs import RequestIdMiddleware
from api.metrics import Metrics
from api.openapi import finish as finish_openapi
from api.ops import OPS_ROUTES, ops_pool
from api.params import strict_query
from api.read_routes import READ_ROUTES
from api.reconcile_routes import RECONCILE_ROUTES
from api.state import AppState
from api.throttle import FailureLimiter
from api.webhooks import flex_webhook
from ledger.db import READ_SETTINGS, connection, create_pool
from ledger.embedded import database_url
from ledger.errors import ConfigError, DatabaseUnavailable
from ledger.group_commit import GroupCommitter
from ledger.log import EventLog
from ledger.settings import Settings
from projections.freshness import CheckpointWatcher
from projections.registry import install
from reactors.flex_client import clients_for
from reactors.workers import running_workers

__all__ = ["create_app"]


def _package_dir(name: str) -> Path:
    """Where an installed package's files are, without importing it."""
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None:
        raise RuntimeError(f"the {name} package is not installed")
    return Path(spec.origin).parent


DOCS_ASSETS = "/schema/assets"
docs_assets = create_static_files_router(
    path=DOCS_ASSETS,
    directories=[_package_dir("swagger_ui") / "static"],
    name="docs-assets",
    include_in_schema=False,
)

_log = logging.getLogger(__name__)
SCHEMA_RETRY_SECONDS = 2.0


async def before_read(request: Request[Any, Any, Any]) -> None:
    """Every ``/v1`` request: its path and parameters checked (a 400 before any work), then its
    turn with the other reads if its route does not wait for a position first."""
    await strict_query(request)
    await admit_unless_waiting(request)


async def _apply_schema_until_done(pool: asyncpg.Pool, auto_migrate: bool) -> None:
    """Readies the database (pending migration steps, per ``LEDGER_AUTO_MIGRATE``), retrying while
    it is unreachable."""
    while True:
        try:
            async with connection(pool) as conn:
                for line in await install(conn, auto_migrate=auto_migrate):
                    _log.warning("migrate: %s", line)
            return
        except DatabaseUnavailable as exc:
            _log.warning("database not reachable yet (%s); retrying in %.0fs", exc.message, SCHEMA_RETRY_SECONDS)
            await asyncio.sleep(SCHEMA_RETRY_SECONDS)


def create_app(settings: Settings, *, api_tokens: tuple[str, ...], workers: bool = True) -> RequestIdMiddleware:
    """The ASGI app. ``settings.database_url`` unset means the embedded PostgreSQL; ``workers``
    runs the projection runners and the fulfillment reactor in this process too."""

    metrics = Metrics()

    @contextlib.asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        async with database_url(settings.database_url, settings.data_dir) as dsn, _serving(app, dsn):
            yield

    @contextlib.asynccontextmanager
    async def _serving(app: Litestar, dsn: str) -> AsyncIterator[None]:
        # Bulkheads: ingest appends through connections no read can take; reads plan per call.
        ingest_pool = await create_pool(dsn, max_size=settings.ingest_pool_size, timeout=5, command_timeout=15)
        pool = await create_pool(
            dsn, max_size=settings.read_pool_size, timeout=5, command_timeout=15, server_settings=READ_SETTINGS
        )
        # /readyz and /metrics answer even when every read connection is taken by slow reads.
        ops = await ops_pool(dsn)
        checkpoints = CheckpointWatcher(dsn)
        schema_task = asyncio.create_task(_apply_schema_until_done(ingest_pool, settings.auto_migrate))

        async def watch_once_ready() -> None:
            """The watcher reads the checkpoints' table: it starts once the schema is there."""
            with contextlib.suppress(Exception):
                await asyncio.shield(schema_task)
            await checkpoints.run()

        watcher = asyncio.create_task(watch_once_ready(), name="checkpoint-watcher")
        try:
            # Up to 10 s for the schema; a database not reachable yet is waited for by the task.
            await asyncio.wait({schema_task}, timeout=10)
            if schema_task.done() and (failure := schema_task.exception()) is not None:
                if isinstance(failure, ConfigError):  # a newer database, or steps pending and not applied
                    _log.critical("%s", failure.message)
                raise failure
            log = EventLog(ingest_pool)
            async with contextlib.AsyncExitStack() as stack:
                if workers:
                    await stack.enter_async_context(
                        running_workers(
                            dsn,
                            settings,
                            watcher=checkpoints,
                            on_flex_call=metrics.flex_call,
                            on_delivery_attempt=metrics.delivery_attempt,
                        )
                    )
                committer = await stack.enter_async_context(GroupCommitter(log, on_batch=metrics.batch_size.observe))
                # The success page's sync waits for Flex: fewer, shorter tries than the workers', and
                # 10 s at most in all (a Retry-After beyond it is a 503 at once).
                flex_clients = clients_for(
                    settings, concurrency=8, attempts=2, deadline=min(10.0, settings.flex_api_deadline)
                )
                for client in flex_clients.values():
                    stack.push_async_callback(client.aclose)
                app.state.update(
                    pool=pool,
                    ops_log=EventLog(ops),
                    ingest_log=log,
                    read_log=EventLog(pool),
                    committer=committer,
                    checkpoints=checkpoints,
                    flex_clients=flex_clients,
                )
                yield
            schema_task.cancel()
            await asyncio.gather(schema_task, return_exceptions=True)
        finally:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
            await pool.close()
            await ops.close()
            await ingest_pool.close()

    v1 = Router(
        "/v1",
        route_handlers=[list_events, *READ_ROUTES, *RECONCILE_ROUTES, *DESTINATION_ROUTES],
        guards=[require_token],
        security=[{"bearer": []}],
        before_request=before_read,
    )
    app = Litestar(
        route_handlers=[
            flex_webhook,
            *OPS_ROUTES,
            v1,
            docs_assets,
            console_router(api_tokens, secure_cookie=settings.console_secure_cookie),
        ],
        template_config=TEMPLATE_CONFIG,
        lifespan=[lifespan],
        state=AppState(
            {
                "settings": settings,
                "api_tokens": api_tokens,
                "metrics": metrics,
                "auth_failures": FailureLimiter(settings.auth_max_failures, settings.auth_failure_window),
            }
        ),
        exception_handlers=EXCEPTION_HANDLERS,  # type: ignore[arg-type]
        request_max_body_size=settings.webhook_max_bytes + 1,
        openapi_config=OpenAPIConfig(
            title="flex-ledger",
            version=ledger.__version__,
            path="/schema",
            # Swagger UI's assets come from the service itself (swagger-ui-py's copy): no CDN.
            render_plugins=[
                SwaggerRenderPlugin(
                    js_url=f"{DOCS_ASSETS}/swagger-ui-bundle.js",
                    css_url=f"{DOCS_ASSETS}/swagger-ui.css",
                    standalone_preset_js_url=f"{DOCS_ASSETS}/swagger-ui-standalone-preset.js",
                    favicon=f"<link rel='icon' type='image/png' href='{DOCS_ASSETS}/favicon-32x32.png'>",
                )
            ],
            components=Components(
                security_schemes={"bearer": SecurityScheme(type="http", scheme="bearer", description="API token")}
            ),
        ),
        logging_config=None,  # logging is configured once, by the command (api/logs.py)
        debug=False,
    )
    finish_openapi(app.openapi_schema)
    # Request ids on every request, reads admitted a few at a time, then the framework.
    admission = ReadAdmission(app, slots=settings.read_pool_size)
    metrics.follow_reads(admission)
    return RequestIdMiddleware(admission)
