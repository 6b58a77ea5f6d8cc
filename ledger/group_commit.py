"""Group commit: concurrent appends gathered into one transaction (one fsync) per batch.

Callers ``await committer.append(event)`` and get their own result only once the batch
holding it has committed. A batch is whatever has queued up while the previous one was in the
database, topped up for at most ``max_wait`` seconds, and never more than ``max_batch`` events.
If the database rejects a batch because of one event's data, the events are retried one by one
so only that event fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from ledger.errors import DatabaseUnavailable, DataRefused, UnusableEvent
from ledger.log import AppendResult, EventLog, NewEvent

__all__ = ["GroupCommitter"]

_log = logging.getLogger(__name__)

_Item = tuple[NewEvent, "asyncio.Future[AppendResult]"]


class GroupCommitter:
    def __init__(
        self,
        log: EventLog,
        *,
        max_batch: int = 256,
        max_wait: float = 0.0,
        timeout: float = 10.0,
        writers: int = 1,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        self.log = log
        self.max_batch = max_batch
        self.max_wait = max_wait
        self.timeout = timeout
        self.writers = writers
        self.on_batch = on_batch
        self._queue: asyncio.Queue[_Item] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False

    async def __aenter__(self) -> GroupCommitter:
        self._tasks = [asyncio.create_task(self._run(), name=f"group-commit-{i}") for i in range(self.writers)]
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Stops taking new events, lets queued and in-flight batches finish, then stops."""
        self._closing = True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._queue.join(), self.timeout)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    async def append(self, event: NewEvent) -> AppendResult:
        """Appends one event as part of the next batch; raises ``DatabaseUnavailable`` on timeout."""
        if self._closing or not self._tasks:
            raise DatabaseUnavailable("the ledger is shutting down; retry later")
        future: asyncio.Future[AppendResult] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((event, future))
        try:
            return await asyncio.wait_for(future, self.timeout)
        except TimeoutError:
            raise DatabaseUnavailable("the database did not answer in time; retry later") from None

    async def _next_batch(self) -> list[_Item]:
        batch = [await self._queue.get()]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.max_wait
        while len(batch) < self.max_batch:
            try:
                batch.append(self._queue.get_nowait())
                continue
            except asyncio.QueueEmpty:
                pass
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), remaining))
            except TimeoutError:
                break
        return batch

    async def _run(self) -> None:
        while True:
            batch = await self._next_batch()
            try:
                live = [(event, fut) for event, fut in batch if not fut.done()]
                if live:
                    await self._commit(live)
            except Exception:  # never let the writer die; every caller gets an answer
                _log.exception("group commit: unexpected failure")
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(DatabaseUnavailable("the ledger failed to append; retry later"))
            finally:
                for _ in batch:
                    self._queue.task_done()

    async def _commit(self, items: list[_Item]) -> None:
        try:
            results = await self.log.append([event for event, _ in items])
        except DatabaseUnavailable as exc:
            for _, fut in items:
                if not fut.done():
                    fut.set_exception(exc)
            return
        except DataRefused:
            if len(items) == 1:
                _reject(items[0][1])
                return
            for item in items:  # find the event the database would not take
                await self._commit([item])
            return
        if self.on_batch is not None:
            self.on_batch(len(items))
        for (_, fut), result in zip(items, results, strict=True):
            if not fut.done():
                fut.set_result(result)


def _reject(fut: asyncio.Future[AppendResult]) -> None:
    if not fut.done():
        fut.set_exception(UnusableEvent("the database cannot store this event's JSON"))
