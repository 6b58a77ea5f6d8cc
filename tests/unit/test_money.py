"""The money after the sale: refunds, disputes and voided authorizations reach the order through
its payment intents, whatever order they arrive in, and the amounts follow the contract."""

from __future__ import annotations

import copy
import random
from typing import Any

import pytest

from ledger_cli.scenarios import Checkout, cancel_events, checkout_events, dispute_events, refund_events
from projections.money import Money, order_money
from tests.unit.folding import project, rows, states


def _money(c: Checkout, events: list[dict[str, Any]]) -> Money:
    orders = states(events, "orders.orders")
    intents = states(events, "orders.order_payment_intents")
    order = orders[c.session_id]
    ids = sorted(
        set(order.items("payment_intent_ids"))
        | {i for i, s in intents.items() if s.get("checkout_session_id") == c.session_id}
    )
    return order_money(amount_total=order.get("amount_total"), order=order, intents=[(i, intents.get(i)) for i in ids])


def _orders_tables(events: list[dict[str, Any]], batch_size: int) -> dict[str, Any]:
    tables = project(rows(events), batch_size)
    return {k: v for k, v in tables.items() if k.startswith("orders.")}


def test_a_checkout_is_paid_in_full() -> None:
    c = Checkout(seed=1, split=True, items=2)
    money = _money(c, checkout_events(c))
    assert money.payment_status == "paid"
    assert money.amount_paid == c.total == money.amount_net
    assert [p["amount_received"] for p in money.payment_intents] == sorted(
        c.amounts, reverse=True
    ) or money.payment_intents
    assert not money.legs_mismatch


def test_a_partial_refund_counts_once_it_succeeds_and_a_failed_one_never() -> None:
    c = Checkout(seed=2)
    pending = refund_events(c, 500)[:1]
    assert _money(c, checkout_events(c) + pending).payment_status == "paid"  # listed, not counted
    assert _money(c, checkout_events(c) + pending).refunds[0]["status"] == "pending"
    events = checkout_events(c) + refund_events(c, 500) + refund_events(c, 700, at=150, outcome="failed")
    money = _money(c, events)
    assert money.payment_status == "partially_refunded"
    assert money.amount_refunded == 500
    assert money.amount_net == c.total - 500
    assert sorted(r["status"] for r in money.refunds) == ["failed", "succeeded"]


def test_a_full_refund_makes_the_order_refunded() -> None:
    c = Checkout(seed=3)
    money = _money(c, checkout_events(c) + refund_events(c, c.total))
    assert money.payment_status == "refunded"
    assert money.amount_net == 0


@pytest.mark.parametrize("seed", range(25))
def test_refunds_before_the_payment_duplicated_or_shuffled_give_the_same_money(seed: int) -> None:
    c = Checkout(seed=100 + seed, split=seed % 2 == 0)
    events = (
        checkout_events(c) + refund_events(c, 300) + refund_events(c, 200, at=120) + dispute_events(c, outcome="won")
    )
    expected = _orders_tables(events, len(events))
    rng = random.Random(seed)
    refunds_first = [e for e in events if not e["event_type"].startswith(("payment_intent.", "checkout."))]
    rest = [e for e in events if e not in refunds_first]
    rest += [copy.deepcopy(e) for e in rng.sample(events, k=rng.randint(1, len(events)))]
    rng.shuffle(rest)
    deliveries = refunds_first + rest  # the refunds and the dispute before any payment
    assert _orders_tables(deliveries, rng.randint(1, 5)) == expected
    money = _money(c, deliveries)
    assert (money.amount_refunded, money.amount_disputed, money.payment_status) == (500, 0, "partially_refunded")


@pytest.mark.parametrize(("outcome", "status", "disputed"), [("lost", "disputed", True), ("won", "paid", False)])
def test_a_dispute_is_counted_while_open_and_when_lost(outcome: str, status: str, disputed: bool) -> None:
    c = Checkout(seed=4)
    lifecycle = dispute_events(c, outcome=outcome)
    opened = _money(c, checkout_events(c) + lifecycle[:2])
    assert (opened.payment_status, opened.amount_disputed) == ("disputed", c.amounts[0])
    closed = _money(c, checkout_events(c) + lifecycle)
    assert closed.payment_status == status
    assert closed.amount_disputed == (c.amounts[0] if disputed else 0)
    assert closed.disputes[0]["status"] == outcome
    # the closing event arriving first changes nothing: a closed dispute is final
    assert _money(c, [lifecycle[2], *checkout_events(c), *lifecycle[:2]]) == closed


def test_a_voided_authorization_cancels_a_completed_manual_capture_order() -> None:
    c = Checkout(seed=5, capture="manual", split=True, items=2)
    authorized = _money(c, checkout_events(c))
    assert (authorized.payment_status, authorized.amount_paid) == ("unpaid", 0)
    voided = _money(c, checkout_events(c) + cancel_events(c))
    assert voided.payment_status == "canceled"
    assert [p["status"] for p in voided.payment_intents] == ["canceled", "canceled"]
    # voided first, completion later: the same
    assert _money(c, cancel_events(c) + checkout_events(c)) == voided


def test_legs_that_do_not_add_up_are_flagged() -> None:
    c = Checkout(seed=6, split=True, items=2)
    events = [
        e
        for e in checkout_events(c)
        if not (
            e["event_type"] == "payment_intent.succeeded"
            and e["object"]["payment_intent"]["payment_intent_id"] == c.intents[1]
        )
    ]
    money = _money(c, events)
    assert money.payment_status == "partially_paid"
    assert money.legs_mismatch


def test_refunds_above_what_was_paid_are_flagged_not_smoothed() -> None:
    c = Checkout(seed=31)
    part = c.total // 2 + 100  # two succeeded refunds that together exceed the payment
    money = _money(c, checkout_events(c) + refund_events(c, part) + refund_events(c, part, at=150))
    assert money.amount_refunded == 2 * part
    assert money.amount_net == c.total - 2 * part < 0
    assert money.over_refunded
    assert not money.refunded_and_disputed
    exact = _money(c, checkout_events(c) + refund_events(c, c.total))
    assert not exact.over_refunded


def test_an_intent_refunded_and_disputed_is_flagged_in_any_order() -> None:
    c = Checkout(seed=32)
    events = checkout_events(c) + refund_events(c, c.amounts[0]) + dispute_events(c, outcome="lost")
    for seed in range(5):
        shuffled = events[:]
        random.Random(seed).shuffle(shuffled)
        money = _money(c, shuffled)
        assert money.refunded_and_disputed
        assert money.amount_net == c.total - 2 * c.amounts[0]  # both subtracted: the flag says so
    won = _money(c, checkout_events(c) + refund_events(c, c.amounts[0]) + dispute_events(c, outcome="won"))
    assert not won.refunded_and_disputed  # a dispute won counts nothing
    assert not _money(c, checkout_events(c) + dispute_events(c, outcome="lost")).refunded_and_disputed
