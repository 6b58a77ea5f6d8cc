"""Projections: the same state for any delivery order, duplicates and batching."""

from __future__ import annotations

import copy
import random
from typing import Any

import asyncpg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledger_cli.scenarios import (
    Checkout,
    cancel_at_period_end_events,
    checkout_events,
    renewal_events,
    renewal_invoice_id,
)
from tests.conftest import DatabaseFactory
from tests.projection_support import append, project, snapshot


async def test_split_cart_is_one_order_with_two_payments(pool: asyncpg.Pool) -> None:
    c = Checkout(seed=1, split=True)
    await append(pool, checkout_events(c))
    await project(pool)
    state = await snapshot(pool)
    [order] = state["orders"]
    assert order["status"] == "complete"
    assert order["checkout_session_id"] == c.session_id
    assert order["customer_id"] == c.customer_id
    assert order["customer_email"] == c.email
    assert order["amount_total"] == c.total
    assert [p["payment_intent_id"] for p in order["payment_intents"]] == sorted(c.intents)
    assert {p["status"] for p in order["payment_intents"]} == {"succeeded"}
    assert sum(p["amount"] for p in order["payment_intents"]) == c.total
    assert order["fulfillment"]["status"] == "pending"
    assert order["completed_at"] == "2026-01-01T00:00:20Z"
    [customer] = state["customers"]
    assert customer["order_ids"] == [c.session_id]
    assert customer["first_name"] == "Sam"


async def test_payments_before_the_session_still_attach(pool: asyncpg.Pool) -> None:
    c = Checkout(seed=2)
    events = checkout_events(c)
    payments = [e for e in events if e["event_type"].startswith("payment_intent.")]
    await append(pool, payments)
    await project(pool)
    assert (await snapshot(pool))["orders"] == []
    await append(pool, [e for e in events if e not in payments])
    await project(pool)
    [order] = (await snapshot(pool))["orders"]
    assert [p["status"] for p in order["payment_intents"]] == ["succeeded"]


async def test_late_open_event_never_downgrades_a_completed_order(pool: asyncpg.Pool) -> None:
    c = Checkout(seed=3)
    completed = checkout_events(c)[-1]
    stale = copy.deepcopy(completed)
    stale.update(event_id="evt_stale", event_type="checkout.session.updated", event_dt=c.start + 99)
    stale["object"]["checkout_session"].update(status="open", amount_total=1)
    await append(pool, [completed, stale])
    await project(pool)
    [order] = (await snapshot(pool))["orders"]
    assert order["status"] == "complete"
    assert order["amount_total"] == c.total


async def test_subscription_lifecycle_and_payment_state(pool: asyncpg.Pool) -> None:
    c = Checkout(seed=4, mode="subscription")
    events = checkout_events(c)
    await append(pool, list(reversed(events)))
    await project(pool)
    state = await snapshot(pool)
    [sub] = state["subscriptions"]
    assert sub["status"] == "active"
    assert sub["payment_status"] == "paid"
    assert sub["checkout_session_id"] == c.session_id
    assert sub["customer_id"] == c.customer_id
    assert state["customers"][0]["subscription_ids"] == [c.subscription_id]
    deleted = {
        "event_dt": c.start + 500,
        "event_id": "evt_del",
        "event_type": "customer.subscription.deleted",
        "object": {"subscription": {"subscription_id": c.subscription_id, "status": "active"}},
    }
    await append(pool, [deleted])
    await project(pool)
    [sub] = (await snapshot(pool))["subscriptions"]
    assert sub["status"] == "canceled"


