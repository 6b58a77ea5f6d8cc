"""Renewals over real HTTP: the installed server, the project's Flex stand-in, real signatures.

Every paid renewal invoice is fulfilled once (one adjustment per subscription item), the first
invoice never (its checkout's sale is), whatever order and how many times the webhooks arrive, with
or without Flex's billing_reason; off when LEDGER_FULFILL_RENEWALS=off; a Flex failure is retried,
parked visibly, and `ledger fulfill retry` finishes it; a rebuild reproduces it without Flex."""

from __future__ import annotations

import copy
import json
import os
import random
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from ledger_cli.scenarios import Checkout, checkout_events, renewal_events, renewal_invoice_id
from ledger_cli.send import tell_standin
from tests.support import (
    RunningServer,
    StandIn,
    console_signed_in,
    deliver,
    fulfillment_env,
    ledger_command,
    run_server,
    run_standin,
)

CYCLES = (1, 2, 3)


@pytest.fixture
def standin() -> Iterator[StandIn]:
    with run_standin() as s:
        yield s


def _lifetime(c: Checkout) -> list[dict[str, Any]]:
    return [*checkout_events(c), *(e for cycle in CYCLES for e in renewal_events(c, cycle))]


def _shuffled_with_duplicates(events: list[dict[str, Any]], seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    out = events + [copy.deepcopy(e) for e in rng.sample(events, k=len(events) // 2)]
    rng.shuffle(out)
    return out


def _invoice(server: RunningServer, invoice_id: str) -> dict[str, Any]:
    reply = server.get(f"/v1/invoices/{invoice_id}")
    assert reply.status_code == 200, reply.text
    return dict(reply.json())


def _wait(server: RunningServer, invoice_id: str, status: str, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        reply = server.get(f"/v1/invoices/{invoice_id}")  # 404 until the projection has it
        if reply.status_code == 200 and reply.json()["fulfillment"]["status"] == status:
            return dict(reply.json())
        assert time.monotonic() < deadline, f"{invoice_id} did not reach {status}: {reply.text}"
        time.sleep(0.05)


def _adjustments(server: RunningServer) -> list[dict[str, Any]]:
    head = server.get("/v1/projections").json()["data"][0]["head"]
    reply = server.get("/v1/inventory/adjustments", params={"limit": 1000, "min_position": head})
    assert reply.headers["ledger-projection-fresh"] == "true"
    return list(reply.json()["data"])


def _subscription_reads(standin: StandIn) -> list[dict[str, Any]]:
    calls = httpx.get(standin.url + "/_standin/calls", timeout=10).json()["calls"]
    return [call for call in calls if call["route"] == "subscription"]


def _settle(server: RunningServer, checkouts: list[Checkout]) -> None:
    """Until every renewal is fulfilled and every checkout's sale is recorded."""
    for c in checkouts:
        for cycle in CYCLES:
            _wait(server, renewal_invoice_id(c, cycle), "fulfilled")
        deadline = time.monotonic() + 60
        while server.get(f"/v1/orders/{c.session_id}").json().get("fulfillment", {}).get("status") != "fulfilled":
            assert time.monotonic() < deadline, f"{c.session_id} was not fulfilled"
            time.sleep(0.05)


@pytest.mark.parametrize("billing_reason", [True, False])
def test_each_paid_renewal_is_fulfilled_once_whatever_the_arrival(
    db_dsn: str, tmp_path: Path, standin: StandIn, billing_reason: bool
) -> None:
    checkouts = [
        Checkout(seed=300 + i, mode="subscription", items=1 + i % 2, billing_reason=billing_reason) for i in range(3)
    ]
    checkouts.append(Checkout(seed=310, mode="subscription", test_mode=True, billing_reason=billing_reason))
    events = [e for c in checkouts for e in _lifetime(c)]
    tell_standin(standin.url, events, {c.session_id: c.line_items() for c in checkouts})
    env = {"LEDGER_DATABASE_URL": db_dsn, **fulfillment_env(standin.api_base)}
    with run_server(tmp_path, env) as server:
        deliver(server, _shuffled_with_duplicates(events, seed=int(billing_reason)))
        _settle(server, checkouts)
        adjustments = _adjustments(server)

        renewals = [a for a in adjustments if a["reason"] == "renewal"]
        expected = {
            (renewal_invoice_id(c, cycle), item["subscription_item_id"]): -item["quantity"]
            for c in checkouts
            for cycle in CYCLES
            for item in c.subscription_items()
        }
        assert {(a["invoice_id"], a["line_item_id"]): a["quantity_delta"] for a in renewals} == expected
        assert len(renewals) == len(expected), "one adjustment per (invoice, subscription item)"
        assert all(a["checkout_session_id"] is None for a in renewals)
        assert not {renewal_invoice_id(c, 0) for c in checkouts} & {a["invoice_id"] for a in renewals}
        sales = [a for a in adjustments if a["reason"] == "sale"]
        assert len(sales) == len({(a["checkout_session_id"], a["line_item_id"]) for a in sales})
        assert {a["checkout_session_id"] for a in sales} == {c.session_id for c in checkouts}

        for c in checkouts:
            first = _invoice(server, renewal_invoice_id(c, 0))
            assert (first["renewal"], first["fulfillment"]["status"]) == (False, "not_applicable")
            renewal = _invoice(server, renewal_invoice_id(c, 1))
            assert renewal["renewal"] is True
            ids = [li["line_item_id"] for li in renewal["fulfillment"]["line_items"]]
            assert ids == [i["subscription_item_id"] for i in c.subscription_items()]

        test_sub = checkouts[-1]
        live = server.get("/v1/inventory").json()["data"]
        assert test_sub.prices[0]["price_id"] not in {row["price_id"] for row in live}, "test renewals: test stock"
        test_stock = server.get("/v1/inventory", params={"test_mode": "true"}).json()["data"]
        [row] = [r for r in test_stock if r["price_id"] == test_sub.prices[0]["price_id"]]
        assert row["quantity_sold"] == test_sub.quantities[0] * (1 + len(CYCLES))  # the sale, then each renewal

        calls = standin.calls()
        rebuilt = subprocess.run(
            [ledger_command(), "rebuild", "--all"],
            env={**os.environ, "LEDGER_DATABASE_URL": db_dsn},
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert rebuilt.returncode == 0, rebuilt.stderr
        assert _adjustments(server) == adjustments
        assert standin.calls() == calls, "a rebuild never calls Flex"


def test_renewals_off_fulfills_none(db_dsn: str, tmp_path: Path, standin: StandIn) -> None:
    c = Checkout(seed=320, mode="subscription")
    events = _lifetime(c)
    tell_standin(standin.url, events, {})
    env = {"LEDGER_DATABASE_URL": db_dsn, "LEDGER_FULFILL_RENEWALS": "off", **fulfillment_env(standin.api_base)}
    with run_server(tmp_path, env) as server:
        last = deliver(server, events)
        deadline = time.monotonic() + 60
        while server.get(f"/v1/orders/{c.session_id}").json().get("fulfillment", {}).get("status") != "fulfilled":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        renewal = server.get(f"/v1/invoices/{renewal_invoice_id(c, 1)}", params={"min_position": last}).json()
        assert (renewal["renewal"], renewal["fulfillment"]["status"]) == (True, "not_applicable")
        assert [a for a in _adjustments(server) if a["reason"] == "renewal"] == []
        assert _subscription_reads(standin) == []


def test_a_flex_failure_is_retried_then_parked_then_retried_on_request(
    db_dsn: str, tmp_path: Path, standin: StandIn
) -> None:
    c = Checkout(seed=330, mode="subscription")
    events = [*checkout_events(c), *renewal_events(c, 1)]
    tell_standin(standin.url, events, {})
    standin.fault("subscription", always={"status": 503})
    env = {
        "LEDGER_DATABASE_URL": db_dsn,
        **fulfillment_env(standin.api_base),
        "LEDGER_FULFILLMENT_MAX_ATTEMPTS": "3",
    }
    invoice_id = renewal_invoice_id(c, 1)
    with run_server(tmp_path, env) as server:
        deliver(server, events)
        failed = _wait(server, invoice_id, "failed")
        assert "503" in failed["fulfillment"]["error"]
        # three attempts, each retried by the Flex client itself, then parked
        assert len(_subscription_reads(standin)) >= 3
        status = subprocess.run(
            [ledger_command(), "status", "--json"],
            env={**os.environ, "LEDGER_DATABASE_URL": db_dsn},
            capture_output=True,
            text=True,
            timeout=60,
        )
        [reactor] = [p for p in json.loads(status.stdout)["projections"] if p["name"] == "fulfillment"]
        assert reactor["failed_sessions"] == 1, "visible where an operator looks"

        with console_signed_in(server) as console:  # where an operator looks
            failed_page = console.get("/console/fulfillment").text
            assert invoice_id in failed_page
            assert f'href="/console/subscriptions/{c.subscription_id}"' in failed_page
            page = console.get(f"/console/subscriptions/{c.subscription_id}").text
            row = page[page.index(f'data-testid="invoice-{invoice_id}"') :]
            assert '<span data-testid="fulfillment">failed</span>' in row[: row.index("</tr>")]
            assert "503" in row[: row.index("</tr>")]

        standin.clear_faults()
        retried = subprocess.run(
            [ledger_command(), "fulfill", "retry", invoice_id],
            env={**os.environ, "LEDGER_DATABASE_URL": db_dsn},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert retried.returncode == 0, retried.stderr
        done = _wait(server, invoice_id, "fulfilled")
        assert done["fulfillment"]["error"] is None
        with console_signed_in(server) as console:
            page = console.get(f"/console/subscriptions/{c.subscription_id}").text
            row = page[page.index(f'data-testid="invoice-{invoice_id}"') :]
            assert '<span data-testid="fulfillment">fulfilled</span>' in row[: row.index("</tr>")]
            assert console.get("/console/subscriptions/fsub_nope").status_code == 404
        renewals = [a for a in _adjustments(server) if a["reason"] == "renewal"]
        assert {a["invoice_id"] for a in renewals} == {invoice_id}
        assert len(renewals) == len(c.subscription_items())


def test_a_lost_renewal_payment_is_recovered_by_reconcile_and_fulfilled_once(
    db_dsn: str, tmp_path: Path, standin: StandIn
) -> None:
    c = Checkout(seed=340, mode="subscription")
    events = [*checkout_events(c), *renewal_events(c, 1)]
    tell_standin(standin.url, events, {c.session_id: c.line_items()})
    lost = {"invoice.paid", "invoice.payment_succeeded"}
    first_payment = [e for e in checkout_events(c) if e["event_type"] == "invoice.payment_succeeded"]
    env = {"LEDGER_DATABASE_URL": db_dsn, "LEDGER_RECONCILE_INTERVAL": "0", **fulfillment_env(standin.api_base)}
    invoice_id = renewal_invoice_id(c, 1)
    with run_server(tmp_path, env) as server:
        deliver(server, [e for e in events if e["event_type"] not in lost or e in first_payment])
        assert _wait(server, invoice_id, "not_applicable")["status"] == "open"  # the log never heard it was paid

        def reconcile() -> None:
            run = subprocess.run(
                [ledger_command(), "reconcile", "--since", "3650d"],
                env={**os.environ, **env},
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert run.returncode == 0, run.stderr

        reconcile()
        done = _wait(server, invoice_id, "fulfilled")
        assert done["status"] == "paid"
        reconcile()  # again: nothing new, nothing fulfilled twice
        renewals = [a for a in _adjustments(server) if a["reason"] == "renewal"]
        assert sorted(a["line_item_id"] for a in renewals) == sorted(
            i["subscription_item_id"] for i in c.subscription_items()
        )
        assert {a["invoice_id"] for a in renewals} == {invoice_id}
