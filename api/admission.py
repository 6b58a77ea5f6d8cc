"""Admission of reads: a bounded number of read requests are worked on at once.

One event loop serves webhooks and reads alike, and a webhook's reply waits behind every callback
that became ready before it. With hundreds of reads in progress at once, a webhook's latency
grows toward Flex's timeout (measured: p99 90-200 ms with 500 concurrent reads, against 60-80 ms
with reads admitted a few at a time; bench/scale.py). So reads under ``/v1`` wait their turn
*before* any work is spent on them, in arrival order; webhooks and operations routes pass at once.
The database pool behind the reads is no larger than the number admitted, so an admitted read
never queues for a connection either.

The success page's sync (``POST /v1/orders/{id}/sync``) waits on Flex first, holding no slot either,
and takes its turn for the database work that follows. A read-your-writes read
(``?min_position=N``) first waits for the projections on the checkpoint
watcher, which costs nothing and must not hold a slot (hundreds may wait at once); it takes its
slot when that wait is over (``admit``), like any read, and holds it until its reply is sent.
Let through without one, 200 such reads at once on a 300,000-event log under 200 webhooks/s took
6.2 s (p50), only 280 of 600 read fresh (the workers starved) and webhook p99 was 5.5 s; taking
their turn: 5.0 s, 600 of 600 fresh, webhook p99 1.8 s (bench/freshness.py, inventory included).
"""

from __future__ import annotations

import asyncio
import contextvars
from typing import Any

from litestar import Request

__all__ = ["ReadAdmission", "admit", "admit_unless_waiting"]


class _Deferred:
    """The turn of one read-your-writes read: taken by ``admit``, given back when the reply is sent."""

    def __init__(self, admission: ReadAdmission) -> None:
        self.admission = admission
        self.held = False

    async def take(self) -> None:
        if not self.held:
            await self.admission.take_turn()
            self.held = True

    def give_back(self) -> None:
        if self.held:
            self.held = False
            self.admission.end_turn()


_deferred: contextvars.ContextVar[_Deferred | None] = contextvars.ContextVar("ledger_deferred_admission", default=None)


async def admit() -> None:
    """Takes this request's turn now: called by a read-your-writes read once its wait is over.
    Outside a deferred request (a plain read already has its turn; anything else needs none) it
    does nothing."""
    deferred = _deferred.get()
    if deferred is not None:
        await deferred.take()


async def admit_unless_waiting(request: Request[Any, Any, Any]) -> None:
    """A deferred request to a route that neither takes ``min_position`` nor waits on something
    else first (``opt={"admits_itself": True}``: the success page's sync, which waits on Flex)
    takes its turn now (before the handler), like any read."""
    handler = request.route_handler
    if "min_position" not in handler.parsed_fn_signature.parameters and not handler.opt.get("admits_itself"):
        await admit()


class ReadAdmission:
    """ASGI middleware: at most ``slots`` ``/v1`` reads worked on at once; ``queued`` and
    ``working`` say how many wait for a turn and have one (``/metrics``)."""

    def __init__(self, app: Any, slots: int) -> None:
        self.app = app
        self.slots = asyncio.Semaphore(slots)
        self.queued = 0
        self.working = 0

    async def take_turn(self) -> None:
        self.queued += 1
        try:
            await self.slots.acquire()
        finally:
            self.queued -= 1
        self.working += 1

    def end_turn(self) -> None:
        self.working -= 1
        self.slots.release()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/v1/"):
            await self.app(scope, receive, send)
            return
        # Reads take their turn here; a read-your-writes read, or any request that is not a GET
        # (the sync, which waits on Flex first), takes it later (``admit``) or before its handler.
        if b"min_position" not in scope.get("query_string", b"") and scope.get("method") in ("GET", "HEAD"):
            await self.take_turn()
            try:
                await self.app(scope, receive, send)
            finally:
                self.end_turn()
            return
        deferred = _Deferred(self)
        token = _deferred.set(deferred)
        try:
            await self.app(scope, receive, send)
        finally:
            _deferred.reset(token)
            deferred.give_back()
