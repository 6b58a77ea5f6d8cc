"""The background workers of a process: every projection runner, the fulfillment reactor, the
automatic reconcile (``LEDGER_RECONCILE_INTERVAL``) and outbound delivery to the destinations.

``ledger serve`` runs them next to the HTTP server (the default); ``ledger serve --no-workers``
leaves them to ``ledger work`` processes. Any number of processes may run them: each projection,
the reactor, reconcile and delivery is active in exactly one at a time (advisory locks); the others
stand by.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

from ledger.db import SERVER_SETTINGS, create_pool
from ledger.settings import Settings
from projections.freshness import CheckpointWatcher
from projections.registry import PROJECTIONS
from projections.runner import ProjectionRunner
from projections.upgrade import upgrade_projections
from reactors.delivery import DeliveryWorker, Outcome
from reactors.flex_client import clients_for
from reactors.fulfillment import FulfillmentReactor
from reactors.messages import SOURCES
from reactors.reconcile import AutomaticReconcile

__all__ = ["running_workers"]


@contextlib.asynccontextmanager
async def running_workers(
    dsn: str,
    settings: Settings,
    *,
    watcher: CheckpointWatcher | None = None,
    on_flex_call: Callable[[int | None, float], None] | None = None,
    on_delivery_attempt: Callable[[str, Outcome, float], None] | None = None,
) -> AsyncIterator[list[ProjectionRunner]]:
    """Runs the workers until the context ends. ``watcher`` is the process's own when it has one
    (``ledger serve``); otherwise the workers follow the log with one of their own."""
    # The workers' own connection budget: they never take the connections of ingest or reads.
    pool = await create_pool(dsn, max_size=settings.worker_pool_size, timeout=5, command_timeout=15)
    # Delivery's own: a destination's attempts never wait for the reactor's connections, nor it for theirs.
    # Its commits do not wait for the disk: a database crash can only lose the last moment's records
    # of attempts (sent again: delivery is at least once), never a message (queued with the checkpoint).
    delivery_pool = await create_pool(
        dsn,
        max_size=settings.worker_pool_size,
        timeout=5,
        command_timeout=15,
        server_settings={**SERVER_SETTINGS, "synchronous_commit": "off"},
    )
    tasks: list[asyncio.Task[None]] = []
    if watcher is None:
        watcher = CheckpointWatcher(dsn)
        tasks.append(asyncio.create_task(watcher.run(), name="checkpoint-watcher"))
    runners = [
        ProjectionRunner(dsn, p, watcher.subscribe(), quiet_period=settings.runner_batch_delay)
        for p in PROJECTIONS.values()
    ]
    clients = clients_for(settings, on_call=on_flex_call)
    reactor = FulfillmentReactor(
        dsn,
        pool,
        clients.get("live"),
        watcher.subscribe(),
        test_client=clients.get("test"),
        restock_on_refund=settings.restock_on_refund,
        fulfill_renewals=settings.fulfill_renewals,
        concurrency=settings.fulfillment_concurrency,
        max_attempts=settings.fulfillment_max_attempts,
        backoff_base=settings.fulfillment_retry_base,
    )
    tasks += [asyncio.create_task(r.run(), name=f"projection-{r.projection.name}") for r in runners]
    tasks.append(asyncio.create_task(upgrade_projections(dsn), name="projection-upgrade"))
    tasks.append(asyncio.create_task(reactor.run(), name="fulfillment"))
    delivery = DeliveryWorker(
        dsn,
        delivery_pool,
        watcher.subscribe(after=SOURCES),  # messages read these read models: derived once they apply
        schedule=settings.delivery_schedule,
        timeout=settings.delivery_timeout,
        concurrency=settings.delivery_concurrency,
        allow_private=settings.delivery_allow_private,
        on_attempt=on_delivery_attempt,
        fulfill_renewals=settings.fulfill_renewals,
    )
    tasks.append(asyncio.create_task(delivery.run(), name="delivery"))
    if settings.reconcile_interval > 0:
        reconciler = AutomaticReconcile(
            dsn,
            list(clients.values()),
            interval=settings.reconcile_interval,
            window=settings.reconcile_window,
            max_pages=settings.reconcile_max_pages,
        )
        tasks.append(asyncio.create_task(reconciler.run(), name="reconcile"))
    try:
        yield runners
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for client in clients.values():
            await client.aclose()
        await pool.close()
        await delivery_pool.close()
