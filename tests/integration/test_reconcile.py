"""Reconcile against the project's Flex stand-in (in process, over ASGI): what is recorded, what
is not, and the state it leads to, whatever order observations and webhooks arrive in."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest

from ledger.db import create_pool
from ledger_cli.flex_standin import FlexStandIn
from ledger_cli.scenarios import Checkout, checkout_events, refund_events, renewal_events, renewal_invoice_id
from projections.observations import OBSERVED
from reactors.flex_client import FlexClient
from reactors.fulfillment import intake_once, queued_sessions
from reactors.reconcile import ReconcileFailed, reconcile
from tests.conftest import DatabaseFactory
from tests.projection_support import append, project, snapshot

KEY = "fsk_test_reconcile"
LONG_AGO = datetime(2025, 1, 1, tzinfo=UTC)  # the scenarios' checkouts happen in 2026


def flex(standin: FlexStandIn, **kwargs: Any) -> FlexClient:
    transport = httpx.ASGITransport(app=standin)  # type: ignore[arg-type]  # an ASGI app typed with plain dicts
    return FlexClient("http://flex.test/v1", KEY, transport=transport, backoff_base=0.01, **kwargs)


@pytest.fixture
async def standin() -> FlexStandIn:
    return FlexStandIn(api_key=KEY)


@pytest.fixture
async def client(standin: FlexStandIn) -> AsyncIterator[FlexClient]:
    c = flex(standin)
    yield c
    await c.aclose()


def checkouts(n: int, start_seed: int = 1) -> list[Checkout]:
    return [Checkout(seed=start_seed + i, split=i % 3 == 0, items=1 + i % 2) for i in range(n)]


async def head(pool: asyncpg.Pool) -> int:
    return int(await pool.fetchval("SELECT position FROM ledger_head"))


async def run(pool: asyncpg.Pool, client: FlexClient, **kwargs: Any) -> Any:
    async with pool.acquire() as conn:
        return await reconcile(conn, [client], since=kwargs.pop("since", LONG_AGO), **kwargs)


async def test_lost_webhooks_are_recorded_once_and_the_rest_is_known(
    pool: asyncpg.Pool, standin: FlexStandIn, client: FlexClient
) -> None:
    all_lost, completion_lost, delivered = checkouts(3, 1), checkouts(2, 10), checkouts(2, 20)
    for c in [*all_lost, *completion_lost, *delivered]:
        standin.learn(checkout_events(c))
    await append(pool, [e for c in delivered for e in checkout_events(c)])
    await append(pool, [e for c in completion_lost for e in checkout_events(c)[:-1]])
    await project(pool)  # the projection is caught up for some of it ...
    await append(pool, [checkout_events(delivered[1])[-1] | {"event_id": "evt_unprojected_copy"}])
    # ... and not for the rest: what the log shows includes what the projection has not applied yet

    report = await run(pool, client)
    kinds = report.kinds
    assert kinds["checkout_session"].examined == 7
    assert kinds["checkout_session"].recorded == 5  # the sessions no webhook brought
    assert kinds["payment_intent"].recorded == sum(len(c.intents) for c in all_lost)
    assert report.total("examined") == report.total("known") + report.total("recorded")
    assert report.total("missed") == report.total("recorded")  # all of it money: completions and payments
    recorded = {o.id for o in report.observations if o.kind == "checkout_session"}
    assert recorded == {c.session_id for c in [*all_lost, *completion_lost]}

    await project(pool)
    orders = {o["checkout_session_id"]: o for o in (await snapshot(pool))["orders"]}
    for c in [*all_lost, *completion_lost, *delivered]:
        order = orders[c.session_id]
        assert order["status"] == "complete"
        assert order["payment_status"] == "paid"
        assert order["amount_paid"] == c.total
        assert sorted(p["payment_intent_id"] for p in order["payment_intents"]) == sorted(c.intents)

    before = await head(pool)
    again = await run(pool, client)
    assert again.total("recorded") == 0
    assert again.total("known") == again.total("examined") == report.total("examined")
    assert await head(pool) == before


async def test_an_order_learned_by_reconcile_ends_as_its_webhooks_make_it(
    databases: DatabaseFactory, standin: FlexStandIn, client: FlexClient
) -> None:
    """Observation first and the late webhooks after, or the webhooks alone: the same order."""
    c = Checkout(seed=31, split=True, items=2)
    events = checkout_events(c) + refund_events(c, c.total // 3)
    standin.learn(events)
    states = []
    for observe_first in (True, False):
        async with databases.fresh() as dsn:
            p = await create_pool(dsn, min_size=1, max_size=4)
            try:
                if observe_first:
                    report = await run(p, client)
                    assert report.total("recorded") > 0
                    await project(p)
                await append(p, list(reversed(events)))
                await project(p)
                if not observe_first:
                    assert (await run(p, client)).total("recorded") == 0  # nothing the log lacks
                states.append(await snapshot(p))
            finally:
                await p.close()
    assert states[0] == states[1]
    [order] = states[0]["orders"]
    assert order["payment_status"] == "partially_refunded"
    assert order["completed_at"] == datetime.fromtimestamp(c.start + 20, UTC).isoformat().replace("+00:00", "Z")


async def test_two_runs_at_once_record_each_observation_once(
    db_dsn: str, pool: asyncpg.Pool, standin: FlexStandIn
) -> None:
    for c in checkouts(30, 40):
        standin.learn(checkout_events(c))
    clients = [flex(standin), flex(standin)]
    try:
        async with pool.acquire() as a, pool.acquire() as b:
            reports = await asyncio.gather(
                reconcile(a, [clients[0]], since=LONG_AGO, page_size=7),
                reconcile(b, [clients[1]], since=LONG_AGO, page_size=7),
            )
    finally:
        for client in clients:
            await client.aclose()
    expected = 30 + sum(len(c.intents) for c in checkouts(30, 40))
    assert sum(r.total("recorded") for r in reports) == expected
    assert await pool.fetchval("SELECT count(*) FROM events WHERE event_type = $1", OBSERVED) == expected
    assert await pool.fetchval("SELECT count(DISTINCT event_id) FROM events") == await head(pool)


async def test_flex_failing_mid_run_records_nothing(pool: asyncpg.Pool, standin: FlexStandIn) -> None:
    for c in checkouts(9, 60):
        standin.learn(checkout_events(c))
    # the first page answers; every try at the second fails (more than the client's attempts)
    standin.fault("checkout_sessions", script=[{}] + [{"status": 500}] * 10)
    client = flex(standin, attempts=3)
    try:
        with pytest.raises(ReconcileFailed, match="500") as failed:
            await run(pool, client, page_size=4)
    finally:
        await client.aclose()
    assert await head(pool) == 0
    assert failed.value.report is not None
    assert failed.value.report.outcome == "failed"
    run_row = await pool.fetchrow("SELECT outcome, recorded, error FROM reconcile_runs")
    assert run_row["outcome"] == "failed"
    assert run_row["recorded"] == 0
    assert "500" in run_row["error"]


async def test_429_is_honoured(pool: asyncpg.Pool, standin: FlexStandIn, client: FlexClient) -> None:
    standin.learn(checkout_events(Checkout(seed=70)))
    standin.fault("checkout_sessions", script=[{"status": 429, "retry_after": "1"}])
    report = await run(pool, client)
    assert report.kinds["checkout_session"].recorded == 1
    calls = [c for c in standin.calls if c["route"] == "checkout_sessions"]
    assert [c["status"] for c in calls] == [429, 200]
    assert calls[1]["at"] - calls[0]["at"] >= 0.95


async def test_dry_run_records_nothing_and_says_what_it_would(
    pool: asyncpg.Pool, standin: FlexStandIn, client: FlexClient
) -> None:
    c = Checkout(seed=80)
    standin.learn(checkout_events(c))
    report = await run(pool, client, dry_run=True)
    assert {(o.kind, o.id, o.position) for o in report.observations} >= {("checkout_session", c.session_id, None)}
    assert report.total("recorded") == 1 + len(c.intents)
    assert await head(pool) == 0
    assert await pool.fetchval("SELECT count(*) FROM reconcile_runs") == 0


async def test_the_window_bounds_the_paging(pool: asyncpg.Pool, standin: FlexStandIn, client: FlexClient) -> None:
    old, new = Checkout(seed=90, start=1_700_000_000), Checkout(seed=91, start=1_800_000_000)
    for c in (old, new):
        standin.learn(checkout_events(c))
    report = await run(pool, client, since=datetime.fromtimestamp(1_750_000_000, UTC), page_size=1)
    assert {o.id for o in report.observations if o.kind == "checkout_session"} == {new.session_id}
    assert report.kinds["checkout_session"].examined == 1
    # the page that reached past the window was the last one asked for
    assert len([c for c in standin.calls if c["route"] == "checkout_sessions"]) == 2


async def test_observed_complete_sessions_are_queued_for_fulfillment_once(
    pool: asyncpg.Pool, standin: FlexStandIn, client: FlexClient
) -> None:
    done, still_open = Checkout(seed=100), Checkout(seed=101)
    standin.learn(checkout_events(done))
    opened = {"object": {"checkout_session": still_open.session("open")}, "event_dt": still_open.start}
    standin.learn([opened | {"event_id": "evt_open", "event_type": "checkout.session.created"}])
    report = await run(pool, client)
    # an open session is drift too (Flex may send no webhook for it), but no money was missed
    assert report.kinds["checkout_session"].recorded == 2
    assert report.kinds["checkout_session"].missed == 1
    async with pool.acquire() as conn:
        while await intake_once(conn):
            pass
        assert await queued_sessions(conn, [done.session_id, still_open.session_id]) == {done.session_id: "pending"}
        await append(pool, checkout_events(done))  # the late webhooks: still one queue row
        while await intake_once(conn):
            pass
        assert await conn.fetchval("SELECT count(*) FROM fulfillment_queue") == 1


async def test_run_window_and_counts_are_recorded(pool: asyncpg.Pool, standin: FlexStandIn, client: FlexClient) -> None:
    standin.learn(checkout_events(Checkout(seed=110)))
    since = datetime.now(UTC) - timedelta(days=3650)
    report = await run(pool, client, since=since)
    row = await pool.fetchrow("SELECT * FROM reconcile_runs")
    assert row["outcome"] == "ok"
    assert row["since"] == since
    assert (row["examined"], row["known"], row["recorded"], row["missed"]) == (
        report.total("examined"),
        report.total("known"),
        report.total("recorded"),
        report.total("missed"),
    )
    assert (row["first_position"], row["last_position"]) == (1, report.total("recorded"))


async def test_a_lost_renewal_payment_is_recovered_from_flex_s_invoices(
    pool: asyncpg.Pool, standin: FlexStandIn, client: FlexClient
) -> None:
    c = Checkout(seed=90, mode="subscription")
    events = [*checkout_events(c), *renewal_events(c, 1)]
    standin.learn(events)
    paid = {"invoice.paid", "invoice.payment_succeeded"}
    lost_renewal = [
        e for e in events if e["event_type"] in paid and e["object"]["invoice"]["invoice_id"] != c.invoice_id
    ]
    await append(
        pool, [e for e in events if e not in lost_renewal and e["event_type"] != "customer.subscription.updated"]
    )
    await project(pool)
    renewal = renewal_invoice_id(c, 1)
    state = await snapshot(pool)
    assert {i["invoice_id"]: i["status"] for i in state["invoices"]}[renewal] == "open"

    report = await run(pool, client)
    assert report.kinds["invoice"].examined == 2
    assert report.kinds["invoice"].recorded == 1  # the renewal's payment; the first invoice is known
    assert report.kinds["invoice"].missed == 1  # money: a paid invoice no webhook brought
    assert report.kinds["subscription"].recorded == 1  # active, its period moved on
    await project(pool)
    state = await snapshot(pool)
    assert {i["invoice_id"]: i["status"] for i in state["invoices"]}[renewal] == "paid"
    [sub] = state["subscriptions"]
    assert (sub["status"], sub["entitled"], sub["latest_invoice"]) == ("active", True, renewal)
    assert (await run(pool, client)).total("recorded") == 0  # known now
