"""Is an invoice a renewal? Flex's billing_reason when it says; else what the subscription's
completed checkout names; undecided (None) until then, so arrival order never changes the answer."""

from __future__ import annotations

from typing import Any

import pytest

from projections.invoices import renewal_of
from projections.mergeable import Mergeable

KEY = [0, 0, 0, ""]


def _state(**fields: Any) -> Mergeable:
    state = Mergeable()
    for name, value in fields.items():
        if isinstance(value, list):
            for item in value:
                state.add(name, item)
        else:
            state.offer(name, value, KEY)
    return state


def _invoice(**fields: Any) -> Mergeable:
    return _state(subscription_id="fsub_1", **fields)


@pytest.mark.parametrize(
    ("reason", "expected"),
    [("subscription_cycle", True), ("subscription_create", False), ("manual", False), ("subscription_update", False)],
)
def test_billing_reason_decides_when_flex_gives_it(reason: str, expected: bool) -> None:
    assert renewal_of("in_2", _invoice(billing_reason=reason), None) is expected


def test_without_a_reason_it_waits_for_the_completed_checkout() -> None:
    invoice = _invoice(payment_intent_id="fpi_2")
    assert renewal_of("in_2", invoice, None) is None  # nothing known of the subscription yet
    assert renewal_of("in_2", invoice, _state(checkout_status="open", checkout_invoice="in_1")) is None
    assert renewal_of("in_2", invoice, _state(checkout_status="complete", checkout_invoice="in_1")) is True
    assert renewal_of("in_1", invoice, _state(checkout_status="complete", checkout_invoice="in_1")) is False


def test_a_checkout_that_names_no_invoice_is_matched_by_its_payment() -> None:
    checkout = _state(checkout_status="complete", checkout_payment_intents=["fpi_1"])
    assert renewal_of("in_1", _invoice(payment_intent_id="fpi_1"), checkout) is False
    assert renewal_of("in_2", _invoice(payment_intent_id="fpi_2"), checkout) is True
    assert renewal_of("in_2", _invoice(), checkout) is None  # the invoice names no payment: cannot tell
    assert renewal_of("in_2", _invoice(payment_intent_id="fpi_2"), _state(checkout_status="complete")) is None


def test_an_invoice_of_no_subscription_is_never_a_renewal() -> None:
    assert renewal_of("in_9", _state(), None) is False
