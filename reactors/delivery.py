"""Outbound delivery: every destination follows the log and is sent its messages, at least once.

Two stages per destination, both in the one process holding the delivery lock:

1. **Deriving.** The destination is a follower of the log (``projections.follower.follow_once``
   with ``DestinationPolicy`` on ``DestinationStore``: its checkpoint is ``destinations.position``).
   A batch's messages (``reactors.messages.derive``) of the destination's types and mode are queued
   in ``destination_messages`` in the transaction that moves its checkpoint: a crash loses none
   and queues none twice. It derives no further than the projections the messages read have
   applied, and pauses while ``BACKLOG`` messages wait (lag grows; memory stays flat).
2. **Sending.** Due messages are leased (``messages_claim``), at most ``concurrency`` in flight per
   destination, and POSTed signed (Standard Webhooks) to the checked address
   (``reactors.outbound_guard``), never following a redirect. Any 2xx is delivered; ``410``
   disables the destination; anything else is retried on the schedule (``next_delay``). A process
   killed mid-attempt leaves a lease that the next worker clears when it starts (or that expires):
   the message is attempted again.

No database connection is held during an attempt, and each destination has its own tasks: a slow
receiver delays only its own messages.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import logging
import math
import time
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
from httpx_aiohttp import AiohttpTransport

from ledger.db import connection
from ledger.errors import DatabaseError, LedgerError
from ledger.settings import decode_secret
from ledger.signing import sign
from projections.apply import BatchResult
from projections.coordination import run_exclusively
from projections.follower import Checkpoint, CheckpointMoved, PostgresFollowerStore, follow_once
from projections.registry import DELIVERY, lock_id
from reactors.messages import PATTERNS, SOURCES, Message, derive, wanted
from reactors.outbound_guard import AddressRefused, resolve
from reactors.sql import reactor_queries as sql

__all__ = ["BACKLOG", "DeliveryWorker", "DestinationPolicy", "DestinationStore", "Outcome", "next_delay", "signature"]

_log = logging.getLogger(__name__)

BACKLOG = 10_000  # messages waiting for one destination before it derives no more
RETENTION = timedelta(days=7)  # delivered messages kept this long (a replay derives them again)
_PURGE_EVERY = 600.0
_RESPONSE_CAP = 4096  # bytes of a receiver's reply read (for the last error)
_USER_AGENT = "flex-ledger (outbound delivery)"


def next_delay(attempts_done: int, schedule: Sequence[float], retry_after: float | None = None) -> float | None:
    """Seconds until the next attempt after ``attempts_done`` failed ones, or ``None``: failed for
    good (the schedule is spent). ``Retry-After`` is honoured up to the schedule's largest delay."""
    if attempts_done >= len(schedule):
        return None
    delay = schedule[attempts_done]
    if retry_after is not None:
        delay = max(delay, min(retry_after, max(schedule)))
    return delay


