"""``ledger demo``: the zero-setup tour.

An embedded PostgreSQL in a temporary directory, the project's Flex stand-in, the real server,
and realistic checkouts sent through the real endpoint as signed webhooks: a one-item order, a
split cart, a subscription, one delivered out of order with a duplicate, one whose
line-items call fails twice before succeeding, and one whose webhooks are all lost, recovered by
``ledger reconcile`` from the stand-in's API. Prints what came of it, then keeps serving until
Ctrl-C and leaves no process behind.
"""

from __future__ import annotations

import base64
import contextlib
import io
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

from ledger.errors import ConfigError
from ledger_cli.processes import free_port, ledger_command, wait_until_ok
from ledger_cli.processes import stop as stop_process
from ledger_cli.scenarios import PERIOD, Checkout, checkout_events, refund_events, renewal_events, renewal_invoice_id
from ledger_cli.send import send, tell_standin

__all__ = ["run_demo"]

FLEX_KEY = "fsk_test_demo"


def _stop_postgres(pgdata: Path) -> None:
    """A safety net: no postgres of ours outlives the demo, whatever happened to the server."""
    for proc in psutil.process_iter(["name", "cmdline"]):
        with contextlib.suppress(psutil.Error):
            if proc.info["name"] == "postgres" and str(pgdata) in " ".join(proc.info["cmdline"] or []):
                proc.terminate()
                with contextlib.suppress(psutil.TimeoutExpired):
                    proc.wait(10)


def _money(cents: int | None) -> str:
    return f"${cents / 100:,.2f}" if isinstance(cents, int) else "-"


def _summary(
    api: httpx.Client,
    orders: list[tuple[str, str]],
    renewals: list[str],
    calls: int,
    url: str,
    token: str,
    secret: str,
    work: Path,
) -> str:
    out = io.StringIO()
    w = out.write
    w(
        "\nflex-ledger demo: every event below reached the ledger as a signed webhook through the real endpoint,\n"
        "except for the order whose webhooks were lost: `ledger reconcile` recovered it from Flex's API.\n\n"
    )
    w("Orders\n")
    for label, session_id in orders:
        o = api.get(f"/v1/orders/{session_id}").json()
        payments = ", ".join(f"{_money(p['amount'])} {p['status']}" for p in o["payment_intents"])
        f = o["fulfillment"]
        w(
            f"  {label:<28} {session_id}  {o['status']:<8} {_money(o['amount_total']):>10}  "
            f"payments: {payments or '-'}{'  [test mode]' if o['test_mode'] else ''}\n"
        )
        w(
            f"  {'':<28} money: {o['payment_status']}, paid {_money(o['amount_paid'])}, "
            f"refunded {_money(o['amount_refunded'])}, net {_money(o['amount_net'])}\n"
        )
        w(
            f"  {'':<28} fulfillment: {f['status']}, {len(f['line_items'])} line item(s)"
            f"{', subscription ' + o['subscription_id'] if o['subscription_id'] else ''}\n"
        )
    w("\nRenewals (a subscription's paid invoices after its checkout, fulfilled as checkouts are)\n")
    for invoice_id in renewals:
        i = api.get(f"/v1/invoices/{invoice_id}").json()
        f = i["fulfillment"]
        w(
            f"  {i['subscription_id']}  invoice {invoice_id}  {i['status']} {_money(i['amount_paid'])}, "
            f"period {i['period_start']} to {i['period_end']}\n"
            f"  {'':<28} fulfillment: {f['status']}, {len(f['line_items'])} item(s) (adjustments: reason renewal)\n"
        )
    w("\nInventory adjustments (the feed an inventory system polls, oldest first)\n")
    # As of everything logged so far: the inventory projection catches up on its own schedule.
    head = api.get("/v1/projections").json()["data"][0]["head"]
    for a in api.get("/v1/inventory/adjustments", params={"limit": 100, "min_position": head}).json()["data"]:
        w(
            f"  #{a['position']:<4} {a['checkout_session_id'] or a['invoice_id']}  {a['line_item_id']:<20} "
            f"{a['price_id'] or '-':<14} {a['quantity_delta']:>+4} {a['reason']}{' (test)' if a['test_mode'] else ''}\n"
        )
    w(
        f"\nFlex API calls made: {calls} (each order's line items, one failing twice before succeeding; "
        "the subscription's items for its renewal)\n"
    )
    first = orders[1][1]
    auth = f'-H "Authorization: Bearer {token}"'
    w(f"\nThe ledger is running at {url}\n  API token:      {token}\n  webhook secret: {secret}\n")
    w(f"\nThe operator console: {url}/console (sign in with the API token above)\n")
    w(f"  the recovered order, its timeline and time travel: {url}/console/orders/{orders[-1][1]}\n")
    w(f"API docs: {url}/schema\n\nTry:\n")
    w(f"  curl -s {auth} {url}/v1/orders/{first}\n")
    w(f'  curl -s {auth} "{url}/v1/orders?limit=10"\n')
    w(f"  curl -s {auth} {url}/v1/inventory\n")
    w(f"  curl -s {auth} {url}/v1/inventory/adjustments\n")
    w(f"  curl -s {auth} {url}/v1/projections\n")
    w(f"  ledger send split-cart --url {url}/webhooks/flex --secret {secret}\n")
    recovered = orders[-1][1]
    w(f"  curl -s -X POST {auth} {url}/v1/orders/{recovered}/sync   # ask Flex now (the success page)\n")
    w(f"  curl -s {auth} {url}/v1/reconcile\n")
    w(f"  LEDGER_DATA_DIR={work} python3 dev.py status   # commands on this demo's own database\n")
    w("\nPress Ctrl-C to stop (the embedded database and the stand-in stop with it).\n")
    return out.getvalue()


