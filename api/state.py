"""``AppState``: what the routes share, typed. Litestar hands it to any handler that asks for
``state: AppState``; ``AppState.of(scope)`` gives it to raw ASGI code."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

from litestar import Litestar
from litestar.datastructures import State

if TYPE_CHECKING:
    import asyncpg

    from api.metrics import Metrics
    from api.throttle import FailureLimiter
    from ledger.group_commit import GroupCommitter
    from ledger.log import EventLog
    from ledger.settings import Settings
    from projections.freshness import CheckpointWatcher
    from reactors.flex_client import FlexClient

__all__ = ["AppState"]


class AppState(State):
    # Set when the app is made:
    settings: Settings
    api_tokens: tuple[str, ...]
    metrics: Metrics
    auth_failures: FailureLimiter  # wrong bearer tokens and failed console sign-ins, per address
    # Set by the lifespan, once the database is reachable:
    pool: asyncpg.Pool  # reads (planned per call)
    # The event log, through three connection budgets (bulkheads):
    ingest_log: EventLog  # appends and quarantine, on the ingest pool (no read ever takes it)
    read_log: EventLog  # reads of the log (/v1/events, the console), on the read pool
    ops_log: EventLog  # /readyz and /metrics, on a pool of their own: never queued behind reads
    committer: GroupCommitter
    checkpoints: CheckpointWatcher
    flex_clients: dict[str, FlexClient]  # by mode (live, test): the keys set; for the success page's sync

    @classmethod
    def of(cls, scope: Any) -> AppState:
        """The state of the app serving this ASGI ``scope``."""
        return cast(AppState, Litestar.from_scope(scope).state)
