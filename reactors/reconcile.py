"""Reconcile: ask Flex's API what it knows, and record what the log does not show yet.

Svix gives up on a webhook after about 27 hours; a checkout whose webhooks were all lost (or only
its completion) would otherwise never be recorded nor fulfilled. A run pages Flex's
``GET /checkout/sessions``, ``GET /payment_intents`` and ``GET /refunds`` (newest first, ``limit``
and ``starting_after``) back to the window's start, and compares each resource with what the log
already shows: the orders projection's state merged with the events it has not applied yet. A
resource whose observation would change nothing there is *known*; the others are recorded as
``ledger.flex.observed`` events (``projections.observations``), all in one transaction at the end,
so a run that cannot read Flex to the end records nothing. Their ids are derived from their
content, so a second run, or two at once, record each state once.

``fetch_session`` and ``unrecorded`` do the same for one session and its payments (the success
page's call);
``AutomaticReconcile`` runs reconcile every interval in one process across all of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import msgspec

from ledger.db import connection, translate_errors
from ledger.errors import DatabaseError, DataRefused, FlexUnavailable, LedgerError, NotFound
from ledger.log import NewEvent, append_with, read_batch
from projections.apply import decode_rows
from projections.base import Deltas, LogRow
from projections.coordination import held_locks, run_exclusively
from projections.fields import epoch_micros
from projections.mergeable import Mergeable
from projections.observations import KINDS, Kind, as_snapshot, observed_event, resource_id, unusable
from projections.registry import PROJECTIONS, RECONCILE, lock_id
from projections.sql import projection_queries as sql
from reactors.flex_client import FlexApiError, FlexClient
from reactors.sql import reactor_queries

__all__ = [
    "AutomaticReconcile",
    "KindCount",
    "ReconcileFailed",
    "ReconcileReport",
    "ReconcileRun",
    "ReconcileStatus",
    "SessionUnknown",
    "fetch_session",
    "last_started",
    "missed_money",
    "read_reconcile",
    "recent_runs",
    "reconcile",
    "reconcile_status",
    "unrecorded",
]

_log = logging.getLogger(__name__)
_decode = msgspec.json.Decoder()

PAGE_SIZE = 100  # Flex's largest page
_TAIL_BATCH = 10_000


class ReconcileFailed(Exception):
    """Flex could not be read to the end (or answered something unusable): nothing was recorded."""

    def __init__(self, message: str, report: ReconcileReport | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.report = report


class SessionUnknown(NotFound):
    """Flex does not know the checkout session (in any mode this service has a key for)."""


class KindCount(msgspec.Struct, kw_only=True):
    examined: int = 0
    known: int = 0
    recorded: int = 0
    missed: int = 0  # of those recorded: money a webhook should have told of (``missed_money``)
    skipped: int = 0  # listed but unusable (``observations.unusable``): reported, never recorded


class Skipped(msgspec.Struct, kw_only=True, frozen=True):
    """A resource Flex listed that could not be recorded, and why."""

    kind: str
    id: str | None  # its id as Flex gave it, cut to 80 characters (it may be the problem)
    reason: str


_SKIPPED_LISTED = 100  # a run lists this many skipped resources; the counts cover them all


# What a lost webhook costs: a completed checkout, a payment taken or a refund made. Recorded
# observations of other states (an abandoned, open or expired session, a payment still in
# progress) are drift too, but Flex may never send a webhook for them.
_MONEY_STATES = {
    "checkout_session": {"complete"},
    "payment_intent": {"succeeded"},
    "refund": {"succeeded"},
    "invoice": {"paid"},
}


def missed_money(kind: str, status: str | None) -> bool:
    return status in _MONEY_STATES.get(kind, ())


class Observed(msgspec.Struct, kw_only=True, frozen=True):
    """One observation a run recorded (or, in a dry run, would record)."""

    kind: str
    id: str
    status: str | None
    event_id: str
    position: int | None = None


class ReconcileReport(msgspec.Struct, kw_only=True):
    trigger: str
    started_at: datetime
    since: datetime
    dry_run: bool = False
    finished_at: datetime | None = None
    outcome: str = "ok"
    error: str | None = None
    kinds: dict[str, KindCount] = msgspec.field(default_factory=lambda: {k: KindCount() for k in KINDS})
    observations: list[Observed] = msgspec.field(default_factory=list)
    skipped: list[Skipped] = msgspec.field(default_factory=list)

    def total(self, what: str) -> int:
        return sum(getattr(c, what) for c in self.kinds.values())

    @property
    def positions(self) -> tuple[int | None, int | None]:
        positions = [o.position for o in self.observations if o.position is not None]
        return (min(positions), max(positions)) if positions else (None, None)


@dataclass
class _Candidate:
    kind: Kind
    event: NewEvent
    row: LogRow
    resource: dict[str, Any]


@dataclass
class _Chosen:
    """An observation a run will record: only what it needs, so a long run holds little."""

    kind: Kind
    event: NewEvent
    observed: Observed


@dataclass
class _Baseline:
    """What the log shows of each kind's resources: the rows of the projection that folds them
    (orders for sessions, payment intents and refunds; invoices; subscriptions) plus the events after
    its checkpoint (read once per run), so a lagging or stopped projection does not make known
    things look new."""

    tails: dict[str, Deltas] = field(default_factory=dict)  # by projection name

    @classmethod
    async def read(cls, conn: asyncpg.Connection, kinds: Sequence[Kind], *, max_tail: int | None = None) -> _Baseline:
        baseline = cls()
        for name in dict.fromkeys(kind.projection for kind in kinds):
            projection = PROJECTIONS[name]
            tail = baseline.tails[name] = Deltas()
            state = await conn.fetchrow(sql.state_get, name)
            start, head = state["position"], state["head"]
            if max_tail is not None and head - start > max_tail:
                continue  # too far behind to fold here: compare with the rows alone (may over-record)
            while start < head:
                end = min(head, start + _TAIL_BATCH)
                rows, _ = decode_rows(await read_batch(conn, start, end, projection.patterns))
                for row in rows:
                    with contextlib.suppress(Exception):  # what the projection cannot fold, it records as failed
                        projection.fold(row, tail)
                start = end
        return baseline

    async def unknown(self, conn: asyncpg.Connection, candidates: Sequence[_Candidate]) -> list[bool]:
        """For each candidate, whether its observation would change what the log shows."""
        folded: list[tuple[str, Deltas]] = []
        wanted: dict[tuple[str, str], set[str]] = {}  # (projection, table): entity ids
        for candidate in candidates:
            name = candidate.kind.projection
            deltas = Deltas()
            with contextlib.suppress(Exception):
                PROJECTIONS[name].fold(candidate.row, deltas)
            folded.append((name, deltas))
            for table, states in deltas.by_table.items():
                wanted.setdefault((name, table), set()).update(states)
        stored: dict[tuple[str, str], dict[str, Mergeable]] = {}
        for (name, table), ids in wanted.items():
            rows = await conn.fetch(PROJECTIONS[name].table(table).load, sorted(ids))
            stored[name, table] = {r["id"]: Mergeable.loads(r["state"]) for r in rows}
        out = []
        for name, deltas in folded:
            changes = False
            for table, states in deltas.by_table.items():
                for entity_id, delta in states.items():
                    before = (stored[name, table].get(entity_id) or Mergeable()).copy()
                    tail = self.tails.get(name, Deltas()).by_table.get(table, {}).get(entity_id)
                    if tail is not None:
                        before = before.merge(tail)
                    after = before.copy().merge(delta)
                    changes = changes or after.facts() != before.facts()
            out.append(changes)
        return out


def _candidate(kind: Kind, resource: dict[str, Any], observed_at: datetime) -> _Candidate:
    event = observed_event(kind, resource, observed_at)
    row = as_snapshot(LogRow(position=0, event_type=event.event_type, payload=_decode.decode(event.raw_body)))
    return _Candidate(kind, event, row, resource)


def _observed(candidate: _Candidate, position: int | None = None) -> Observed:
    status = candidate.resource.get("status")
    return Observed(
        kind=candidate.kind.name,
        id=resource_id(candidate.kind, candidate.resource) or "",
        status=status if isinstance(status, str) else None,
        event_id=candidate.event.event_id,
        position=position,
    )


async def _pages(
    client: FlexClient, kind: Kind, since_micros: int, page_size: int, max_pages: int
) -> AsyncIterator[list[dict[str, Any]]]:
    """The kind's resources created in the window, a page at a time, newest first; at most
    ``max_pages`` pages (Flex paging on past them is refused: the window cannot hold that many)."""
    after: str | None = None
    cursors: set[str] = set()
    for _ in range(max_pages):
        page = await client.list_page(kind.list_path, kind.list_key, limit=page_size, starting_after=after)
        in_window = [r for r in page if (t := epoch_micros(r.get("created_at"))) is None or t >= since_micros]
        yield in_window
        if len(page) < page_size or len(in_window) < len(page):
            return
        after = resource_id(kind, page[-1])
        if after is None or after in cursors or unusable(kind, page[-1]) is not None:
            shown = after[:80] if after else after
            raise ReconcileFailed(f"Flex API paged {kind.list_path} with no usable cursor (last id {shown!r})")
        cursors.add(after)
    raise ReconcileFailed(
        f"Flex API kept paging {kind.list_path} past {max_pages} pages of {page_size} within the window "
        "(LEDGER_RECONCILE_MAX_PAGES)"
    )


async def reconcile(
    conn: asyncpg.Connection,
    clients: Sequence[FlexClient],
    *,
    since: datetime,
    dry_run: bool = False,
    trigger: str = "command",
    page_size: int = PAGE_SIZE,
    max_pages: int = 300,
    on_progress: Callable[[ReconcileReport], None] | None = None,
) -> ReconcileReport:
    """One run over every client (one per API key: live, test). Raises ``ReconcileFailed`` when
    Flex could not be read to the end; nothing is recorded then (a failed run is, unless dry)."""
    report = ReconcileReport(trigger=trigger, started_at=datetime.now(UTC), since=since, dry_run=dry_run)
    try:
        with translate_errors():
            baseline = await _Baseline.read(conn, list(KINDS.values()))
            chosen: dict[str, _Chosen] = {}
            db = asyncio.Lock()  # the kinds page concurrently; the connection answers one query at a time
            since_micros = int(since.timestamp() * 1_000_000)

            async def walk(client: FlexClient, kind: Kind) -> None:
                async for page in _pages(client, kind, since_micros, page_size, max_pages):
                    observed_at = datetime.now(UTC)
                    counts = report.kinds[kind.name]
                    counts.examined += len(page)
                    candidates = []
                    for resource in page:
                        reason = unusable(kind, resource)
                        if reason is None:
                            candidates.append(_candidate(kind, resource, observed_at))
                            continue
                        counts.skipped += 1
                        rid = resource_id(kind, resource) if isinstance(resource, dict) else None
                        _log.warning("reconcile: skipped a %s from Flex (%s): %s", kind.name, (rid or "?")[:80], reason)
                        if len(report.skipped) < _SKIPPED_LISTED:
                            report.skipped.append(Skipped(kind=kind.name, id=rid[:80] if rid else None, reason=reason))
                    async with db:
                        unknown = await baseline.unknown(conn, candidates)
                    for candidate, new in zip(candidates, unknown, strict=True):
                        if new and candidate.event.event_id not in chosen:
                            observed = _observed(candidate)
                            chosen[candidate.event.event_id] = _Chosen(candidate.kind, candidate.event, observed)
                        else:
                            counts.known += 1
                    if on_progress is not None:
                        on_progress(report)

            try:
                async with asyncio.TaskGroup() as group:
                    for client in clients:
                        for kind in KINDS.values():
                            group.create_task(walk(client, kind))
            except ExceptionGroup as failed:
                raise _first_cause(failed) from None
            candidates = list(chosen.values())
            if dry_run:
                report.observations = [c.observed for c in candidates]
                for seen in report.observations:
                    _count_recorded(report, seen)
                report.finished_at = datetime.now(UTC)
                return report
            async with conn.transaction():
                results = await append_with(conn, [c.event for c in candidates]) if candidates else []
                for c, result in zip(candidates, results, strict=True):
                    if result.duplicate:  # another run (or a sync) recorded this very state meanwhile
                        report.kinds[c.kind.name].known += 1
                    else:
                        report.observations.append(msgspec.structs.replace(c.observed, position=result.position))
                        _count_recorded(report, report.observations[-1])
                report.finished_at = datetime.now(UTC)
                await _record(conn, report)
            return report
    except ReconcileFailed as exc:
        await _failed(conn, report, exc, dry_run)
        raise
    except DataRefused as exc:  # something Flex said that the checks did not foresee: this run fails
        failure = ReconcileFailed(f"an observation could not be recorded ({exc.message})")
        await _failed(conn, report, failure, dry_run)
        raise failure from exc
    except LedgerError:
        raise  # the database (the caller reconnects; nothing could be recorded anyway), Flex, ...
    except Exception as exc:  # a bug or an answer nothing expected: a failed run, on record
        _log.exception("reconcile: run failed unexpectedly, nothing recorded")
        failure = ReconcileFailed(f"unexpected error: {type(exc).__name__}: {exc}")
        await _failed(conn, report, failure, dry_run)
        raise failure from exc


async def _failed(conn: asyncpg.Connection, report: ReconcileReport, exc: ReconcileFailed, dry_run: bool) -> None:
    report.outcome, report.error, report.finished_at = "failed", exc.message[:2000], datetime.now(UTC)
    exc.report = report
    if not dry_run:
        with contextlib.suppress(DatabaseError), translate_errors():
            await _record(conn, report)


def _count_recorded(report: ReconcileReport, seen: Observed) -> None:
    counts = report.kinds[seen.kind]
    counts.recorded += 1
    counts.missed += missed_money(seen.kind, seen.status)


def _first_cause(group: ExceptionGroup[Exception]) -> Exception:
    """What a run that failed in several walks at once failed of: Flex first (as ``ReconcileFailed``),
    else the first failure (a database one goes up as itself, for the caller to reconnect)."""
    leaves: list[Exception] = []
    pending: list[Exception] = [group]
    while pending:
        exc = pending.pop(0)
        if isinstance(exc, ExceptionGroup):
            pending[:0] = list(exc.exceptions)
        else:
            leaves.append(exc)
    for exc in leaves:
        if isinstance(exc, ReconcileFailed):
            return exc
        if isinstance(exc, FlexApiError):
            return ReconcileFailed(f"cannot read Flex's API: {exc.message}")
    return leaves[0]


async def _record(conn: asyncpg.Connection, report: ReconcileReport) -> None:
    first, last = report.positions
    await conn.execute(
        reactor_queries.reconcile_run_insert,
        report.trigger,
        report.started_at,
        report.finished_at,
        report.since,
        report.outcome,
        report.error,
        report.total("examined"),
        report.total("known"),
        report.total("recorded"),
        report.total("missed"),
        json.dumps({k: msgspec.to_builtins(c) for k, c in report.kinds.items()}),
        first,
        last,
        report.total("skipped"),
    )


async def fetch_session(clients: Sequence[FlexClient], session_id: str) -> list[tuple[Kind, dict[str, Any]]]:
    """Fetches one session, its payment intents and its refunds from Flex now (the success page's
    sync), each checked before use. Raises ``SessionUnknown`` when no client's mode knows the
    session, ``FlexUnavailable`` when Flex cannot be read or answers with a session that is not
    the one asked for (or one that cannot be recorded). Payment intents and refunds that cannot be
    recorded are skipped (logged). No database work: the caller holds nothing while Flex answers."""
    session_kind = KINDS["checkout_session"]
    try:
        for client in clients:
            session = await client.checkout_session(session_id)
            if session is not None:
                break
        else:
            raise SessionUnknown(f"Flex knows no checkout session {session_id!r}")
        answered = resource_id(session_kind, session) if isinstance(session, dict) else None
        if answered != session_id:
            shown = answered[:80] if answered else answered
            _log.warning("sync: asked Flex for %s, it answered with session %r: refused", session_id, shown)
            raise FlexUnavailable(
                f"Flex answered with checkout session {shown!r}, not {session_id!r}; nothing recorded", retry_after=30
            )
        reason = unusable(session_kind, session)
        if reason is not None:
            _log.warning("sync: Flex's session %s cannot be recorded: %s", session_id, reason)
            raise FlexUnavailable(f"Flex's answer for this session cannot be recorded: {reason}", retry_after=60)
        resources: list[tuple[Kind, dict[str, Any]]] = [(session_kind, session)]
        for name in ("payment_intent", "refund"):
            kind = KINDS[name]
            page = await client.list_page(kind.list_path, kind.list_key, checkout_session=session_id, limit=PAGE_SIZE)
            for resource in page:
                reason = unusable(kind, resource)
                if reason is None:
                    resources.append((kind, resource))
                else:
                    _log.warning("sync: skipped a %s of %s from Flex: %s", name, session_id, reason)
    except FlexApiError as exc:
        wait = max(1, min(60, round(exc.retry_after or 5)))
        raise FlexUnavailable(f"cannot read the session from Flex now: {exc.message}", retry_after=wait) from None
    return resources


async def unrecorded(pool: asyncpg.Pool, resources: Sequence[tuple[Kind, dict[str, Any]]]) -> list[NewEvent]:
    """The observations of ``resources`` (from ``fetch_session``) that the log does not show yet,
    for the caller to append. Raises ``DatabaseUnavailable`` when the log cannot be read."""
    observed_at = datetime.now(UTC)
    candidates = [_candidate(kind, r, observed_at) for kind, r in resources]
    async with connection(pool) as conn:
        baseline = await _Baseline.read(conn, [kind for kind, _ in resources], max_tail=_TAIL_BATCH)
        unknown = await baseline.unknown(conn, candidates)
    return [c.event for c, new in zip(candidates, unknown, strict=True) if new]


async def last_started(conn: asyncpg.Connection) -> datetime | None:
    value = await conn.fetchval(reactor_queries.reconcile_last_started)
    return value if isinstance(value, datetime) else None


class ReconcileRun(msgspec.Struct, kw_only=True):
    """One recorded run (``reconcile_runs``), as ``GET /v1/reconcile``, status and the console show it."""

    run_id: int
    trigger: str  # command | automatic
    started_at: str
    finished_at: str
    since: str
    outcome: str  # ok | failed
    error: str | None
    examined: int
    known: int
    recorded: int  # observations recorded: what the webhooks had not brought (drift)
    missed: int  # of those, money: a completed checkout, a succeeded payment or refund
    kinds: dict[str, KindCount]
    first_position: int | None
    last_position: int | None
    skipped: int = 0


class ReconcileStatus(msgspec.Struct, kw_only=True):
    """The runs so far and whether some process runs the automatic reconcile: for ``ledger status``,
    ``GET /v1/reconcile`` (with ``data``, the latest runs), the console and the metrics."""

    runner: str  # running (some process runs the automatic reconcile) | stopped
    runs: int
    failures: int
    recorded: int
    missed: int
    skipped: int = 0
    last_success_at: str | None
    last_run: ReconcileRun | None
    data: list[ReconcileRun] = msgspec.field(default_factory=list)


async def reconcile_status(conn: asyncpg.Connection, runs: int = 1) -> ReconcileStatus:
    """Totals of every run, the ``runs`` latest runs (newest first) and whether a runner holds the lock."""
    row = await conn.fetchrow(reactor_queries.reconcile_summary)
    latest = await recent_runs(conn, max(runs, 1))
    return ReconcileStatus(
        runner="running" if lock_id(RECONCILE) in await held_locks(conn) else "stopped",
        runs=row["runs"],
        failures=row["failures"],
        recorded=row["recorded"],
        missed=row["missed"],
        skipped=row["skipped"],
        last_success_at=row["last_success_at"].isoformat() if row["last_success_at"] else None,
        last_run=latest[0] if latest else None,
        data=latest[:runs],
    )


async def read_reconcile(pool: asyncpg.Pool, runs: int) -> ReconcileStatus:
    """``reconcile_status`` on a connection of ``pool``."""
    async with connection(pool) as conn:
        return await reconcile_status(conn, runs)


async def recent_runs(conn: asyncpg.Connection, limit: int = 20) -> list[ReconcileRun]:
    return [
        ReconcileRun(
            run_id=r["run_id"],
            trigger=r["trigger"],
            started_at=r["started_at"].isoformat(),
            finished_at=r["finished_at"].isoformat(),
            since=r["since"].isoformat(),
            outcome=r["outcome"],
            error=r["error"],
            examined=r["examined"],
            known=r["known"],
            recorded=r["recorded"],
            missed=r["missed"],
            kinds=_decode_kinds(r["kinds"]),
            first_position=r["first_position"],
            last_position=r["last_position"],
            skipped=r["skipped"],
        )
        for r in await conn.fetch(reactor_queries.reconcile_runs_recent, limit)
    ]


_decode_kinds = msgspec.json.Decoder(dict[str, KindCount]).decode


class AutomaticReconcile:
    """Reconciles every ``interval`` seconds over ``window``, in one process across all of them
    (advisory lock). The next run is due ``interval`` after the last one of any kind began, as
    recorded in the database, so restarts and manual runs do not make it run more often; after a
    failed run it tries again sooner (``retry_after_failure``)."""

    def __init__(
        self,
        dsn: str,
        clients: Sequence[FlexClient],
        *,
        interval: float,
        window: timedelta,
        standby_interval: float = 5.0,
        retry_after_failure: float = 60.0,
        max_pages: int = 300,
    ) -> None:
        self.dsn = dsn
        self.max_pages = max_pages
        self.clients = list(clients)
        self.interval = interval
        self.window = window
        self.standby_interval = standby_interval
        self.retry_after_failure = min(retry_after_failure, interval)
        self.active = False

    async def run(self) -> None:
        if not self.clients:
            _log.warning("reconcile: FLEX_API_KEY is not set; automatic reconcile is off")
            return
        await run_exclusively(self.dsn, RECONCILE, lock_id(RECONCILE), self, self._loop, self.standby_interval)

    async def _loop(self, conn: asyncpg.Connection) -> None:
        while True:
            last = await last_started(conn)
            now = datetime.now(UTC)
            due = last + timedelta(seconds=self.interval) if last is not None else now
            if due > now:
                await asyncio.sleep(min((due - now).total_seconds(), self.interval))
                continue
            try:
                report = await reconcile(
                    conn, self.clients, since=now - self.window, trigger="automatic", max_pages=self.max_pages
                )
            except ReconcileFailed as exc:
                _log.warning("reconcile: run failed, nothing recorded: %s", exc.message)
                await asyncio.sleep(self.retry_after_failure)
                continue
            except DatabaseError:
                raise  # the runner reconnects (projections.coordination.run_exclusively)
            except Exception:  # a bug or an answer nothing expected: the runner must not die of it
                _log.exception("reconcile: run failed unexpectedly, nothing recorded")
                await asyncio.sleep(self.retry_after_failure)
                continue
            recorded = report.total("recorded")
            log = _log.warning if report.total("missed") else _log.info
            log(
                "reconcile: examined %d, recorded %d observation(s) the webhooks had not brought, %d of "
                "them money (a completed checkout, a payment or a refund)",
                report.total("examined"),
                recorded,
                report.total("missed"),
            )
