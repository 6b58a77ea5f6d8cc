"""The fulfillment reactor: line items from Flex, exactly-once inventory adjustments, for every
completed checkout and (``reactors.renewals``) every paid renewal of a subscription.

Not a projection: it has side effects (calls to Flex), so it is never part of ``ledger rebuild``.
It has its own checkpoint and one queue row per completed session.

* Intake: reads the log after its checkpoint; every ``checkout.session.completed`` whose
  session is ``complete``, and every observation of a session Flex's API shows ``complete``
  (``projections.observations``), queues its session (a second completion or a duplicate does nothing);
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
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import asyncpg
import msgspec

from ledger.db import connection
from ledger.errors import DatabaseError, DataRefused
from ledger.log import append_with
from projections.apply import BatchResult, isolating
from projections.base import LogRow, like_patterns
from projections.coordination import run_exclusively
from projections.fields import as_bool, as_str, resource
from projections.follower import follow, follow_once
from projections.invoices import PAID_EVENTS
from projections.ledger_events import failed_event, fetched_events, retry_requested_event
from projections.observations import KINDS, OBSERVED
from projections.orders import REFUND_EVENTS, refunds_in
from projections.registry import FULFILLMENT, lock_id
from reactors.flex_client import FlexApiError, FlexClient, PermanentFlexError
from reactors.renewals import decide, paid_invoices, renew
from reactors.restock import RestockRefused, restock
from reactors.sql import reactor_queries as sql

__all__ = [
    "FulfillmentReactor",
    "NextStep",
    "QueueCounts",
    "failed_sessions",
    "intake_once",
    "next_step",
    "queue_counts",
    "queued_sessions",
    "requeue",
    "retry_failed",
]

_log = logging.getLogger(__name__)

_COMPLETED = "checkout.session.completed"
# What queues a session: its completion, or Flex's API seen saying it is complete (reconcile, sync).
_COMPLETING = (_COMPLETED, KINDS["checkout_session"].snapshot_type)


class IntakePolicy:
    """The reactor's follower of the log: queues each completed session once, each paid invoice of a
    subscription once (``LEDGER_FULFILL_RENEWALS``; ``reactors.renewals``) and, when refunds
    restock (``LEDGER_RESTOCK_ON_REFUND=full``), notes the payment intents of succeeded refunds."""

    name = FULFILLMENT

    def __init__(self, *, restock_on_refund: bool = False, fulfill_renewals: bool = True) -> None:
        self.restock_on_refund = restock_on_refund
        self.fulfill_renewals = fulfill_renewals
        self.patterns = like_patterns(
            [
                _COMPLETED,
                OBSERVED,
                *(REFUND_EVENTS if restock_on_refund else ()),
                *(PAID_EVENTS if fulfill_renewals else ()),
            ]
        )

    async def apply(self, conn: asyncpg.Connection, rows: list[LogRow]) -> BatchResult:
        """The batch in one go; a session the queue cannot hold (an id written by an earlier
        release that no index takes) fails alone, recorded, and the rest are queued."""
        return await isolating(conn, self.name, rows, lambda batch: self._queue(conn, batch))

    async def _queue(self, conn: asyncpg.Connection, rows: Sequence[LogRow]) -> BatchResult:
        sessions: dict[str, tuple[int, bool]] = {}
        refunded: dict[str, int] = {}
        for row in rows:
            if row.event_type in _COMPLETING:
                session = resource(row.payload, "checkout_session", "checkout_session_id")
                session_id = as_str(session.get("checkout_session_id")) if session else None
                # a completion says so unless its object says otherwise; an observation must say it
                default = "complete" if row.event_type == _COMPLETED else None
                if session_id and session and session.get("status", default) == "complete":
                    test_mode = as_bool(session.get("test_mode", row.payload.get("test_mode"))) or False
                    sessions.setdefault(session_id, (row.position, test_mode))
            elif self.restock_on_refund and row.event_type.startswith(REFUND_EVENTS):
                for refund in refunds_in(row):
                    if refund["status"] == "succeeded" and refund["payment_intent_id"]:
                        refunded[refund["payment_intent_id"]] = row.position
        if sessions:
            positions, modes = zip(*sessions.values(), strict=True)
            await conn.execute(sql.queue_enqueue, list(sessions), list(positions), list(modes))
        if refunded:
            await conn.execute(sql.refund_checks_note, list(refunded), list(refunded.values()))
        renewals = paid_invoices(rows) if self.fulfill_renewals else {}
        if renewals:
            positions, modes, subscriptions = zip(*renewals.values(), strict=True)
            await conn.execute(
                sql.queue_enqueue_renewals, list(renewals), list(positions), list(modes), list(subscriptions)
            )
        return BatchResult(applied=len(sessions) + len(refunded) + len(renewals))


_INTAKE = IntakePolicy()


async def intake_once(conn: asyncpg.Connection, batch_size: int = 1000) -> int:
    """Queues the completed sessions of one batch after the checkpoint. Returns how far it moved."""
    return await follow_once(conn, _INTAKE, batch_size)


async def requeue(conn: asyncpg.Connection, session_ids: list[str] | None) -> list[tuple[str, int]]:
    """``ledger fulfill retry``: failed sessions back to pending, each with a logged request."""
    now = datetime.now(UTC)
    async with conn.transaction():
        rows = await conn.fetch(sql.queue_requeue, session_ids)
        if rows:
            await append_with(
                conn,
                [retry_requested_event(r["checkout_session_id"], r["generation"], now, kind=r["kind"]) for r in rows],
            )
    return [(r["checkout_session_id"], r["generation"]) for r in rows]


async def queued_sessions(conn: asyncpg.Connection, session_ids: list[str]) -> dict[str, str]:
    """The queue status (pending, fulfilled, failed) of each of ``session_ids`` that is queued."""
    return {r["checkout_session_id"]: r["status"] for r in await conn.fetch(sql.queue_get, session_ids)}


async def failed_sessions(pool: asyncpg.Pool, limit: int = 100) -> list[dict[str, Any]]:
    """The sessions whose fulfillment failed, most recent first, with why (the console's list)."""
    async with connection(pool) as conn:
        return [dict(r) for r in await conn.fetch(sql.queue_failed_list, limit)]


async def retry_failed(pool: asyncpg.Pool, session_ids: list[str]) -> list[tuple[str, int]]:
    """``requeue`` on a connection of ``pool`` (the console's Retry button)."""
    async with connection(pool) as conn:
        return await requeue(conn, session_ids)


class QueueCounts(msgspec.Struct, kw_only=True):
    pending: int
    failed: int
    fulfilled: int


async def queue_counts(conn: asyncpg.Connection) -> QueueCounts:
    row = await conn.fetchrow(sql.queue_counts)
    return QueueCounts(pending=row["pending"], failed=row["failed"], fulfilled=row["fulfilled"] or 0)


class FulfillmentReactor:
    def __init__(
        self,
        dsn: str,
        pool: asyncpg.Pool,
        client: FlexClient | None,
        wake: asyncio.Event,
        *,
        test_client: FlexClient | None = None,
        restock_on_refund: bool = False,
        fulfill_renewals: bool = True,
        concurrency: int = 32,
        max_attempts: int = 8,
        backoff_base: float = 2.0,
        backoff_cap: float = 600.0,
        poll_interval: float = 1.0,
        standby_interval: float = 2.0,
        quiet_period: float = 0.05,
        batch_size: int = 1000,
    ) -> None:
        self.dsn = dsn
        self.batch_size = batch_size
        self.pool = pool
        self.quiet_period = quiet_period
        # The client for each mode (test_mode: bool); a session of a mode without one waits as pending.
        self.clients = {False: client, True: test_client or client}
        self.wake = wake
        self.intake = IntakePolicy(restock_on_refund=restock_on_refund, fulfill_renewals=fulfill_renewals)
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
        if self.clients[False] is None:
            _log.warning("fulfillment: FLEX_API_KEY is not set; completed live sessions wait as pending")
        if self.clients[True] is None:
            _log.warning(
                "fulfillment: neither FLEX_TEST_API_KEY nor FLEX_API_KEY is set; test sessions wait as pending"
            )
        await run_exclusively(self.dsn, FULFILLMENT, lock_id(FULFILLMENT), self, self._follow, self.standby_interval)

    async def _follow(self, conn: asyncpg.Connection) -> None:
        workers: set[asyncio.Task[None]] = set()

        async def dispatch(conn: asyncpg.Connection) -> None:
            """Once the intake is at the head: fully refunded orders restocked, then due sessions
            to workers, up to ``concurrency``."""
            if self.intake.restock_on_refund:
                await self._restock_refunded(conn)
            free = self.concurrency - len(self._in_flight)
            served = [mode for mode, client in self.clients.items() if client is not None]
            if not served or free <= 0:
                return
            only = served[0] if len(served) == 1 else None
            for row in await conn.fetch(sql.queue_due, free + len(self._in_flight), only):
                key = row["checkout_session_id"]
                if key in self._in_flight or len(self._in_flight) >= self.concurrency:
                    continue
                self._in_flight.add(key)
                task = asyncio.create_task(self._fulfill(row))
                workers.add(task)
                task.add_done_callback(workers.discard)

        try:
            await follow(
                conn,
                self.intake,
                self.wake,
                batch_size=self.batch_size,
                poll_interval=self.poll_interval,
                quiet_period=self.quiet_period,  # gathers a few commits' worth, as the runners do
                when_caught_up=dispatch,
            )
        finally:
            for task in workers:
                task.cancel()
            await asyncio.gather(*workers, return_exceptions=True)

    async def _restock_refunded(self, conn: asyncpg.Connection, batch: int = 50) -> None:
        """The noted refunds the orders projection has applied: a fully refunded, fulfilled order
        is restocked in full, once (the request id is the same for every note of the order)."""
        for note in await conn.fetch(sql.refund_checks_ready, batch):
            session_id = note["checkout_session_id"]
            if session_id and note["payment_status"] == "refunded" and note["fulfillment"] == "fulfilled":
                try:
                    done = await restock(conn, session_id, None, request_id="refund", note="fully refunded")
                except RestockRefused as exc:
                    _log.info("fulfillment: no restock on refund: %s", exc)
                else:
                    if done:
                        _log.info("fulfillment: %s fully refunded: restocked %d line items", session_id, len(done))
            await conn.execute(sql.refund_checks_done, note["payment_intent_id"], note["position"])

    def _backoff(self, attempts: int) -> float:
        return float(random.uniform(0.5, 1.0) * min(self.backoff_cap, self.backoff_base * 2**attempts))

    async def _fulfill(self, due: asyncpg.Record) -> None:
        """One due queue row: a checkout's line items, or a renewal (decided first), fetched and
        recorded once; a Flex failure retried or parked by ``next_step``."""
        key, test_mode, kind = due["checkout_session_id"], due["test_mode"], due["kind"]
        client = self.clients[test_mode]
        assert client is not None
        try:
            async with self.pool.acquire() as conn:
                # the due list may be a moment old: a worker may have just finished this one
                if await conn.fetchval(sql.queue_status, key) != "pending":
                    return
                decision = await decide(conn, key, due["completed_position"]) if kind == "renewal" else None
                if decision is not None and decision.renewal is None:
                    await conn.execute(sql.queue_wait, key, decision.reason, decision.again)
                    return
                if decision is not None and not decision.renewal:
                    await conn.execute(sql.queue_skipped, key, decision.reason)
                    return
            try:
                if decision is None:
                    recorded = await self._checkout(client, key, test_mode)
                elif decision.subscription_id is None:
                    raise PermanentFlexError("the renewal invoice names no subscription whose items to fulfill")
                else:
                    recorded = await renew(self.pool, client, key, decision.subscription_id, test_mode=test_mode)
            except FlexApiError as exc:
                await self._record_failure(key, exc)
                return
            except DataRefused as exc:  # the reply cannot be stored: fetching it again will not help
                reason = f"Flex's answer cannot be recorded ({exc.message})"
                await self._record_failure(key, PermanentFlexError(reason, status=200))
                return
            if recorded:
                _log.info("fulfillment: %s %s fulfilled", "renewal" if decision else "session", key)
        except asyncio.CancelledError:
            raise
        except DatabaseError as exc:
            # counted as an attempt and retried later, never at once: no loop against Flex
            _log.warning("fulfillment: %s: could not record the outcome (%s); will retry", key, exc)
            with contextlib.suppress(Exception):
                async with self.pool.acquire() as conn:
                    await conn.execute(sql.queue_retry_later, key, f"could not record: {exc}"[:500], 30.0)
        except Exception:
            _log.exception("fulfillment: %s: unexpected failure; will retry", key)
            with contextlib.suppress(Exception):
                async with self.pool.acquire() as conn:
                    await conn.execute(sql.queue_retry_later, key, "unexpected error", 30.0)
        finally:
            self._in_flight.discard(key)
            self.wake.set()

    async def _checkout(self, client: FlexClient, session_id: str, test_mode: bool) -> bool:
        """A completed session's line items from Flex, recorded once with one adjustment each.
        Returns whether this call recorded them (``False``: fulfilled or parked meanwhile)."""
        raw, items = await client.line_items(session_id)
        now = datetime.now(UTC)
        async with connection(self.pool) as conn, conn.transaction():
            row = await conn.fetchrow(sql.queue_lock, session_id)
            if row is None or row["status"] != "pending":
                return False
            await append_with(conn, fetched_events(session_id, raw, items, now, test_mode=test_mode))
            await conn.execute(sql.queue_fulfilled, session_id)
        return True

    async def _record_failure(self, session_id: str, exc: FlexApiError) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(sql.queue_lock, session_id)
            if row is None or row["status"] != "pending":
                return
            step = next_step(
                attempts=row["attempts"] + 1,
                failure=exc,
                max_attempts=self.max_attempts,
                backoff=self._backoff,
                cap=self.backoff_cap,
            )
            if step.park:
                failed = failed_event(
                    session_id, row["generation"], step.reason, exc.status, datetime.now(UTC), kind=row["kind"]
                )
                await append_with(conn, [failed])
                await conn.execute(sql.queue_failed, session_id, step.reason)
                _log.warning("fulfillment: %s failed: %s", session_id, step.reason)
            else:
                await conn.execute(sql.queue_retry_later, session_id, step.reason, step.delay)
                _log.info("fulfillment: %s: %s; retrying in %.1fs", session_id, exc.message, step.delay)


class NextStep(msgspec.Struct, frozen=True, kw_only=True):
    """What happens to a session after a failed attempt: parked as failed (with why), or tried
    again after ``delay`` seconds."""

    park: bool
    reason: str
    delay: float = 0.0


def next_step(
    *, attempts: int, failure: FlexApiError, max_attempts: int, backoff: Callable[[int], float], cap: float
) -> NextStep:
    """The reactor's retry policy, pure: a permanent failure, or the ``max_attempts``-th transient
    one, parks the session; otherwise it is tried again after its backoff, or after Flex's
    ``Retry-After`` when longer, but never after more than ``cap`` seconds (an absurd Retry-After
    never parks a session for years). The reason never holds what the log cannot store."""
    if isinstance(failure, PermanentFlexError) or attempts >= max_attempts:
        reason = (
            failure.message
            if isinstance(failure, PermanentFlexError)
            else f"gave up after {attempts} attempts: {failure.message}"
        )
        return NextStep(park=True, reason=_storable(reason))
    delay = min(max(backoff(attempts), failure.retry_after or 0.0), cap)
    return NextStep(park=False, reason=_storable(failure.message), delay=delay)


def _storable(text: str) -> str:
    return text.replace("\x00", "\ufffd")[:2000]