def signature(keys: Sequence[bytes], message_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header: one ``v1,`` entry per key (two during a rotation)."""
    return " ".join("v1," + base64.b64encode(sign(key, message_id, str(timestamp), body)).decode() for key in keys)


class DestinationStore(PostgresFollowerStore):
    """``FollowerStore`` of one destination, on one connection: its checkpoint is
    ``destinations.position``; its head, the log's, no further than ``SOURCES`` have applied."""

    def __init__(self, conn: asyncpg.Connection, destination_id: str) -> None:
        super().__init__(conn)
        self.destination_id = destination_id

    async def checkpoint(self, name: str) -> Checkpoint:
        row = await self.conn.fetchrow(sql.destination_checkpoint, self.destination_id, list(SOURCES))
        if row is None:
            raise CheckpointMoved  # deleted meanwhile
        return Checkpoint(position=row["position"], generation=0, head=row["head"] or 0)

    async def advance(
        self, unit: Any, name: str, start: int, generation: int, end: int, applied: int, skipped: int
    ) -> bool:
        return await self.conn.fetchval(sql.destination_advance, self.destination_id, start, end) is not None

    async def record_failure(self, unit: Any, name: str, reason: str, position: int) -> None:
        await self.conn.execute(sql.destination_note_error, self.destination_id, f"at {position}: {reason}"[:500])


class DestinationPolicy:
    """A destination as a follower: a batch's messages of its types and mode, queued."""

    patterns = PATTERNS

    def __init__(
        self, destination_id: str, types: Sequence[str], mode: str, first_delay: float, *, renewals: bool = True
    ) -> None:
        self.name = f"destination {destination_id}"
        self.renewals = renewals
        self.destination_id = destination_id
        self.types = list(types)
        self.mode = mode
        self.first_delay = first_delay
        self.queued = 0

    def takes(self, message: Message) -> bool:
        if self.mode != "all" and message.test_mode != (self.mode == "test"):
            return False
        return wanted(message.type, self.types)

    async def apply(self, conn: asyncpg.Connection, rows: list[Any]) -> BatchResult:
        chosen = [m for m in await derive(conn, rows, renewals=self.renewals) if self.takes(m)]
        if chosen:
            await conn.execute(
                sql.messages_enqueue,
                self.destination_id,
                [m.message_id for m in chosen],
                [m.position for m in chosen],
                [m.type for m in chosen],
                [m.body for m in chosen],
                self.first_delay,
            )
        self.queued += len(chosen)
        return BatchResult(applied=len({m.position for m in chosen}))


class Outcome:
    """One attempt's result: the receiver's status (``None``: no answer), an error, Retry-After."""

    def __init__(self, status: int | None, error: str | None = None, retry_after: float | None = None) -> None:
        self.status = status
        self.error = error
        self.retry_after = retry_after

    @property
    def delivered(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


def _host_header(host: str, port: int, *, default: int) -> str:
    named = f"[{host}]" if ":" in host else host  # an IPv6 literal
    return named if port == default else f"{named}:{port}"


def _retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None  # an HTTP date, or nonsense: the schedule decides
    return max(seconds, 0.0) if math.isfinite(seconds) else None


class _Destination:
    """One destination's sending: its own tasks, its own concurrency."""

    def __init__(self, worker: DeliveryWorker, destination_id: str) -> None:
        self.worker = worker
        self.id = destination_id
        self.wake = asyncio.Event()
        self.in_flight: set[asyncio.Task[None]] = set()
        self.delivered: list[tuple[str, int]] = []  # answered 2xx, recorded together by the send loop
        # claimed ahead (up to ``concurrency`` more), so that a finished attempt's slot is taken at once
        self.ready: collections.deque[asyncpg.Record] = collections.deque()
        self.gone = False  # the receiver answered 410: nothing more is attempted by this sender
        self.task = asyncio.create_task(self._send_loop(), name=f"delivery-{destination_id}")

    async def _send_loop(self) -> None:
        worker = self.worker
        lease = worker.timeout + 30
        quiet = False
        while True:
            try:
                room = 2 * worker.concurrency - len(self.in_flight) - len(self.ready)
                # a round records what was delivered and claims in batches (a quarter of the room at
                # least), not one round trip per finished attempt; when quiet, it records at once
                claimed: list[asyncpg.Record] = []
                if (
                    room >= max(1, worker.concurrency // 4)
                    or len(self.delivered) >= worker.concurrency
                    or (quiet and self.delivered)
                ):
                    claimed = await self._round(max(room, 0), lease)
                    self.ready.extend(claimed)
                self._start()
                if claimed and len(claimed) == room:
                    continue  # more may be due: claim again at once
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the database: wait and go on
                _log.warning("delivery: %s: %s", self.id, exc)
            self.wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), worker.poll_interval)
            quiet = not self.wake.is_set()

    async def _round(self, room: int, lease: float) -> list[asyncpg.Record]:
        """Records the attempts answered 2xx since the last round and claims up to ``room`` due
        messages, in one round trip. A process that dies before it leaves them leased: they are
        sent again (at least once)."""
        done, self.delivered = self.delivered, []
        try:
            async with connection(self.worker.pool) as conn:
                return list(
                    await conn.fetch(
                        sql.messages_claim, self.id, room, lease, [m for m, _ in done], [s for _, s in done]
                    )
                )
        except BaseException:
            self.delivered = done + self.delivered
            raise

    async def _flush(self) -> None:
        """Records the attempts answered 2xx since the last round, claiming nothing."""
        if self.delivered:
            await self._round(0, 0)

    async def _leave(self) -> None:
        """When the sender stops: records what was delivered, and unleases what it claimed ahead
        and will not attempt, so that it is due at once (when the destination is enabled again)."""
        await self._flush()
        ahead = [r["message_id"] for r in self.ready]
        self.ready.clear()
        if ahead:
            async with connection(self.worker.pool) as conn:
                await conn.execute(sql.messages_release, self.id, ahead)

    def _start(self) -> None:
        """Attempts what was claimed, up to ``concurrency`` in flight."""
        while not self.gone and self.ready and len(self.in_flight) < self.worker.concurrency:
            row = self.ready.popleft()
            task = asyncio.create_task(self._attempt(row))
            self.in_flight.add(task)
            task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self.in_flight.discard(task)
        self._start()  # the next claimed message takes the slot at once
        self.wake.set()

    async def _attempt(self, row: asyncpg.Record) -> None:
        """One attempt of a leased message, signed with the secrets read when it was claimed."""
        worker = self.worker
        message_id, body = row["message_id"], bytes(row["body"])
        try:
            keys = [decode_secret(row["secret"])]
            if row["previous_secret"]:
                keys.append(decode_secret(row["previous_secret"]))
            started = time.perf_counter()
            outcome = await worker.send(row["url"], keys, message_id, body)
            worker.observe(row["type"], outcome, time.perf_counter() - started)
            if outcome.delivered and outcome.status is not None:
                self.delivered.append((message_id, outcome.status))
                if self.gone:  # its send loop has stopped: nothing else would record it
                    await self._flush()
                return
            async with connection(worker.pool) as conn:
                await self._record(conn, row, outcome)
        except asyncio.CancelledError:
            raise
        except Exception:  # the lease expires and the message is attempted again
            _log.exception("delivery: %s: %s: could not record the attempt", self.id, message_id)

    async def _record(self, conn: asyncpg.Connection, row: asyncpg.Record, outcome: Outcome) -> None:
        message_id = row["message_id"]
        error = outcome.error or f"the receiver answered {outcome.status}"
        async with conn.transaction():
            if outcome.status == 410:  # Gone: the receiver asks us to stop
                await conn.execute(sql.destination_set_state, self.id, "disabled_by_receiver")
                self.gone = True  # nothing claimed ahead is attempted; the worker stops this sender
                delay: float | None = 0.0  # kept, due when enabled again
                _log.warning("delivery: %s answered 410 Gone: disabled", self.id)
            else:
                delay = next_delay(row["attempts"] + 1, self.worker.schedule, outcome.retry_after)
            await conn.execute(sql.message_retry, self.id, message_id, outcome.status, error[:500], delay)
            await conn.execute(sql.destination_note_error, self.id, f"{message_id}: {error}"[:500])
        if delay is None:
            _log.warning(
                "delivery: %s: %s failed after %d attempts: %s", self.id, message_id, row["attempts"] + 1, error
            )


class DeliveryWorker:
    """Runs every enabled destination: one active worker across processes (advisory lock)."""

    def __init__(
        self,
        dsn: str,
        pool: asyncpg.Pool,
        wake: asyncio.Event,
        *,
        schedule: Sequence[float],
        timeout: float = 15.0,
        concurrency: int = 8,
        allow_private: bool = False,
        poll_interval: float = 1.0,
        standby_interval: float = 2.0,
        batch_size: int = 500,
        on_attempt: Callable[[str, Outcome, float], None] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        fulfill_renewals: bool = True,
    ) -> None:
        self.dsn = dsn
        self.pool = pool
        self.wake = wake
        self.schedule = tuple(schedule)
        self.timeout = timeout
        self.concurrency = concurrency
        self.allow_private = allow_private
        self.poll_interval = poll_interval
        self.standby_interval = standby_interval
        self.batch_size = batch_size
        self.on_attempt = on_attempt
        self.fulfill_renewals = fulfill_renewals  # what an invoice's message says of its fulfillment
        self.active = False
        self._transport = transport
        self._client: httpx.AsyncClient | None = None
        self._destinations: dict[str, _Destination] = {}

    async def run(self) -> None:
        await run_exclusively(self.dsn, DELIVERY, lock_id(DELIVERY), self, self._run, self.standby_interval)

    @contextlib.asynccontextmanager
    async def sending(self) -> AsyncIterator[None]:
        """The HTTP client attempts go through (``send``), open for the context."""
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=64)
        self._client = httpx.AsyncClient(
            timeout=self.timeout,
            follow_redirects=False,
            # aiohttp under httpx's API: a quarter of httpcore's CPU per POST (the bench's live mode)
            transport=self._transport or AiohttpTransport(limits=limits),
            limits=limits,
            headers={"user-agent": _USER_AGENT},
        )
        try:
            yield
        finally:
            await self._client.aclose()
            self._client = None

    async def _run(self, conn: asyncpg.Connection) -> None:
        async with self.sending():
            await conn.execute(sql.leases_clear)  # attempts a dead process left in flight: due again
            try:
                await self._deliver(conn)
            finally:
                await self._stop_senders()

    async def _deliver(self, conn: asyncpg.Connection) -> None:
        purged_at = 0.0
        while True:
            self.wake.clear()
            busy = await self._derive_all(conn)
            if time.monotonic() - purged_at > _PURGE_EVERY:
                await conn.execute(sql.messages_purge, datetime.now(UTC) - RETENTION, 10_000)
                purged_at = time.monotonic()
            if not busy:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wake.wait(), self.poll_interval)

    async def _stop_senders(self) -> None:
        for d in self._destinations.values():
            d.task.cancel()
            for t in list(d.in_flight):
                t.cancel()
        tasks = [t for d in self._destinations.values() for t in (d.task, *d.in_flight)]
        await asyncio.gather(*tasks, return_exceptions=True)
        for d in self._destinations.values():
            with contextlib.suppress(Exception):  # what was answered 2xx: else it is sent again
                await d._flush()
        self._destinations.clear()

    async def _derive_all(self, conn: asyncpg.Connection) -> bool:
        """One batch for every enabled destination; starts and stops their senders. Returns whether
        some destination is still behind."""
        rows = await conn.fetch(sql.destinations_all, None)
        enabled = {r["destination_id"]: r for r in rows if r["state"] == "enabled"}
        for destination_id in set(self._destinations) - set(enabled):
            await self._drop(destination_id)
        behind = False
        for destination_id, r in enabled.items():
            sender = self._destinations.get(destination_id)
            if sender is not None and sender.gone:  # enabled again before this round saw it disabled
                await self._drop(destination_id)
                sender = None
            if sender is None:
                sender = self._destinations[destination_id] = _Destination(self, destination_id)
            if r["retrying"] >= BACKLOG:
                continue  # its receiver is behind: derive no more until it catches up
            policy = DestinationPolicy(
                destination_id, r["types"], r["mode"], self.schedule[0], renewals=self.fulfill_renewals
            )
            try:
                moved = await follow_once(DestinationStore(conn, destination_id), policy, self.batch_size)
            except CheckpointMoved:
                continue  # deleted or replayed meanwhile: next round
            except LedgerError as exc:
                if isinstance(exc, DatabaseError):
                    raise
                _log.warning("delivery: %s: %s", destination_id, exc)
                continue
            if policy.queued:
                sender.wake.set()
            behind = behind or moved >= self.batch_size
        return behind

    async def _drop(self, destination_id: str) -> None:
        """Stops a destination's sender; its attempts in flight finish and are recorded."""
        stopped = self._destinations.pop(destination_id)
        stopped.gone = True
        stopped.task.cancel()
        with contextlib.suppress(Exception):
            await stopped._leave()

    async def send(self, url: str, keys: Sequence[bytes], message_id: str, body: bytes) -> Outcome:
        """One attempt: the address checked (after DNS), the message signed and POSTed to it."""
        assert self._client is not None
        try:
            target = await resolve(url, allow_private=self.allow_private)
        except AddressRefused as exc:
            return Outcome(None, exc.message)
        timestamp = int(time.time())
        headers = {
            "content-type": "application/json",
            "webhook-id": message_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": signature(keys, message_id, timestamp, body),
            "host": _host_header(target.host, target.port, default=443 if url.startswith("https") else 80),
        }
        pinned = httpx.URL(url).copy_with(host=target.address)
        extensions = {"sni_hostname": target.host} if pinned.scheme == "https" else {}
        try:
            async with (
                asyncio.timeout(self.timeout),  # the whole attempt: connect, send, the answer read
                self._client.stream("POST", pinned, content=body, headers=headers, extensions=extensions) as response,
            ):
                seen = b""
                async for chunk in response.aiter_raw():
                    seen += chunk
                    if len(seen) >= _RESPONSE_CAP:
                        break
        except (TimeoutError, httpx.HTTPError) as exc:
            # The transport's own error says what happened (a refused connection, a certificate for
            # another name); its httpx class may call any connection failure a timeout.
            cause = exc.__cause__ if isinstance(exc, httpx.HTTPError) and exc.__cause__ is not None else exc
            if isinstance(cause, TimeoutError | httpx.TimeoutException):
                return Outcome(None, f"no answer within {self.timeout:g}s")
            return Outcome(None, f"{type(cause).__name__}: {cause}"[:300])
        status = response.status_code
        if 200 <= status < 300:
            return Outcome(status)
        detail = seen[:200].decode("utf-8", "replace").strip()
        error = f"the receiver answered {status}" + (f": {detail}" if detail else "")
        if 300 <= status < 400:
            error = f"the receiver answered {status} (redirects are not followed)"
        return Outcome(status, error, _retry_after(response.headers.get("retry-after")))

    def observe(self, message_type: str, outcome: Outcome, seconds: float) -> None:
        if self.on_attempt is not None:
            self.on_attempt(message_type, outcome, seconds)
