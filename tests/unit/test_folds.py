"""The pure side of the projections, without a database: the mergeable state's join laws, and
every fold giving the same per-entity state for any delivery order, duplicates and batching.

The runner folds a batch into deltas, then merges them into the stored states (projections/apply.py);
``_project`` below does exactly that with a dict standing in for the tables.
"""

from __future__ import annotations

import copy
import json
import random
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from ledger_cli.scenarios import Checkout, checkout_events, fulfillment_events
from projections.base import Deltas, LogRow, merge
from projections.mergeable import Mergeable
from projections.registry import PROJECTIONS

# --------------------------------------------------------------------------------------------
# The state: a join (commutative, associative, idempotent)

_ops = st.lists(
    st.one_of(
        st.tuples(st.just("offer"), st.sampled_from("abc"), st.integers(0, 9), st.lists(st.integers(0, 5), max_size=3)),
        st.tuples(st.just("add"), st.sampled_from("xy"), st.sampled_from(["p", "q", "r"])),
        st.tuples(st.just("earliest"), st.sampled_from("mn"), st.integers(0, 100)),
        st.tuples(st.just("latest"), st.sampled_from("mn"), st.integers(0, 100)),
        st.tuples(st.just("flag"), st.sampled_from("fg")),
    ),
    max_size=12,
)


def _state(ops: list[tuple[Any, ...]]) -> Mergeable:
    state = Mergeable()
    for op, *args in ops:
        if op == "offer":  # keys are unique per fact, as the folds make them (they end in a unique id)
            field, value, key = args
            args = [field, value, [*key, value]]
        getattr(state, op)(*args)
    return state


def _join(a: Mergeable, b: Mergeable) -> dict[str, Any]:
    return merge(Mergeable(copy.deepcopy(a.doc)), Mergeable(copy.deepcopy(b.doc))).doc


@given(_ops, _ops, _ops)
def test_merging_states_is_a_join(x: list[tuple[Any, ...]], y: list[tuple[Any, ...]], z: list[tuple[Any, ...]]) -> None:
    a, b, c = _state(x), _state(y), _state(z)
    assert _join(a, b) == _join(b, a)
    assert _join(Mergeable(_join(a, b)), c) == _join(a, Mergeable(_join(b, c)))
    assert _join(a, a) == a.doc
    # Applying the operations in any order is the same as merging their states.
    assert _state(x + y).doc == _join(a, b) == _state(y + x).doc


def test_a_larger_key_wins_whatever_arrives_first() -> None:
    early, late = Mergeable(), Mergeable()
    early.offer("status", "open", [1, 100])
    late.offer("status", "complete", [2, 50])
    assert merge(Mergeable(copy.deepcopy(early.doc)), late).get("status") == "complete"
    assert merge(Mergeable(copy.deepcopy(late.doc)), early).get("status") == "complete"


# --------------------------------------------------------------------------------------------
# Every fold: any order, duplicates and batching give the in-order state


def _rows(events: list[dict[str, Any]]) -> list[LogRow]:
    return [LogRow(position=i + 1, event_type=e["event_type"], payload=e) for i, e in enumerate(events)]


def _project(rows: list[LogRow], batch_size: int) -> dict[str, dict[str, dict[str, Any]]]:
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
        table = PROJECTIONS[projection_name].table(table_name)
        out[name] = {
            # What the state says; not the merge keys, which end in the log position (arrival).
            entity_id: {"row": table.row(entity_id, state), **{part: state.doc[part] for part in ("v", "s", "m")}}
            for entity_id, state in states.items()
        }
    return out


def _traffic(checkouts: list[Checkout]) -> list[dict[str, Any]]:
    """The checkouts' webhooks, then the reactor's line items and adjustments for each."""
    events = [e for c in checkouts for e in checkout_events(c)]
    events += [json.loads(e.raw_body) for c in checkouts for e in fulfillment_events(c)]
    return events


@settings(max_examples=60, deadline=None)
@given(
    shapes=st.lists(st.tuples(st.sampled_from(["payment", "subscription"]), st.booleans()), min_size=1, max_size=3),
    seed=st.integers(0, 2**32),
    batch_size=st.integers(1, 9),
)
def test_any_order_duplicates_and_batching_give_the_in_order_state(
    shapes: list[tuple[str, bool]], seed: int, batch_size: int
) -> None:
    checkouts = [Checkout(seed=seed + i, mode=mode, split=split) for i, (mode, split) in enumerate(shapes)]
    in_order = _traffic(checkouts)
    expected = _project(_rows(in_order), batch_size=len(in_order))

    rng = random.Random(seed)
    deliveries = in_order + [copy.deepcopy(e) for e in rng.sample(in_order, k=rng.randint(0, len(in_order)))]
    rng.shuffle(deliveries)
    actual = _project(_rows(deliveries), batch_size=batch_size)

    assert actual == expected
    assert set(expected) >= {"orders.orders", "customers.customers", "inventory.inventory_adjustments"}
    assert len(expected["orders.orders"]) == len(checkouts)
