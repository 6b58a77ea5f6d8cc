"""Admission of reads: a bounded number of read requests are worked on at once.

One event loop serves webhooks and reads alike, and a webhook's reply waits behind every callback
that became ready before it. With hundreds of reads in progress at once, a webhook's latency
grows toward Flex's timeout (measured: p99 90-200 ms with 500 concurrent reads, against 60-80 ms
with reads admitted a few at a time; bench/scale.py). So reads under ``/v1`` wait their turn
*before* any work is spent on them, in arrival order; webhooks, operations routes and
read-your-writes reads (``min_position``: they mostly wait on the checkpoint watcher, which costs
nothing) pass at once. The database pool behind the reads is no larger than the number admitted,
so an admitted read never queues for a connection either.
"""

from __future__ import annotations

import asyncio
from typing import Any

__all__ = ["ReadAdmission"]


class ReadAdmission:
    """ASGI middleware: at most ``slots`` plain ``/v1`` reads in progress at once."""

    def __init__(self, app: Any, slots: int) -> None:
        self.app = app
        self.slots = asyncio.Semaphore(slots)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if (
            scope["type"] == "http"
            and scope["path"].startswith("/v1/")
            and b"min_position" not in scope.get("query_string", b"")
        ):
            async with self.slots:
                await self.app(scope, receive, send)
            return
        await self.app(scope, receive, send)
