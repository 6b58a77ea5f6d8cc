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
from projections.base import merge
from projections.mergeable import Mergeable
from tests.unit.folding import project as _project
from tests.unit.folding import rows as _rows

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


# --------------------------------------------------------------------------------------------
# Ties and nulls: snapshots in the same second (and the same millisecond), explicit nulls

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def _ulid(millis: int, rng: random.Random) -> str:
    head = "".join(_CROCKFORD[(millis >> (5 * i)) & 31] for i in reversed(range(10)))
    return head + "".join(rng.choice(_CROCKFORD) for _ in range(16))


_snapshot = st.tuples(
    st.integers(0, 1),  # the second (event_dt): few values, so many ties
    st.integers(0, 2),  # the millisecond in the event id: ties within the second too
    st.sampled_from(["absent", "null", "a@x.test", "b@x.test"]),
    st.sampled_from(["absent", "null", "+15550001", "+15550002"]),
    st.sampled_from(["active", "past_due", "trialing"]),
)


def _tied_events(snapshots: list[tuple[int, int, str, str, str]], seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    events = []
    for second, millis, email, phone, sub_status in snapshots:
        event_dt = 1_767_000_000 + second
        customer: dict[str, Any] = {"customer_id": "fcus_tied"}
        for field, value in (("email", email), ("phone", phone)):
            if value != "absent":
                customer[field] = None if value == "null" else value
        ms = event_dt * 1000 + millis
        events.append(
            {
                "event_id": "evt_" + _ulid(ms, rng),
                "event_type": "customer.updated",
                "event_dt": event_dt,
                "object": {"customer": customer},
            }
        )
        session: dict[str, Any] = {"checkout_session_id": "fcs_tied", "status": "open"}
        for field, value in (("client_reference_id", email), ("metadata", phone)):
            if value != "absent":
                session[field] = None if value == "null" else (value if field != "metadata" else {"note": value})
        events.append(
            {
                "event_id": "evt_" + _ulid(ms, rng),
                "event_type": "checkout.session.updated",
                "event_dt": event_dt,
                "object": {"checkout_session": session},
            }
        )
        events.append(
            {
                "event_id": "evt_" + _ulid(ms, rng),
                "event_type": "customer.subscription.updated",
                "event_dt": event_dt,
                "object": {
                    "subscription": {"subscription_id": "fsub_tied", "customer": "fcus_tied", "status": sub_status}
                },
            }
        )
    return events


@settings(max_examples=200, deadline=None)
@given(snapshots=st.lists(_snapshot, min_size=2, max_size=8), seed=st.integers(0, 2**32))
def test_ties_in_time_and_explicit_nulls_never_depend_on_arrival(
    snapshots: list[tuple[int, int, str, str, str]], seed: int
) -> None:
    events = _tied_events(snapshots, seed)
    newest_first = sorted(events, key=lambda e: (e["event_dt"], e["event_id"]), reverse=True)
    in_order = _project(_rows(events), batch_size=len(events))
    rng = random.Random(seed)
    for _ in range(3):
        deliveries = events + [copy.deepcopy(e) for e in rng.sample(events, k=rng.randint(0, len(events)))]
        rng.shuffle(deliveries)
        assert _project(_rows(deliveries), batch_size=rng.randint(1, 4)) == in_order
    # ... and it is the newest snapshot's word: by the event's time, then its id (ULID: millisecond, then the rest).
    customer = in_order["customers.customers"]["fcus_tied"]["v"]
    for field in ("email", "phone"):
        said = [e["object"]["customer"] for e in newest_first if e["event_type"] == "customer.updated"]
        newest = next((c for c in said if field in c), None)
        assert customer.get(field) == (newest[field] if newest else None)
    order = in_order["orders.orders"]["fcs_tied"]["v"]
    for field in ("client_reference_id", "metadata"):
        said = [e["object"]["checkout_session"] for e in newest_first if e["event_type"] == "checkout.session.updated"]
        newest = next((c for c in said if field in c), None)
        assert order.get(field) == (newest[field] if newest else None)
    newest_sub = next(e for e in newest_first if e["event_type"] == "customer.subscription.updated")
    status = in_order["subscriptions.subscriptions"]["fsub_tied"]["v"]["status"]
    assert status == newest_sub["object"]["subscription"]["status"]


def test_a_state_read_for_its_facts_shows_what_loads_shows_and_refuses_to_merge() -> None:
    """``Mergeable.for_reading`` (documents, payment statuses) skips the merge keys: the facts are
    the same as ``loads`` gives, and an offer on it raises instead of winning against nothing."""
    import pytest

    from projections.mergeable import Mergeable

    state = Mergeable()
    state.offer("status", "complete", [1, 20, 0, "evt_b"])
    state.offer("amount_total", 4200, [0, 10, 0, "evt_a"])
    state.add("payment_intent_ids", "fpi_2")
    state.add("payment_intent_ids", "fpi_1")
    state.earliest("seen_at", 7)
    state.flag("split")
    text = state.dumps()
    read = Mergeable.for_reading(text)
    assert read.facts() == Mergeable.loads(text).facts()
    assert read.get("status") == "complete"
    assert read.items("payment_intent_ids") == ["fpi_1", "fpi_2"]
    with pytest.raises(TypeError):
        read.offer("status", "expired", [0, 0, 0, ""])
