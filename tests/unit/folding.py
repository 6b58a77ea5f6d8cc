"""Folding events without a database: what the runner does (fold a batch into deltas, merge them
into the stored states), with dicts standing in for the tables."""

from __future__ import annotations

from typing import Any

from projections.base import Deltas, LogRow, merge
from projections.mergeable import Mergeable
from projections.registry import PROJECTIONS

__all__ = ["project", "rows", "states"]


def rows(events: list[dict[str, Any]]) -> list[LogRow]:
    return [LogRow(position=i + 1, event_type=e["event_type"], payload=e) for i, e in enumerate(events)]


def project(rows: list[LogRow], batch_size: int) -> dict[str, dict[str, dict[str, Any]]]:
    """Every projection's tables as the runner would leave them: {projection.table: {id: row}}."""
    tables: dict[str, dict[str, Mergeable]] = {}
    for projection in PROJECTIONS.values():
        mine = [r for r in rows if projection.matches(r.event_type)]
        for i in range(0, len(mine), batch_size):
            deltas = Deltas()
            for row in mine[i : i + batch_size]:
                projection.fold(row, deltas)
            for table, states in deltas.by_table.items():
                stored = tables.setdefault(f"{projection.name}.{table}", {})
                for entity_id, state in states.items():
                    stored[entity_id] = merge(stored[entity_id], state) if entity_id in stored else state
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for name, states in tables.items():
        projection_name, table_name = name.split(".", 1)
        projected = PROJECTIONS[projection_name].table(table_name)
        out[name] = {
            # The whole state, merge keys included: they come from the events' content, never arrival.
            entity_id: {"row": projected.row(entity_id, state), **state.doc}
            for entity_id, state in states.items()
        }
    return out


def states(events: list[dict[str, Any]], table: str) -> dict[str, Mergeable]:
    """One table's states (``projection.table``) after folding ``events`` in one batch."""
    return {entity_id: Mergeable(doc) for entity_id, doc in _docs(project(rows(events), len(events) or 1), table)}


def _docs(tables: dict[str, dict[str, dict[str, Any]]], table: str) -> list[tuple[str, dict[str, Any]]]:
    return [
        (entity_id, {part: doc[part] for part in ("v", "k", "s", "m")})
        for entity_id, doc in tables.get(table, {}).items()
    ]
