"""Limits that keep one bad input one bad thing: ids checked in bytes at the door, line items
checked before fulfillment acts on them, failed credentials limited per address."""

from __future__ import annotations

import json
from typing import Any

import pytest

from api.throttle import FailureLimiter
from ledger.envelope import MAX_KEY_BYTES, oversized_key, parse_envelope
from ledger.errors import TooManyFailures, UnusableEvent
from projections.line_items import MAX_QUANTITY, UnusableLineItems, check_line_items, parse_line_items


def _body(obj: dict[str, Any]) -> bytes:
    return json.dumps({"event_id": "evt_1", "event_type": "x.y", "object": obj}).encode()


@pytest.mark.parametrize(
    "obj",
    [
        {"checkout_session": {"checkout_session_id": "c" * (MAX_KEY_BYTES + 1)}},
        {"payment_intent": {"id": "p" * (MAX_KEY_BYTES + 1)}},
        {"refund": {"refund_id": "r", "payment_intent": "é" * 128}},  # 256 bytes, 128 characters
        {"charge": {"refunds": {"data": [{"refund_id": "x" * 300}]}}},
        {"session": {"payment_intents": ["ok", "y" * 300]}},
        {"customer": {"customer_id": "c", "email": "e" * 300}},
    ],
)
def test_an_id_longer_than_an_index_holds_is_refused_with_where(obj: dict[str, Any]) -> None:
    with pytest.raises(UnusableEvent, match=f"longer than {MAX_KEY_BYTES} bytes"):
        parse_envelope(_body(obj))


def test_ids_that_fit_and_the_merchants_metadata_pass() -> None:
    fits = {"checkout_session": {"checkout_session_id": "c" * MAX_KEY_BYTES, "metadata": {"order_id": "m" * 5000}}}
    assert parse_envelope(_body(fits)).event_id == "evt_1"
    assert parse_envelope(_body({"description": 'long "quoted" text ' * 500})).event_id == "evt_1"
    assert oversized_key({"a": [{"b": {"price_id": "p" * 300}}]}) == "a.0.b.price_id"


def _items(*items: dict[str, Any]) -> tuple[list[Any], list[Any]]:
    return parse_line_items({"line_items": list(items)})


@pytest.mark.parametrize(
    ("items", "reason"),
    [
        ([{"line_item_id": "a", "quantity": 0}], "quantity 0"),
        ([{"line_item_id": "a", "quantity": -5}], "quantity -5"),
        ([{"line_item_id": "a", "quantity": MAX_QUANTITY + 1}], "not a whole number"),
        ([{"line_item_id": "a", "quantity": 1}, {"line_item_id": "a", "quantity": 2}], "listed twice"),
        ([{"line_item_id": "a" * 300, "quantity": 1}], "longer than"),
        ([{"line_item_id": "a", "quantity": 1, "price": {"price_id": "p" * 300}}], "longer than"),
        ([{"line_item_id": "a", "quantity": 1, "description": "x\x00y"}], "u0000"),
    ],
)
def test_line_items_fulfillment_cannot_act_on_are_refused(items: list[Any], reason: str) -> None:
    raw, parsed = _items(*items)
    with pytest.raises(UnusableLineItems, match=reason):
        check_line_items(raw, parsed)


def test_sane_line_items_pass() -> None:
    raw, parsed = _items({"line_item_id": "a", "quantity": 1}, {"line_item_id": "b", "quantity": MAX_QUANTITY})
    check_line_items(raw, parsed)


def test_failures_are_limited_per_address_within_the_window() -> None:
    now = [0.0]
    limiter = FailureLimiter(3, 10.0, clock=lambda: now[0])
    for _ in range(3):
        limiter.check("a")
        limiter.failed("a")
    with pytest.raises(TooManyFailures) as info:
        limiter.check("a")
    assert info.value.retry_after == 10
    limiter.check("b")  # another address is untouched
    now[0] = 5.0
    with pytest.raises(TooManyFailures) as info:
        limiter.check("a")
    assert info.value.retry_after == 5
    now[0] = 10.01  # the oldest failures have left the window
    limiter.check("a")


def test_the_limiter_forgets_the_oldest_addresses_beyond_its_size_and_can_be_off() -> None:
    limiter = FailureLimiter(1, 60.0, max_addresses=2)
    for address in ("a", "b", "c"):
        limiter.failed(address)
    limiter.check("a")  # forgotten
    with pytest.raises(TooManyFailures):
        limiter.check("c")
    off = FailureLimiter(0, 60.0)
    for _ in range(100):
        off.failed("a")
    off.check("a")
