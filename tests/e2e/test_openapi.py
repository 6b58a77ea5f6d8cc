"""The published OpenAPI document is right for clients: schemathesis, driven by it, finds no
undocumented status, no reply that breaks its schema, no valid request refused and no invalid one
accepted, against the real server holding real orders (refunds, disputes, a voided authorization,
a subscription, test and live)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from ledger_cli.scenarios import Checkout, cancel_events, checkout_events, dispute_events, refund_events
from ledger_cli.send import tell_standin
from tests.support import API_TOKEN, fulfillment_env, run_server, run_standin, signed_headers

# Examples per operation and phase; about two minutes on the 2-core CI machine.
EXAMPLES = int(os.environ.get("LEDGER_FUZZ_EXAMPLES", "450"))
SEED = os.environ.get("LEDGER_FUZZ_SEED", "20261129")


def _orders() -> list[dict[str, Any]]:
    refunded = Checkout(seed=71)
    disputed = Checkout(seed=72, split=True, items=2)
    voided = Checkout(seed=73, capture="manual")
    subscription = Checkout(seed=74, mode="subscription")
    test = Checkout(seed=75, test_mode=True)
    return [
        *checkout_events(refunded),
        *refund_events(refunded, refunded.total // 3),
        *refund_events(refunded, 100, at=150, outcome="failed"),
        *checkout_events(disputed),
        *dispute_events(disputed, outcome="lost"),
        *checkout_events(voided),
        *cancel_events(voided),
        *checkout_events(subscription),
        *checkout_events(test),
    ]


def test_the_openapi_document_holds_under_fuzzing(db_dsn: str, tmp_path: Path) -> None:
    # Flex (the stand-in) knows the orders, so the success page's sync answers from it too
    env = {"LEDGER_DATABASE_URL": db_dsn, "LEDGER_RECONCILE_INTERVAL": "0"}
    with run_standin() as standin, run_server(tmp_path, {**env, **fulfillment_env(standin.api_base)}) as server:
        tell_standin(standin.url, _orders(), {})
        last = 0
        with httpx.Client(timeout=30) as client:
            for event in _orders():
                body = json.dumps(event)
                reply = client.post(server.url + "/webhooks/flex", content=body, headers=signed_headers(body))
                assert reply.status_code == 200, reply.text
                last = reply.json()["position"]
        orders = server.get("/v1/orders", params={"min_position": last, "limit": 100}).json()["data"]
        assert {o["payment_status"] for o in orders} >= {"partially_refunded", "disputed", "canceled", "paid"}
        started = time.monotonic()
        result = subprocess.run(
            [
                str(Path(sys.executable).parent / "st"),
                "run",
                f"{server.url}/schema/openapi.json",
                "--header",
                f"Authorization: Bearer {API_TOKEN}",
                "--checks",
                "all",
                "--phases",
                "examples,coverage,fuzzing,stateful",
                "--max-examples",
                str(EXAMPLES),
                "--seed",
                SEED,
                "--no-color",
            ],
            capture_output=True,
            text=True,
            timeout=1200,
        )
        seconds = time.monotonic() - started
        summary = "\n".join(result.stdout.splitlines()[-40:])
        assert result.returncode == 0, f"schemathesis found problems (seed {SEED}):\n{result.stdout[-8000:]}"
        assert "5xx" not in summary or "Server error" not in summary
        print(f"schemathesis: {seconds:.0f} s, seed {SEED}\n{summary}")
        assert "Traceback" not in server.log()


def test_a_client_generated_from_the_live_document_reads_an_order(db_dsn: str, tmp_path: Path) -> None:
    """openapi-python-client, as a merchant's engineer would run it, on the served document: the
    operations are named as a person would name them, and the client reads a real order typed."""
    checkout = Checkout(seed=76, split=True, items=2)
    with run_server(tmp_path, {"LEDGER_DATABASE_URL": db_dsn, "LEDGER_RECONCILE_INTERVAL": "0"}) as server:
        last = 0
        for event in checkout_events(checkout):
            body = json.dumps(event)
            reply = httpx.post(server.url + "/webhooks/flex", content=body, headers=signed_headers(body), timeout=30)
            assert reply.status_code == 200, reply.text
            last = reply.json()["position"]
        (tmp_path / "openapi.json").write_bytes(httpx.get(server.url + "/schema/openapi.json", timeout=30).content)
        bin_dir = str(Path(sys.executable).parent)
        generated = subprocess.run(
            [
                str(Path(bin_dir) / "openapi-python-client"),
                "generate",
                "--path",
                str(tmp_path / "openapi.json"),
                "--meta",
                "none",
                "--output-path",
                str(tmp_path / "generated" / "flex_ledger_client"),
            ],
            capture_output=True,
            text=True,
            timeout=300,
            env={**os.environ, "PATH": bin_dir + os.pathsep + os.environ.get("PATH", "")},  # its ruff pass
        )
        assert generated.returncode == 0, generated.stdout + generated.stderr
        assert "Warning" not in generated.stdout, generated.stdout  # every schema understood
        modules = {p.stem for p in (tmp_path / "generated" / "flex_ledger_client" / "api").rglob("*.py")}
        assert {"get_order", "list_orders", "sync_order", "get_readiness", "receive_flex_webhook"} <= modules
        sys.path.insert(0, str(tmp_path / "generated"))
        try:
            from flex_ledger_client import AuthenticatedClient
            from flex_ledger_client.api.orders import get_order
            from flex_ledger_client.models import Order

            with AuthenticatedClient(base_url=server.url, token=API_TOKEN) as client:
                reply = get_order.sync_detailed(checkout.session_id, client=client, min_position=last)
                assert reply.status_code == 200, reply.content
                order = reply.parsed
                assert isinstance(order, Order)
                assert order.checkout_session_id == checkout.session_id
                assert order.amount_total == checkout.total
                assert len(order.payment_intents) == 2
                assert int(reply.headers["ledger-position"]) >= last
                missing = get_order.sync_detailed("fcs_unknown", client=client)
                assert missing.status_code == 404
        finally:
            sys.path.remove(str(tmp_path / "generated"))
            for name in [m for m in sys.modules if m.startswith("flex_ledger_client")]:
                del sys.modules[name]
