"""Observations: their ids, the snapshot each stands for, and the reconcile settings."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from ledger.errors import ConfigError
from ledger.settings import load_settings, parse_duration
from projections.base import Deltas, LogRow
from projections.fields import newest_first_key
from projections.observations import KINDS, OBSERVED, as_snapshot, observed_event
from projections.orders import ORDERS

SESSION = {"checkout_session_id": "fcs_01", "status": "complete", "amount_total": 500, "test_mode": False}
AT = datetime(2026, 11, 1, 12, 0, 0, 123456, tzinfo=UTC)


def row_of(event: object) -> LogRow:
    body = json.loads(event.raw_body)  # type: ignore[attr-defined]
    return LogRow(position=7, event_type=body["event_type"], payload=body)


def test_the_id_depends_on_the_resource_and_its_content_not_on_when_it_was_seen() -> None:
    kind = KINDS["checkout_session"]
    first = observed_event(kind, SESSION, AT)
    assert first.event_id == observed_event(kind, dict(reversed(SESSION.items())), AT + timedelta(hours=1)).event_id
    assert first.event_id.startswith(f"{OBSERVED}:fcs_01:")
    assert first.event_id != observed_event(kind, {**SESSION, "status": "expired"}, AT).event_id
    assert first.event_id != observed_event(KINDS["payment_intent"], {"payment_intent_id": "fcs_01"}, AT).event_id
    body = json.loads(first.raw_body)
    assert body["object"] == {"checkout_session": SESSION}
    assert (body["source"], body["observed_at"]) == ("flex-api", "2026-11-01T12:00:00.123456Z")
    with pytest.raises(ValueError, match="without checkout_session_id"):
        observed_event(kind, {"status": "open"}, AT)


def test_an_observation_reads_as_the_snapshot_it_stands_for_at_its_own_time() -> None:
    snapshot = as_snapshot(row_of(observed_event(KINDS["checkout_session"], SESSION, AT)))
    assert snapshot.event_type == "checkout.session.observed"
    assert snapshot.position == 7
    assert newest_first_key(snapshot.payload)[1] == int(AT.timestamp() * 1_000_000)
    deltas = Deltas()
    assert ORDERS.fold(snapshot, deltas)
    order = deltas.by_table["orders"]["fcs_01"]
    assert (order.get("status"), order.get("amount_total")) == ("complete", 500)
    assert order.min_of("completed_at") == int(AT.timestamp() * 1_000_000)


def test_other_rows_and_empty_observations_are_left_alone() -> None:
    webhook = LogRow(position=1, event_type="checkout.session.completed", payload={"object": {}})
    assert as_snapshot(webhook) is webhook
    odd = LogRow(position=2, event_type=OBSERVED, payload={"object": {"price": {"id": "fprice_1"}}})
    assert as_snapshot(odd) is odd
    assert not ORDERS.fold(as_snapshot(odd), Deltas())


@pytest.mark.parametrize(
    ("text", "seconds"), [("72h", 259200), ("7d", 604800), ("90m", 5400), ("30s", 30), ("45", 45), ("1w", 604800)]
)
def test_durations(text: str, seconds: int) -> None:
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "h", "-1h", "0", "3y", "1e9d", "12 parsecs"])
def test_bad_durations_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match=r"duration|above 0"):
        parse_duration(text)


def test_reconcile_settings() -> None:
    default = load_settings({})
    assert (default.reconcile_interval, default.reconcile_window) == (900.0, timedelta(hours=72))
    chosen = load_settings({"LEDGER_RECONCILE_INTERVAL": "0", "LEDGER_RECONCILE_WINDOW": "7d"})
    assert (chosen.reconcile_interval, chosen.reconcile_window) == (0.0, timedelta(days=7))
    with pytest.raises(ConfigError, match="LEDGER_RECONCILE_WINDOW"):
        load_settings({"LEDGER_RECONCILE_WINDOW": "soon"})
    with pytest.raises(ConfigError, match="LEDGER_RECONCILE_INTERVAL"):
        load_settings({"LEDGER_RECONCILE_INTERVAL": "-5"})
