"""One watcher per process follows the log head and every projection's checkpoint.

It wakes the process's projection runners and reactor when the log grows (``subscribe``), and
serves read-your-writes: a read route given ``?min_position=N`` asks the watcher; waiting costs no database round trip
per request. The watcher keeps one connection that LISTENs to the log (``ledger_events``, the
new head) and to the runners (``ledger_checkpoints``, ``name:position`` after each committed
batch), wherever those runners run, and wakes the requests whose positions were reached. A
notification lost in a reconnect is made up for by re-reading the checkpoints (on reconnect, and
once a second while anyone waits). A position beyond the log head is never waited for: no
projection can reach it until someone appends it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Collection

import asyncpg

from ledger.db import SERVER_SETTINGS, translate_errors
from ledger.errors import DatabaseError
from ledger.log import NOTIFY_CHANNEL, head_position
from projections.sql import projection_queries

__all__ = ["CHECKPOINT_CHANNEL", "CheckpointWatcher"]

_log = logging.getLogger(__name__)

CHECKPOINT_CHANNEL = "ledger_checkpoints"


class CheckpointWatcher:
    def __init__(self, dsn: str, *, resync_interval: float = 1.0) -> None:
        self.dsn = dsn
        self.resync_interval = resync_interval
        self.head = 0
        self.positions: dict[str, int] = {}
        self.connected = asyncio.Event()
        self._waiting: list[tuple[list[str], int, asyncio.Future[None]]] = []
        self._subscribers: list[asyncio.Event] = []
        self._checkpoint_subscribers: list[tuple[frozenset[str], asyncio.Event]] = []
        self._conn: asyncpg.Connection | None = None
        self._query_lock = asyncio.Lock()
        self._head_refresh: asyncio.Task[int] | None = None

    def subscribe(self, *, after: Collection[str] = ()) -> asyncio.Event:
        """An event set whenever the log grows (and after every reconnect, when a notification may
        have been missed): what wakes a projection runner or the reactor. Given projections
        (``after``), whenever one of them commits a batch instead: what wakes a follower of those
        read models (outbound delivery), to which the log's growth alone gives nothing to do.
        Polling stays the truth."""
        event = asyncio.Event()
        if after:
            self._checkpoint_subscribers.append((frozenset(after), event))
        else:
            self._subscribers.append(event)
        return event

    def _wake_subscribers(self, moved: str | None = None) -> None:
        """Wakes the log's subscribers, or those following projection ``moved``; everyone after a
        reconnect (``moved`` = ``"*"``)."""
        if moved is None or moved == "*":
            for event in self._subscribers:
                event.set()
        if moved is not None:
            for names, event in self._checkpoint_subscribers:
                if moved == "*" or moved in names:
                    event.set()

    def reached(self, names: list[str], position: int) -> bool:
        """Whether every named projection (none: the log itself) has applied ``position``."""
        return self.applied(names) >= position

    def applied(self, names: list[str]) -> int:
        """The position every named projection has applied, as this watcher last heard (never ahead
        of the database); with no names, the log head."""
        if not names:
            return self.head
        return min(self.positions.get(name, 0) for name in names)

    async def wait(self, names: list[str], position: int, within: float = 5.0) -> bool:
        """True once every named projection has applied ``position``; False when it is beyond the
        log head (answered at once) or not reached within ``within`` seconds: one deadline for the
        whole wait (a reconnect, the head's refresh and the wait itself), whatever the load."""
        if self.reached(names, position):
            return True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within

        def left() -> float:
            return max(0.0, deadline - loop.time())

        try:
            if not self.connected.is_set():  # just started, or reconnecting: within the same time
                await asyncio.wait_for(self.connected.wait(), left())
                if self.reached(names, position):
                    return True
            if position > self.head and position > await asyncio.wait_for(self._fresh_head(), left()):
                return False
        except TimeoutError:
            return self.reached(names, position)
        waiter = (names, position, loop.create_future())
        self._waiting.append(waiter)
        try:
            await asyncio.wait_for(waiter[2], left())
            return True
        except TimeoutError:
            return self.reached(names, position)
        finally:
            with contextlib.suppress(ValueError):
                self._waiting.remove(waiter)

    async def _fresh_head(self) -> int:
        """The head, read once for every request that asks meanwhile (a webhook's reply can reach
        its client before the log's notification reaches this process)."""
        if self._head_refresh is None or self._head_refresh.done():
            self._head_refresh = asyncio.ensure_future(self._read_head())
        try:
            return await asyncio.shield(self._head_refresh)
        except DatabaseError:
            return self.head

    async def _read_head(self) -> int:
        conn = self._conn
        if conn is None or conn.is_closed():
            return self.head
        async with self._query_lock:
            with translate_errors():
                head = await head_position(conn)
        self._update(head=head)
        return self.head

    async def _resync(self, conn: asyncpg.Connection) -> None:
        async with self._query_lock:
            rows = await conn.fetch(projection_queries.state_all)
        # A rebuild switch may move a checkpoint anywhere: the database's word is final.
        self.positions.update({r["name"]: r["position"] for r in rows})
        self._update(head=max((r["head"] for r in rows), default=self.head))

    def _update(self, *, head: int | None = None) -> None:
        """Takes a new head, then wakes every request whose position is now reached."""
        if head is not None:
            self.head = max(self.head, head)
        if not self._waiting:
            return
        still = []
        for waiter in self._waiting:
            names, position, future = waiter
            if future.done():
                continue
            if self.reached(names, position):
                future.set_result(None)
            else:
                still.append(waiter)
        self._waiting = still

    def _on_notify(self, _conn: object, _pid: int, channel: str, payload: str) -> None:
        if channel == NOTIFY_CHANNEL:
            self._wake_subscribers()
        try:
            if channel == NOTIFY_CHANNEL:
                self._update(head=int(payload))
            else:
                name, _, position = payload.rpartition(":")
                self.positions[name] = max(self.positions.get(name, 0), int(position))
                self._wake_subscribers(moved=name)
                self._update()
        except ValueError:
            return

    async def run(self) -> None:
        """Follows the database until cancelled, reconnecting after any failure."""
        while True:
            conn = None
            try:
                with translate_errors():
                    conn = await asyncpg.connect(self.dsn, server_settings=SERVER_SETTINGS)
                    await conn.add_listener(NOTIFY_CHANNEL, self._on_notify)
                    await conn.add_listener(CHECKPOINT_CHANNEL, self._on_notify)
                    self._conn = conn
                    await self._resync(conn)
                    self.connected.set()
                    self._wake_subscribers("*")  # anything missed while disconnected is found by polling
                    ticks = 0
                    while not conn.is_closed():
                        await asyncio.sleep(self.resync_interval)
                        ticks += 1
                        if self._waiting or ticks % 5 == 0:  # also keeps the connection checked
                            await self._resync(conn)
            except asyncio.CancelledError:
                raise
            except DatabaseError as exc:
                _log.warning("checkpoint watcher: %s; reconnecting", exc.message)
                await asyncio.sleep(1)
            except Exception:  # anything else (a client-side state error, a bug): it must not end
                _log.exception("checkpoint watcher: failed unexpectedly; reconnecting")
                await asyncio.sleep(1)
            finally:
                self._conn = None
                self.connected.clear()
                if conn is not None:
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(conn.close(), 5)
