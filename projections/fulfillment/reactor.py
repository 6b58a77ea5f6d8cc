"""The fulfillment reactor: line items from Flex, exactly-once inventory adjustments.

Not a projection: it has side effects (calls to Flex), so it is never part of ``ledger rebuild``.
It has its own checkpoint and one queue row per completed session.

* Intake: reads the log after its checkpoint; every ``checkout.session.completed`` whose
  session is ``complete`` queues its session (a second completion or a duplicate does nothing);
  the checkpoint moves by compare-and-set in the same transaction.
* Work: due sessions are fetched concurrently (bounded), each on its own schedule. For each
  fetched session, one transaction appends ``ledger.line_items.fetched`` and one
  ``ledger.inventory.adjusted`` per line item (their event ids make them exactly-once) and marks
  the session fulfilled. A crash anywhere before that commit means the session is fetched again;
  nothing is recorded twice.
* A transient failure (network, timeout, 429, 5xx) retries that session later with exponential
  backoff and jitter; a permanent failure (400/401/403/404/422), or too many transient ones,
  appends ``ledger.fulfillment.failed`` and parks the session until ``ledger fulfill retry``.
* Without ``FLEX_API_KEY`` sessions are queued and wait as pending.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from datetime import UTC, datetime

import asyncpg

from ledger.db import UNAVAILABLE
from ledger.log import append_with
from projections.apply import decode_rows, queries
from projections.base import like_patterns
from projections.flex import as_str, resource
from projections.fulfillment.events import failed_event, fetched_events, retry_requested_event
from projections.fulfillment.flex_client import FlexApiError, FlexClient, PermanentFlexError
from projections.runner import CheckpointMoved, run_exclusively

__all__ = ["NAME", "FulfillmentReactor", "intake_once", "requeue"]

_log = logging.getLogger(__name__)

NAME = "fulfillment"
_COMPLETED = "checkout.session.completed"


async def intake_once(conn: asyncpg.Connection, batch_size: int = 1000) -> int:
    """Queues the completed sessions of one batch after the checkpoint. Returns how far it moved."""
    state = await conn.fetchrow(queries.state_get, NAME)
    head = state["head"]
    start = state["position"]
    if start >= head:
        return 0
    end = min(head, start + batch_size)
    records = await conn.fetch(queries.read_batch, start, end, like_patterns([_COMPLETED]))
    rows, _ = decode_rows(records)
    sessions: dict[str, int] = {}
    for row in rows:
        if row.event_type != _COMPLETED:
            continue
        session = resource(row.payload, "checkout_session", "checkout_session_id")
        session_id = as_str(session.get("checkout_session_id")) if session else None
        if session_id and session and session.get("status", "complete") == "complete":
            sessions.setdefault(session_id, row.position)
    async with conn.transaction():
        if sessions:
            await conn.execute(queries.queue_enqueue, list(sessions), list(sessions.values()))
        moved = await conn.fetch(
            queries.checkpoint_advance,
            NAME,
            start,
            state["generation"],
            end,
            len(sessions),
            (end - start) - len(sessions),
        )
        if not moved:
            raise CheckpointMoved
    return int(end - start)


async def requeue(conn: asyncpg.Connection, session_ids: list[str] | None) -> list[tuple[str, int]]:
    """``ledger fulfill retry``: failed sessions back to pending, each with a logged request."""
    now = datetime.now(UTC)
    async with conn.transaction():
        rows = await conn.fetch(queries.queue_requeue, session_ids)
        if rows:
            await append_with(
                conn, [retry_requested_event(r["checkout_session_id"], r["generation"], now) for r in rows]
            )
    return [(r["checkout_session_id"], r["generation"]) for r in rows]


class FulfillmentReactor:
    def __init__(
        self,
        dsn: str,
        pool: asyncpg.Pool,
        client: FlexClient | None,
        wake: asyncio.Event,
        *,
        concurrency: int = 32,
        max_attempts: int = 8,
        backoff_base: float = 2.0,
        backoff_cap: float = 600.0,
        poll_interval: float = 1.0,
        standby_interval: float = 2.0,
        quiet_period: float = 0.05,
    ) -> None:
        self.dsn = dsn
        self.pool = pool
        self.quiet_period = quiet_period
        self.client = client
        self.wake = wake
        self.concurrency = concurrency
        self.max_attempts = max_attempts
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.poll_interval = poll_interval
        self.standby_interval = standby_interval
        self.active = False
        self._in_flight: set[str] = set()

    async def run(self) -> None:
        """Runs until cancelled; one active reactor across processes (session advisory lock)."""
        if self.client is None:
            _log.warning("fulfillment: FLEX_API_KEY is not set; completed sessions wait as pending")
        await run_exclusively(self.dsn, NAME, self, self._loop, self.standby_interval)

    async def _loop(self, conn: asyncpg.Connection) -> None:
        workers: set[asyncio.Task[None]] = set()
        try:
            while True:
                self.wake.clear()
                try:
                    while await intake_once(conn):
                        pass
                except CheckpointMoved:
                    continue
                if self.client is not None:
                    free = self.concurrency - len(self._in_flight)
                    if free > 0:
                        for row in await conn.fetch(queries.queue_due, free + len(self._in_flight)):
                            session_id = row["checkout_session_id"]
                            if session_id in self._in_flight or len(self._in_flight) >= self.concurrency:
                                continue
                            self._in_flight.add(session_id)
                            task = asyncio.create_task(self._fulfill(session_id))
                            workers.add(task)
                            task.add_done_callback(workers.discard)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wake.wait(), self.poll_interval)
                await asyncio.sleep(self.quiet_period)  # gather a few commits' worth, as the runners do
        finally:
            for task in workers:
                task.cancel()
            await asyncio.gather(*workers, return_exceptions=True)

    def _backoff(self, attempts: int) -> float:
        return float(random.uniform(0.5, 1.0) * min(self.backoff_cap, self.backoff_base * 2**attempts))

    async def _fulfill(self, session_id: str) -> None:
        assert self.client is not None
        try:
            async with self.pool.acquire() as conn:
                # the due list may be a moment old: a worker may have just finished this session
                if await conn.fetchval(queries.queue_status, session_id) != "pending":
                    return
            try:
                raw, items = await self.client.line_items(session_id)
            except FlexApiError as exc:
                await self._record_failure(session_id, exc)
                return
            now = datetime.now(UTC)
            async with self.pool.acquire() as conn, conn.transaction():
                row = await conn.fetchrow(queries.queue_lock, session_id)
                if row is None or row["status"] != "pending":
                    return  # fulfilled or parked meanwhile: nothing to record
                await append_with(conn, fetched_events(session_id, raw, items, now))
                await conn.execute(queries.queue_fulfilled, session_id)
            _log.info("fulfillment: %s fulfilled with %d line items", session_id, len(items))
        except asyncio.CancelledError:
            raise
        except (*UNAVAILABLE, asyncpg.PostgresError) as exc:
            _log.warning("fulfillment: %s: could not record the outcome (%s); will retry", session_id, exc)
        except Exception:
            _log.exception("fulfillment: %s: unexpected failure; will retry", session_id)
            with contextlib.suppress(Exception):
                async with self.pool.acquire() as conn:
                    await conn.execute(queries.queue_retry_later, session_id, "unexpected error", 30.0)
        finally:
            self._in_flight.discard(session_id)
            self.wake.set()

    async def _record_failure(self, session_id: str, exc: FlexApiError) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(queries.queue_lock, session_id)
            if row is None or row["status"] != "pending":
                return
            attempts = row["attempts"] + 1
            if isinstance(exc, PermanentFlexError) or attempts >= self.max_attempts:
                reason = (
                    exc.message
                    if isinstance(exc, PermanentFlexError)
                    else f"gave up after {attempts} attempts: {exc.message}"
                )
                await append_with(
                    conn, [failed_event(session_id, row["generation"], reason, exc.status, datetime.now(UTC))]
                )
                await conn.execute(queries.queue_failed, session_id, reason)
                _log.warning("fulfillment: %s failed: %s", session_id, reason)
            else:
                delay = max(self._backoff(attempts), exc.retry_after or 0.0)
                await conn.execute(queries.queue_retry_later, session_id, exc.message, delay)
                _log.info("fulfillment: %s: %s; retrying in %.1fs", session_id, exc.message, delay)