@pytest.mark.parametrize("billing_reason", [True, False])
async def test_invoices_and_entitlement_through_renewals(pool: asyncpg.Pool, billing_reason: bool) -> None:
    c = Checkout(seed=40, mode="subscription", billing_reason=billing_reason)
    first = renewal_invoice_id(c, 0)
    events = [*checkout_events(c), *renewal_events(c, 1), *renewal_events(c, 2, outcome="failed")]
    await append(pool, list(reversed(events)))
    await project(pool)
    state = await snapshot(pool)
    [sub] = state["subscriptions"]
    assert sub["status"] == "past_due"
    assert sub["entitled"] is False
    assert sub["current_period_start"] == "2026-03-02T00:00:12Z"  # the second renewal's period
    assert sorted(sub["invoice_ids"]) == sorted([first, renewal_invoice_id(c, 1), renewal_invoice_id(c, 2)])
    invoices = {i["invoice_id"]: i for i in state["invoices"]}
    assert {i: d["status"] for i, d in invoices.items()} == {
        first: "paid",
        renewal_invoice_id(c, 1): "paid",
        renewal_invoice_id(c, 2): "open",  # its payment failed: still to be paid
    }
    one = invoices[renewal_invoice_id(c, 1)]
    assert one["subscription_id"] == c.subscription_id
    assert one["customer_id"] == c.customer_id
    assert (one["amount_due"], one["amount_paid"]) == (c.total, c.total)
    assert (one["period_start"], one["period_end"]) == ("2026-01-31T00:00:12Z", "2026-03-02T00:00:12Z")
    assert one["paid_at"] == "2026-01-31T00:00:14Z"
    assert one["billing_reason"] == ("subscription_cycle" if billing_reason else None)
    assert invoices[first]["billing_reason"] == ("subscription_create" if billing_reason else None)
    # without billing_reason, the completed checkout naming its invoice tells the first from renewals
    assert (one["renewal"], invoices[first]["renewal"]) == (True, False)

    await append(pool, renewal_events(c, 2, outcome="recovered")[-3:])  # paid a day later: active again
    await project(pool)
    [sub] = (await snapshot(pool))["subscriptions"]
    assert (sub["status"], sub["entitled"]) == ("active", True)
    await append(pool, cancel_at_period_end_events(c, 2))
    await project(pool)
    [sub] = (await snapshot(pool))["subscriptions"]
    assert (sub["status"], sub["entitled"], sub["cancel_at_period_end"]) == ("canceled", False, True)


async def test_a_trialing_subscription_is_entitled(pool: asyncpg.Pool) -> None:
    c = Checkout(seed=41, mode="subscription")
    trial = {
        "event_dt": c.start + 5,
        "event_id": "evt_trial",
        "event_type": "customer.subscription.created",
        "object": {"subscription": {"subscription_id": c.subscription_id, "status": "trialing"}},
    }
    await append(pool, [trial])
    await project(pool)
    [sub] = (await snapshot(pool))["subscriptions"]
    assert (sub["status"], sub["entitled"]) == ("trialing", True)


@pytest.mark.parametrize("arrival", ["in order", "reversed"])
async def test_same_second_updates_resolve_by_event_content_not_arrival(pool: asyncpg.Pool, arrival: str) -> None:
    """Equal event_dt: the ULID millisecond of the event id, then the id, decides (contract: "How
    state is decided"); a state that can be left (past_due -> active) has no rank over another."""

    def update(status: str, event_id: str) -> dict[str, Any]:
        return {
            "event_dt": 1_767_225_700,
            "event_id": event_id,
            "event_type": "customer.subscription.updated",
            "object": {"subscription": {"subscription_id": "fsub_tie", "status": status, "customer": "fcus_t"}},
        }

    # the same second; the ids' ULID milliseconds say past_due came first, then the recovery
    events = [update("past_due", "evt_01KDP3M5E00000000000000000"), update("active", "evt_01KDP3M5E10000000000000000")]
    await append(pool, events if arrival == "in order" else events[::-1])
    await project(pool)
    [sub] = (await snapshot(pool))["subscriptions"]
    assert sub["status"] == "active"


async def test_customer_deleted_marks_and_keeps(pool: asyncpg.Pool) -> None:
    c = Checkout(seed=5)
    events = checkout_events(c)
    deleted = {
        "event_dt": c.start + 2,
        "event_id": "evt_cdel",
        "event_type": "customer.deleted",
        "object": {"customer": {"customer_id": c.customer_id}},
    }
    await append(pool, [deleted, *events])
    await project(pool)
    [customer] = (await snapshot(pool))["customers"]
    assert customer["deleted"] is True
    assert customer["email"] == c.email
    assert customer["order_ids"] == [c.session_id]


