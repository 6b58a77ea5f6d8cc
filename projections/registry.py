"""Every follower of the log, by name: the projections and the fulfillment reactor.

This is the one list of them. It gives each its advisory lock id (``projections.coordination``),
its checkpoint row (``install``), the names ``ledger rebuild`` accepts and the rows of
``ledger status``.
"""

from __future__ import annotations

import asyncpg

from ledger.errors import ConfigError
from ledger.migrate import migrate, plan
from projections.base import Projection
from projections.customers import CUSTOMERS
from projections.follower import seed_checkpoints
from projections.inventory import INVENTORY
from projections.invoices import INVOICES
from projections.orders import ORDERS
from projections.subscriptions import SUBSCRIPTIONS

__all__ = ["DELIVERY", "FOLLOWERS", "FULFILLMENT", "PROJECTIONS", "RECONCILE", "SHAPES", "get", "install", "lock_id"]

PROJECTIONS: dict[str, Projection] = {p.name: p for p in (ORDERS, CUSTOMERS, SUBSCRIPTIONS, INVENTORY, INVOICES)}
FULFILLMENT = "fulfillment"  # the reactor: follows the log too, but is never rebuilt
RECONCILE = "reconcile"  # the automatic reconcile runner: not a follower, one across all processes
DELIVERY = "delivery"  # outbound delivery: every destination follows the log in this one runner

# Lock ids are compared between processes that may run different releases during a deploy: a
# follower keeps its id for ever, and a new one takes the next free number.
_LOCK_IDS = {
    ORDERS.name: 1,
    CUSTOMERS.name: 2,
    SUBSCRIPTIONS.name: 3,
    FULFILLMENT: 4,
    INVENTORY.name: 5,
    RECONCILE: 6,
    DELIVERY: 7,
    INVOICES.name: 8,
}
assert set(_LOCK_IDS) == {*PROJECTIONS, FULFILLMENT, RECONCILE, DELIVERY}, "every runner needs a lock id"
assert len(set(_LOCK_IDS.values())) == len(_LOCK_IDS), "lock ids are unique"
FOLLOWERS: tuple[str, ...] = (*PROJECTIONS, FULFILLMENT)
SHAPES: dict[str, int] = {**{p.name: p.shape for p in PROJECTIONS.values()}, FULFILLMENT: 1}


def lock_id(name: str) -> int:
    return _LOCK_IDS[name]


def get(name: str) -> Projection:
    try:
        return PROJECTIONS[name]
    except KeyError:
        raise KeyError(f"no projection named {name!r} (known: {', '.join(PROJECTIONS)})") from None


async def install(conn: asyncpg.Connection, *, auto_migrate: bool = True) -> list[str]:
    """Readies a database for the service: applies the pending migration steps
    (``ledger.migrate``; none pending: no DDL) and gives every follower its checkpoint; harmless
    to run twice. Returns what the migration did. With ``auto_migrate`` off, a pending step is a
    ``ConfigError`` naming it, and nothing is changed."""
    if auto_migrate:
        done = await migrate(conn)
    else:
        pending = await plan(conn)
        if pending.pending:
            raise ConfigError(
                f"the database's schema is behind this release ({'; '.join(pending.describe())}) and "
                "LEDGER_AUTO_MIGRATE is false: run `ledger migrate` first"
            )
        done = []
    await seed_checkpoints(conn, SHAPES)
    return done
