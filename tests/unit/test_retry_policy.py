"""The fulfillment reactor's retry policy, in milliseconds: what a failed attempt leads to."""

from __future__ import annotations

import pytest

from reactors.flex_client import PermanentFlexError, TransientFlexError
from reactors.fulfillment import next_step


def _backoff(attempts: int) -> float:
    return float(2 * 2**attempts)


def test_a_transient_failure_is_tried_again_after_its_backoff() -> None:
    step = next_step(
        attempts=1, failure=TransientFlexError("Flex API answered 503"), max_attempts=8, backoff=_backoff, cap=600
    )
    assert (step.park, step.delay) == (False, 4.0)
    assert step.reason == "Flex API answered 503"


def test_retry_after_is_honoured_when_longer_but_never_beyond_the_cap() -> None:
    later = TransientFlexError("Flex API answered 429", status=429, retry_after=120)
    assert next_step(attempts=1, failure=later, max_attempts=8, backoff=_backoff, cap=600).delay == 120
    absurd = TransientFlexError("Flex API answered 429", status=429, retry_after=1_000_000_000)
    assert next_step(attempts=1, failure=absurd, max_attempts=8, backoff=_backoff, cap=600).delay == 600
    sooner = TransientFlexError("Flex API answered 429", status=429, retry_after=1)
    assert next_step(attempts=3, failure=sooner, max_attempts=8, backoff=_backoff, cap=600).delay == 16.0


@pytest.mark.parametrize("attempts", [8, 9])
def test_the_last_transient_failure_parks_the_session_saying_why(attempts: int) -> None:
    step = next_step(
        attempts=attempts, failure=TransientFlexError("Flex API timed out"), max_attempts=8, backoff=_backoff, cap=600
    )
    assert step.park
    assert step.reason == f"gave up after {attempts} attempts: Flex API timed out"


def test_a_permanent_failure_parks_at_once_and_its_reason_is_storable() -> None:
    step = next_step(
        attempts=1,
        failure=PermanentFlexError("line item 'a\x00b' is listed twice" + "x" * 5000, status=200),
        max_attempts=8,
        backoff=_backoff,
        cap=600,
    )
    assert step.park
    assert "\x00" not in step.reason
    assert len(step.reason) == 2000