async def test_unknown_types_and_shapes_are_counted_not_fatal(pool: asyncpg.Pool) -> None:
    odd: list[dict[str, Any]] = [
        {"event_id": "e1", "event_type": "checkout.session.completed", "object": "nope"},
        {"event_id": "e2", "event_type": "checkout.session.completed", "object": {"checkout_session": {"status": 5}}},
        {"event_id": "e3", "event_type": "charge.dispute.created", "object": {}},
        {"event_id": "e4", "event_type": "payment_intent.succeeded", "object": {"payment_intent": {"amount": "x"}}},
    ]
    await append(pool, odd + checkout_events(Checkout(seed=6)))
    await project(pool)
    assert len((await snapshot(pool))["orders"]) == 1
    ignored = await pool.fetchval("SELECT ignored_events FROM projection_state WHERE name = 'orders'")
    failed = await pool.fetchval("SELECT sum(failed_events) FROM projection_state")
    assert ignored >= 4
    assert failed == 0


def _lifetime(c: Checkout) -> list[dict[str, Any]]:
    """A checkout's events; a subscription's also renew twice (once after a failed payment)."""
    if c.mode != "subscription":
        return checkout_events(c)
    return [*checkout_events(c), *renewal_events(c, 1), *renewal_events(c, 2, outcome="recovered")]


def _deliveries(rng: random.Random, checkouts: list[Checkout]) -> list[dict[str, Any]]:
    """Every event, shuffled, with some re-sent as exact copies and some as the same fact under a new id."""
    events = [e for c in checkouts for e in _lifetime(c)]
    extra = []
    for e in rng.sample(events, k=rng.randint(0, len(events))):
        copy_ = copy.deepcopy(e)
        if rng.random() < 0.5:
            copy_["event_id"] = f"evt_resent_{rng.getrandbits(64):x}"
        extra.append(copy_)
    deliveries = events + extra
    rng.shuffle(deliveries)
    return deliveries


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    shapes=st.lists(st.tuples(st.sampled_from(["payment", "subscription"]), st.booleans()), min_size=1, max_size=3),
    seed=st.integers(0, 2**32),
    chunks=st.integers(1, 4),
    batch_size=st.integers(1, 7),
)
async def test_any_order_duplicates_and_batching_give_the_in_order_state(
    databases: DatabaseFactory, shapes: list[tuple[str, bool]], seed: int, chunks: int, batch_size: int
) -> None:
    checkouts = [Checkout(seed=seed + i, mode=mode, split=split) for i, (mode, split) in enumerate(shapes)]
    in_order = [e for c in checkouts for e in _lifetime(c)]
    async with databases.fresh() as dsn:
        pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
        try:
            await append(pool, in_order)
            await project(pool)
            expected = await snapshot(pool)
        finally:
            await pool.close()
    deliveries = _deliveries(random.Random(seed), checkouts)
    async with databases.fresh() as dsn:
        pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
        try:
            size = -(-len(deliveries) // chunks)
            for i in range(0, len(deliveries), size):
                await append(pool, deliveries[i : i + size])
                await project(pool, batch_size=batch_size)
            actual = await snapshot(pool)
        finally:
            await pool.close()
    assert actual == expected


async def test_two_completed_sessions_for_one_merchant_order_are_flagged(pool: asyncpg.Pool) -> None:
    first, second, other = Checkout(seed=81), Checkout(seed=82), Checkout(seed=83)
    second.reference = first.reference  # the shopper paid the same merchant order twice
    await append(pool, checkout_events(first) + checkout_events(second) + checkout_events(other))
    await project(pool)
    orders = {o["checkout_session_id"]: o for o in (await snapshot(pool))["orders"]}
    assert orders[first.session_id]["flags"] == ["duplicate_payment"]
    assert orders[second.session_id]["flags"] == ["duplicate_payment"]
    assert orders[other.session_id]["flags"] == []
