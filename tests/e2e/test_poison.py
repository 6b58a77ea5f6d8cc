"""One bad thing stays one bad thing: an id no index can hold is refused at the door, and one an
earlier release let into the log fails alone, in live mode and in ``ledger rebuild`` alike."""

from __future__ import annotations

import asyncio
import json
import os
import random
import string
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from ledger.log import EventLog, NewEvent
from ledger_cli.scenarios import Checkout
from tests.e2e.test_fulfillment import assert_fulfilled_once, complete
from tests.support import StandIn, fulfillment_env, ledger_command, run_server, run_standin

# random letters: a run of one letter compresses, and PostgreSQL would then hold it in an index
LONG = "fcs_" + "".join(random.Random(21).choices(string.ascii_letters, k=3000))


def _completed(session_id: str, event_id: str) -> dict[str, Any]:
    return {
        "event_dt": int(time.time()),
        "event_id": event_id,
        "event_type": "checkout.session.completed",
        "object": {"checkout_session": {"checkout_session_id": session_id, "status": "complete", "amount_total": 100}},
    }


@pytest.fixture
def standin() -> Iterator[StandIn]:
    with run_standin() as s:
        yield s


@pytest.mark.parametrize(
    "where",
    [
        {"checkout_session": {"checkout_session_id": LONG, "status": "complete"}},
        {"payment_intent": {"payment_intent_id": "pi_1", "customer": "fcus_" + "é" * 200}},
        {"checkout_session": {"checkout_session_id": "fcs_ok", "payment_intents": ["fpi_1", "fpi_" + "x" * 300]}},
        {"checkout_session": {"checkout_session_id": "fcs_ok", "client_reference_id": "r" * 256}},
        {"customer": {"customer_id": "fcus_1", "email": "a" * 300 + "@example.com"}},
        {"invoice": {"invoice_id": "in_1", "subscription": {"subscription_id": "sub_" + "s" * 400}}},
    ],
    ids=["session", "customer-utf8", "listed-intent", "client-reference", "email", "nested-subscription"],
)
def test_an_id_no_index_can_hold_is_refused_at_the_door_and_quarantined(server, where: dict[str, Any]) -> None:  # type: ignore[no-untyped-def]
    body = json.dumps({"event_dt": 1, "event_id": f"evt_{os.urandom(6).hex()}", "event_type": "x.y", "object": where})
    reply = server.post_event(body)
    assert reply.status_code == 422, reply.text
    assert "longer than 255 bytes" in reply.json()["error"]["message"]
    # a long value in the merchant's own metadata is theirs, not a key: accepted
    ok = json.dumps(
        {
            "event_dt": 1,
            "event_id": f"evt_{os.urandom(6).hex()}",
            "event_type": "x.y",
            "object": {"metadata": {"order_id": "m" * 3000}},
        }
    )
    assert server.post_event(ok).status_code == 200


def test_a_poison_event_an_earlier_release_logged_fails_alone_live_and_in_rebuild(
    db_dsn: str, tmp_path: Path, standin: StandIn
) -> None:
    # What an earlier release let in: a completed session whose id no index can hold.
    async def log_poison() -> int:
        pool = await asyncpg.create_pool(db_dsn, min_size=1, max_size=1)
        try:
            body = json.dumps(_completed(LONG, "evt_poison_from_before")).encode()
            [result] = await EventLog(pool).append(
                [NewEvent(event_id="evt_poison_from_before", event_type="checkout.session.completed", raw_body=body)]
            )
            return result.position
        finally:
            await pool.close()

    poison_at = asyncio.run(log_poison())
    env = {"LEDGER_DATABASE_URL": db_dsn, **fulfillment_env(standin.api_base)}
    with run_server(tmp_path, env) as server:
        # the same poison at today's door: refused, kept in quarantine
        assert server.post_event(json.dumps(_completed(LONG, "evt_poison_today"))).status_code == 422
        good = [complete(server, seed=seed)[0] for seed in (101, 102, 103)]
        for c in good:
            assert_fulfilled_once(server, c.session_id)
        followers = {f["name"]: f for f in server.get("/v1/projections").json()["data"]}
        assert followers["orders"]["skipped_positions"] == [poison_at]
        assert followers["orders"]["state"] == "degraded"
        assert followers["fulfillment"]["skipped_positions"] == [poison_at]
        assert followers["fulfillment"]["lag"] == 0 or followers["fulfillment"]["position"] > poison_at
        assert followers["fulfillment"]["worker_failures"] == 0  # it never restarted over it
        assert all(f["worker_failures"] == 0 for f in followers.values())

    cli_env = {**os.environ, "LEDGER_DATABASE_URL": db_dsn}
    rebuilt = subprocess.run(
        [ledger_command(), "rebuild", "orders"], env=cli_env, capture_output=True, text=True, timeout=120
    )
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert (
        "skipped 1 event(s) that can never be applied, as live mode does (ledger status lists them): "
        f"positions {poison_at}" in rebuilt.stdout
    )
    status = subprocess.run([ledger_command(), "status"], env=cli_env, capture_output=True, text=True, timeout=60)
    assert f"orders: skipped events that can never be applied, at positions {poison_at}" in status.stdout
    # and the rebuilt orders are the live ones: every good checkout still fulfilled
    with run_server(tmp_path, env) as server:
        for c in good:
            assert_fulfilled_once(server, c.session_id)


def test_rebuild_skips_a_poison_event_live_mode_never_recorded(db_dsn: str, tmp_path: Path) -> None:
    """A log from before failures were kept by position: the door's rule decides (an id longer than
    any index holds can never be applied), and the rebuild lists it; anything else still stops it."""

    async def prepare() -> int:
        pool = await asyncpg.create_pool(db_dsn, min_size=1, max_size=1)
        try:
            log = EventLog(pool)
            c = Checkout(seed=5)
            from ledger_cli.scenarios import checkout_events

            events = [
                NewEvent(event_id=e["event_id"], event_type=e["event_type"], raw_body=json.dumps(e).encode())
                for e in checkout_events(c)
            ]
            await log.append(events)
            body = json.dumps(_completed(LONG, "evt_old_poison")).encode()
            [poison] = await log.append(
                [NewEvent(event_id="evt_old_poison", event_type="checkout.session.completed", raw_body=body)]
            )
            return poison.position
        finally:
            await pool.close()

    poison_at = asyncio.run(prepare())
    env = {**os.environ, "LEDGER_DATABASE_URL": db_dsn}
    rebuilt = subprocess.run([ledger_command(), "rebuild"], env=env, capture_output=True, text=True, timeout=120)
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert "orders: skipped 1 event(s)" in rebuilt.stdout
    assert f"positions {poison_at}" in rebuilt.stdout
    status = json.loads(
        subprocess.run(
            [ledger_command(), "status", "--json"], env=env, capture_output=True, text=True, timeout=60
        ).stdout
    )
    orders = next(p for p in status["projections"] if p["name"] == "orders")
    assert orders["skipped_positions"] == [poison_at]
    assert orders["failed_events"] == 1