def _received(log: Path, *, api_url: str, token: str, timeout: float = 30) -> str:
    """What the demo's receiver (``ledger destinations listen``) verified and printed: waits until
    every inventory adjustment the API lists has arrived."""
    with httpx.Client(base_url=api_url, headers={"authorization": f"Bearer {token}"}, timeout=30) as api:
        wanted = len(api.get("/v1/inventory/adjustments?limit=1000").json()["data"])
    deadline = time.monotonic() + timeout
    lines: list[str] = []
    while time.monotonic() < deadline:
        lines = [line for line in log.read_text().splitlines() if line[:1].isdigit()]
        if sum(" inventory.adjusted " in line for line in lines) >= wanted:
            break
        time.sleep(0.2)
    shown = "".join(f"  {line}\n" for line in sorted(lines, key=lambda line: int(line.split()[0]))[:12])
    more = f"  … and {len(lines) - 12} more\n" if len(lines) > 12 else ""
    return (
        f"\nYour systems' side: {len(lines)} signed messages arrived at `ledger destinations listen` "
        f"(position, type, webhook-id; each verified with the destination's secret):\n{shown}{more}"
        "  `ledger destinations list` shows the destination; `replay --from-position 1` sends them again."
    )


def run_demo(port: int = 8000, data_dir: Path | None = None) -> int:
    work = Path(tempfile.mkdtemp(prefix="ledger-demo-")) if data_dir is None else data_dir
    work.mkdir(parents=True, exist_ok=True)
    secret = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
    token = "flt_demo_" + secrets.token_urlsafe(16)
    server = standin = listener = None
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    started = time.monotonic()
    try:
        port = free_port(port)
        flex_port = free_port()
        print(f"demo: starting (data in {work})", flush=True)
        # Own sessions: Ctrl-C reaches the demo only, which stops everything in order.
        standin = subprocess.Popen(
            [ledger_command(), "flex-standin", "--port", str(flex_port), "--api-key", FLEX_KEY, "--delay", "0.05"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        env = {
            **os.environ,
            "LEDGER_DATABASE_URL": "",
            "LEDGER_DATA_DIR": str(work),
            "LEDGER_WEBHOOK_SECRETS": secret,
            "LEDGER_API_TOKENS": token,
            "FLEX_API_KEY": FLEX_KEY,
            "FLEX_API_BASE_URL": f"http://127.0.0.1:{flex_port}/v1",
            "FLEX_API_TIMEOUT": "5",
            "LEDGER_FULFILLMENT_RETRY_BASE": "0.5",
            "LEDGER_DELIVERY_ALLOW_PRIVATE": "true",  # the demo's receiver listens on this machine
        }
        with open(work / "server.log", "wb") as log:
            server = subprocess.Popen(
                [ledger_command(), "serve", "--port", str(port), "--log-level", "warning"],
                env=env,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        url = f"http://127.0.0.1:{port}"
        wait_until_ok(f"http://127.0.0.1:{flex_port}/_standin/calls", standin, "the Flex stand-in")
        wait_until_ok(url + "/readyz", server, "the ledger server")
        # Your systems' side: a receiver that verifies what it is sent, and a destination pointing at it.
        listen_port = free_port()
        added = subprocess.run(
            [ledger_command(), "destinations", "add", f"http://127.0.0.1:{listen_port}/hooks", "--mode", "all"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if added.returncode != 0:
            raise RuntimeError(f"ledger destinations add failed: {added.stderr.strip()}")
        destination_secret = next(
            line.split(":", 1)[1].strip() for line in added.stdout.splitlines() if line.startswith("secret:")
        )
        with open(work / "listen.log", "wb") as listened:
            listener = subprocess.Popen(
                [
                    *(ledger_command(), "destinations", "listen", "--quiet"),
                    *("--port", str(listen_port), "--secret", destination_secret),
                ],
                stdout=listened,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        print(f"demo: ledger serving on {url}, Flex stand-in on :{flex_port}; sending checkouts", flush=True)

        checkouts: list[tuple[str, Checkout, dict[str, Any]]] = [
            ("one-item order", Checkout(seed=1, start=int(time.time()) - 300), {}),
            ("split cart (HSA/FSA + card)", Checkout(seed=2, split=True, items=2, start=int(time.time()) - 240), {}),
            # begun a period ago: its first renewal has been paid since
            ("subscription", Checkout(seed=3, mode="subscription", start=int(time.time()) - PERIOD - 180), {}),
            (
                "out of order, duplicated",
                Checkout(seed=4, start=int(time.time()) - 120),
                {"out_of_order": True, "duplicates": 2},
            ),
            ("line items failed twice", Checkout(seed=5, items=2, start=int(time.time()) - 60), {}),
            ("partially refunded", Checkout(seed=6, start=int(time.time()) - 50), {}),
            ("test mode", Checkout(seed=7, test_mode=True, start=int(time.time()) - 40), {}),
            ("webhooks lost, reconciled", Checkout(seed=8, items=2, start=int(time.time()) - 30), {"lost": True}),
        ]
        # after the sale: half of one order refunded (a pending refund, then succeeded)
        refunded, subscribed = checkouts[5][1], checkouts[2][1]
        after_sale = {
            refunded.session_id: refund_events(refunded, refunded.total // 2, at=20),
            subscribed.session_id: renewal_events(subscribed, 1),  # and a period later, renewed
        }
        for _, checkout, _ in checkouts:  # Flex knows every session, its payments and its line items
            tell_standin(
                f"http://127.0.0.1:{flex_port}",
                checkout_events(checkout) + after_sale.get(checkout.session_id, []),
                {checkout.session_id: checkout.line_items()},
            )
        httpx.post(
            f"http://127.0.0.1:{flex_port}/_standin/faults",
            json={"session_id": checkouts[-1][1].session_id, "script": [{"status": 500}, {"status": 503}]},
        ).raise_for_status()
        quiet = io.StringIO()
        for _, checkout, options in checkouts:
            events = checkout_events(checkout) + after_sale.get(checkout.session_id, [])
            if options.pop("lost", False):
                continue  # every webhook of this one is lost on the way: only Flex's API knows it
            if send(events, url=url + "/webhooks/flex", secret=secret, out=quiet, **options):
                print(quiet.getvalue(), file=sys.stderr)
                raise RuntimeError("a demo webhook was refused; see above")
        reconciled = subprocess.run(
            [ledger_command(), "reconcile"], env=env, capture_output=True, text=True, timeout=120, check=False
        )
        if reconciled.returncode != 0:
            raise RuntimeError(f"ledger reconcile failed: {reconciled.stderr.strip()}")

        with httpx.Client(base_url=url, headers={"authorization": f"Bearer {token}"}, timeout=30) as api:
            deadline = time.monotonic() + 60
            for _, checkout, _ in checkouts:
                while (
                    api.get(f"/v1/orders/{checkout.session_id}").json().get("fulfillment", {}).get("status")
                    != "fulfilled"
                ):
                    if time.monotonic() > deadline:
                        raise RuntimeError("fulfillment did not finish in 60 s; see " + str(work / "server.log"))
                    time.sleep(0.1)
            renewal = renewal_invoice_id(subscribed, 1)
            while api.get(f"/v1/invoices/{renewal}").json().get("fulfillment", {}).get("status") != "fulfilled":
                if time.monotonic() > deadline:
                    raise RuntimeError("the renewal was not fulfilled in 60 s; see " + str(work / "server.log"))
                time.sleep(0.1)
            calls = httpx.get(f"http://127.0.0.1:{flex_port}/_standin/calls").json()["count"]
            print("\n`ledger reconcile`, run once the webhooks were in, found in Flex's API what the log lacked:")
            print("".join(f"  {line}\n" for line in reconciled.stdout.splitlines()), end="", flush=True)
            print(
                _summary(
                    api,
                    [(label, c.session_id) for label, c, _ in checkouts],
                    [renewal],
                    calls,
                    url,
                    token,
                    secret,
                    work,
                ),
                flush=True,
            )
        print(_received(work / "listen.log", api_url=url, token=token), flush=True)
        print(f"demo: ready in {time.monotonic() - started:.1f} s", flush=True)
        while not stop.wait(0.5):
            if server.poll() is not None:
                print(
                    f"demo: the ledger server exited ({server.returncode}); see {work / 'server.log'}", file=sys.stderr
                )
                return 1
        print("\ndemo: stopping", flush=True)
        return 0
    except (RuntimeError, OSError, httpx.HTTPError, ConfigError) as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return 1
    finally:
        stop_process(server)
        stop_process(standin)
        stop_process(listener)
        _stop_postgres((work / "pgdata").resolve())
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if data_dir is None:
            shutil.rmtree(work, ignore_errors=True)
