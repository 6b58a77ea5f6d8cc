"""What a projection is: a pure fold from logged events into mergeable per-entity state.

A projection names the event types it reads (type prefixes), folds each event into
*delta* states (no database, no clock), and says how a state becomes a table row. The runner
loads the current states of the entities a batch touched, merges the deltas in, and writes the
rows back with one statement per table.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import msgspec

from projections.mergeable import Mergeable

__all__ = ["Deltas", "LogRow", "Projection", "Table", "like_patterns", "merge"]


class LogRow(msgspec.Struct, frozen=True, kw_only=True):
    position: int
    event_type: str
    payload: dict[str, Any]


@dataclass(frozen=True)
class Table:
    """A projection table: ``load``/``upsert`` are its queries (``projections/sql/``, named in code:
    ``sql.orders_load``); ``row`` gives the upsert's column values (after the key and before
    ``position, state``)."""

    name: str
    load: str
    upsert: str
    row: Callable[[str, Mergeable], tuple[Any, ...]]


class Deltas:
    """The states one batch contributes, per table and entity id."""

    def __init__(self) -> None:
        self.by_table: dict[str, dict[str, Mergeable]] = {}
        self.positions: dict[str, dict[str, int]] = {}
        self.touched: set[tuple[str, int]] = set()  # (entity id, position): every event of every entity

    def touch(self, entity_id: str, position: int) -> None:
        """The event at ``position`` is part of the entity's history, changing none of its state."""
        self.touched.add((entity_id, position))

    def state(self, table: str, entity_id: str, position: int) -> Mergeable:
        self.touched.add((entity_id, position))
        states = self.by_table.setdefault(table, {})
        positions = self.positions.setdefault(table, {})
        positions[entity_id] = max(position, positions.get(entity_id, 0))
        existing = states.get(entity_id)
        if existing is None:
            existing = states[entity_id] = Mergeable()
        return existing


def merge(into: Mergeable, other: Mergeable) -> Mergeable:
    """The join of two states (commutative, associative, idempotent): ``into`` with ``other`` joined."""
    return into.merge(other)


def like_patterns(prefixes: Iterable[str]) -> list[str]:
    return sorted({p.replace("\\", "\\\\").replace("_", "\\_").replace("%", "\\%") + "%" for p in prefixes})


@dataclass
class Projection:
    name: str
    prefixes: tuple[str, ...]  # event types it reads, e.g. "checkout.session."
    tables: tuple[Table, ...]
    fold: Callable[[LogRow, Deltas], bool]
    description: str = ""
    # The shape of the tables this code writes (columns, and what the states mean). A release that
    # changes it bumps it; tables an older shape built are rebuilt from the log (projections/upgrade.py).
    shape: int = 1
    # Tables the upserts keep up to date as a side effect (summaries): rebuilt and swapped too.
    derived: tuple[str, ...] = ()
    # The query (``projections/sql/``) recording which events touched which entity (ids, positions),
    # for an entity's history and time travel; its table is one of ``derived``.
    history: str | None = None
    history_table: str | None = None  # the table ``history`` writes
    # Run after a batch's rows are written, with {table: {id: state as written}}, in the same
    # transaction: for columns that depend on more than one row (an order's payment status).
    after_write: Callable[[Any, dict[str, dict[str, Mergeable]]], Awaitable[None]] | None = None
    # What ``after_write`` does, for every row at once: a rebuild runs it once after its bulk load
    # (and its indexes) instead of ``after_write`` after every batch.
    after_bulk_load: Callable[[Any], Awaitable[None]] | None = None
    # The indexes ``after_bulk_load`` reads through (by name): a rebuild builds them first, runs it,
    # and builds the others after, so that the rows it updates have no other index to keep.
    bulk_load_reads: tuple[str, ...] = ()

    @property
    def table_names(self) -> tuple[str, ...]:
        """Every table of the projection: what a rebuild builds and swaps in."""
        return (*(t.name for t in self.tables), *self.derived)

    def matches(self, event_type: str) -> bool:
        return event_type.startswith(self.prefixes)

    @property
    def patterns(self) -> list[str]:
        """``prefixes`` as SQL ``LIKE`` patterns (``_`` and ``%`` escaped)."""
        return like_patterns(self.prefixes)

    def table(self, name: str) -> Table:
        return next(t for t in self.tables if t.name == name)
