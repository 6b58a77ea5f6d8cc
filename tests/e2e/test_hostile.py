"""Hostile input at the door and in the log: what the database cannot hold is refused alone, at
the door when it can be seen there, else recorded and skipped by the projection it would stall."""

from __future__ import annotations

import json
import os
import random
import string
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import asyncpg
import httpx
import pytest

from ledger_cli.scenarios import Checkout, checkout_events
from tests.support import RunningServer, fulfillment_env, ledger_command, run_server, run_standin, signed_headers


@pytest.fixture
def server(db_dsn: str, tmp_path: Path) -> Iterator[RunningServer]:
    with run_server(tmp_path, {"LEDGER_DATABASE_URL": db_dsn, "LEDGER_RECONCILE_INTERVAL": "0"}) as s:
        yield s


def post(server: RunningServer, body: str) -> httpx.Response:
    return httpx.post(server.url + "/webhooks/flex", content=body.encode(), headers=signed_headers(body), timeout=30)


async def _count(dsn: str, table: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval(f"SELECT count(*) FROM {table}"))
    finally:
        await conn.close()


def count(dsn: str, table: str) -> int:
    import asyncio

    return asyncio.run(_count(dsn, table))


@pytest.mark.parametrize("field", ["event_id", "event_type"])
def test_ids_the_index_cannot_hold_are_refused_at_the_door_and_never_fail_their_batch_mates(
    server: RunningServer, db_dsn: str, field: str
) -> None:
    poison = {"event_id": "evt_poison", "event_type": "customer.created", "object": {}}
    poison[field] = "\U0001f4a5" * 1000  # 1,000 characters, 4,000 bytes
    good = [json.dumps(e) for c in range(40) for e in checkout_events(Checkout(seed=900 + c))[:1]]
    with ThreadPoolExecutor(16) as pool:  # the poison amid concurrent, group-committed deliveries
        replies = list(pool.map(lambda b: post(server, b), [*good[:20], json.dumps(poison), *good[20:]]))
    statuses = [r.status_code for r in replies]
    assert statuses[20] == 422
    assert "bytes" in replies[20].json()["error"]["message"]
    assert statuses[:20] + statuses[21:] == [200] * 40
    assert count(db_dsn, "quarantine") == 1


def test_a_nul_nested_a_thousand_levels_deep_is_quarantined_not_a_500(server: RunningServer, db_dsn: str) -> None:
    body = '{"event_id":"evt_deep","event_type":"x","object":' + '{"a":' * 950 + '"\\u0000"' + "}" * 950 + "}"
    reply = post(server, body)
    assert reply.status_code == 422, reply.text
    assert count(db_dsn, "quarantine") == 1
    assert count(db_dsn, "events") == 0


def test_an_event_a_projection_cannot_store_fails_alone_and_rebuild_skips_it_again(
    server: RunningServer, db_dsn: str
) -> None:
    poison = Checkout(seed=950)
    completed = checkout_events(poison)[-1]
    # a status far larger than an index entry can hold (the orders' status index)
    completed["object"]["checkout_session"]["status"] = "".join(random.choices(string.ascii_letters, k=10_240))
    assert post(server, json.dumps(completed)).status_code == 200
    poisoned_at = server.get("/v1/events", params={"limit": 10}).json()["data"][-1]["position"]
    later = Checkout(seed=951)
    last = 0
    for event in checkout_events(later):
        last = post(server, json.dumps(event)).json()["position"]
    order = server.get(f"/v1/orders/{later.session_id}", params={"min_position": last})
    assert order.status_code == 200, order.text  # the projection went on past the poison
    orders = next(f for f in server.get("/v1/projections").json()["data"] if f["name"] == "orders")
    assert orders["failed_events"] == 1
    assert orders["last_error_position"] == poisoned_at
    assert orders["state"] == "degraded"

    before_poison = server.get(f"/v1/orders/{poison.session_id}").text
    result = subprocess.run(
        [ledger_command(), "rebuild", "orders"],
        env={**os.environ, "LEDGER_DATABASE_URL": db_dsn},
        capture_output=True,
        text=True,
        timeout=120,
    )
    # live mode's decision, taken again: skipped and named, and the rebuilt orders are the live ones
    assert result.returncode == 0, result.stderr
    assert (
        "orders: skipped 1 event(s) that can never be applied, as live mode does (ledger status lists them): "
        f"positions {poisoned_at}" in result.stdout
    )
    assert "Traceback" not in result.stderr
    assert server.get(f"/v1/orders/{later.session_id}").json()["status"] == order.json()["status"]
    assert server.get(f"/v1/orders/{poison.session_id}").text == before_poison  # as live mode left it
    orders = next(f for f in server.get("/v1/projections").json()["data"] if f["name"] == "orders")
    assert orders["skipped_positions"] == [poisoned_at]
    assert orders["failed_events"] == 1


_ID_ROUTES = ["/v1/orders/{}", "/v1/orders/{}/events", "/v1/customers/{}", "/v1/subscriptions/{}", "/v1/orders/{}/sync"]
_TEXT_PARAMS = [
    ("/v1/orders", "customer_id"),
    ("/v1/orders", "status"),
    ("/v1/orders", "client_reference_id"),
    ("/v1/orders", "cursor"),
    ("/v1/orders", "payment_status"),
    ("/v1/events", "event_type"),
    ("/v1/events", "cursor"),
    ("/v1/inventory/adjustments", "cursor"),
    ("/v1/orders/fcs_x", "as_of"),
]
_NUMBER_PARAMS = [
    ("/v1/events", "after"),
    ("/v1/events", "limit"),
    ("/v1/inventory/adjustments", "after"),
    ("/v1/orders", "limit"),
    ("/v1/orders/fcs_x", "as_of_position"),
    ("/v1/projections", "min_position"),
]


@pytest.fixture
def flex_server(db_dsn: str, tmp_path: Path) -> Iterator[RunningServer]:
    """A server with Flex (the stand-in) to ask, so that the success page's sync answers too."""
    with run_standin() as standin:
        env = {"LEDGER_DATABASE_URL": db_dsn, "LEDGER_RECONCILE_INTERVAL": "0", **fulfillment_env(standin.api_base)}
        with run_server(tmp_path, env) as s:
            yield s


def test_no_generated_id_or_parameter_gets_a_5xx(flex_server: RunningServer) -> None:
    """Every read route, driven with generated text (control characters, any script, any length)
    and integers far outside any range: a 4xx or a 2xx, never a 5xx."""
    server = flex_server
    from urllib.parse import quote

    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    headers = {"authorization": "Bearer test-token"}
    text = st.text(min_size=0, max_size=300)
    numbers = st.integers(min_value=-(2**80), max_value=2**80).map(str) | text

    with httpx.Client(base_url=server.url, headers=headers, timeout=30) as client:

        @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
        @given(
            st.sampled_from(_ID_ROUTES),
            text,
            st.sampled_from(_TEXT_PARAMS + _NUMBER_PARAMS),
            st.one_of(text, numbers),
        )
        def probe(route: str, value: str, param: tuple[str, str], query: str) -> None:
            path = route.format(quote(value, safe="")) if value else route.format("x")
            method = "POST" if path.endswith("/sync") else "GET"
            reply = client.request(method, path)
            assert reply.status_code < 500, (method, path, reply.text)
            reply = client.get(param[0], params={param[1]: query})
            assert reply.status_code < 500, (param, query, reply.text)

        probe()
    assert "Traceback" not in server.log()
