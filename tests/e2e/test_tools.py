"""ledger demo, ledger send and /metrics, as a user meets them."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import time
from pathlib import Path

import asyncpg
import httpx
import psutil
import pytest

from tests.support import SECRET, RunningServer, flex_event, ledger_command, run_server, signed_headers


def _ours(pattern: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if re.search(pattern, " ".join(proc.info["cmdline"] or [])):
                found.append(proc)
        except psutil.Error:
            continue
    return found


def test_demo_reaches_its_summary_curls_work_and_ctrl_c_leaves_nothing(tmp_path: Path) -> None:
    data = tmp_path / "demo"
    proc = subprocess.Popen(
        [ledger_command(), "demo", "--port", "0", "--data-dir", str(data)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    assert proc.stdout is not None
    started = time.monotonic()
    try:
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("demo: ready"):
                break
            assert time.monotonic() - started < 90, "".join(lines)
        out = "".join(lines)
        assert "demo: ready" in out, out
        assert time.monotonic() - started < 60
        sessions = re.findall(r"(fcs_[0-9A-F]{26})  complete", out)
        assert len(sessions) == 8
        assert out.count("fulfillment: fulfilled") == 8 + 1  # every order, and the renewal
        # one order's webhooks were all lost: reconcile recorded it from the stand-in's API
        recovered = re.findall(r"recorded checkout_session (fcs_\w+) \(complete\) at position \d+", out)
        assert len(recovered) == 1
        assert recovered[0] == sessions[-1]
        assert "failed twice" in out
        assert "money: partially_refunded" in out  # a partially refunded order
        assert out.count("[test mode]") == 1  # and a test-mode one
        curls = [line.strip() for line in lines if line.strip().startswith("curl ")]
        assert len(curls) >= 4
        # the printed commands, run as printed, return the data shown
        order = json.loads(subprocess.run(shlex.split(curls[0]), capture_output=True, text=True, check=True).stdout)
        assert order["checkout_session_id"] in sessions
        assert order["fulfillment"]["status"] == "fulfilled"
        assert len(order["payment_intents"]) == 2, "the first curl shows the split cart"
        listed = json.loads(subprocess.run(shlex.split(curls[1]), capture_output=True, text=True, check=True).stdout)
        assert sorted(o["checkout_session_id"] for o in listed["data"]) == sorted(sessions)
        feed = json.loads(subprocess.run(shlex.split(curls[3]), capture_output=True, text=True, check=True).stdout)
        shown = re.findall(r"#(\d+)\s+(\w+)\s+(\w+)", out)
        listed = [
            (str(a["position"]), a["checkout_session_id"] or a["invoice_id"], a["line_item_id"]) for a in feed["data"]
        ]
        assert listed == shown
        # a subscription renewed a period after its checkout: fulfilled once, one adjustment per item
        assert re.search(r"invoice in_\w+  paid", out), out
        renewed = [a for a in feed["data"] if a["reason"] == "renewal"]
        assert renewed
        assert all(a["checkout_session_id"] is None and a["invoice_id"] for a in renewed)
        assert "item(s) (adjustments: reason renewal)" in out
        # the merchant's side: a destination and `ledger destinations listen`, every message verified
        arrived = re.search(r"Your systems' side: (\d+) signed messages arrived", out)
        assert arrived is not None, out
        assert int(arrived.group(1)) >= len(feed["data"]) + len(sessions)  # adjustments and order updates
        kinds = r"(inventory\.adjusted|order\.updated|customer\.updated|subscription\.updated)"
        assert re.search(rf"^  \d+ {kinds} msg_\d+_\w+$", out, re.MULTILINE), out
        assert _ours(str(data.resolve())), "the embedded postgres runs while the demo serves"
    finally:
        proc.send_signal(signal.SIGINT)
        rest = proc.stdout.read()
        proc.wait(60)
        proc.stdout.close()
    assert proc.returncode == 0, rest
    assert "demo: stopping" in rest
    time.sleep(0.5)
    assert _ours(re.escape(str(data.resolve()))) == [], "no postgres left behind"
    assert _ours(r"ledger (serve|flex-standin)") == [] or all(
        str(data) not in " ".join(p.cmdline()) for p in _ours(r"ledger (serve|flex-standin)")
    )


AFTER_SALE = {
    "checkout": "paid",
    "split-cart": "paid",
    "subscription": "paid",
    "test-mode": "paid",
    "partial-refund": "partially_refunded",
    "full-refund": "refunded",
    "dispute-lost": "disputed",
    "dispute-won": "paid",
    "voided-authorization": "canceled",
    "subscription-renewal": "paid",
}


@pytest.mark.parametrize("scenario", list(AFTER_SALE))
def test_send_each_scenario_end_to_end(db_dsn: str, tmp_path: Path, scenario: str) -> None:
    with run_server(tmp_path, {"LEDGER_DATABASE_URL": db_dsn}) as server:
        result = subprocess.run(
            [
                ledger_command(),
                "send",
                scenario,
                "--url",
                server.url + "/webhooks/flex",
                "--secret",
                SECRET,
                "--seed",
                "7",
                "--out-of-order",
                "--duplicate",
                "2",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        replies = [line for line in result.stdout.splitlines() if " -> " in line]
        assert sum('"status":"duplicate"' in line for line in replies) == 2
        assert all(" -> 200 " in line for line in replies)
        positions = [int(m) for m in re.findall(r'"position":(\d+)', result.stdout)]
        session = next(
            json.loads(line.split(" -> 200 ", 1)[1]) for line in replies if "checkout.session.completed" in line
        )
        order_list = server.get("/v1/orders", params={"min_position": max(positions)}).json()["data"]
        assert len(order_list) == 1
        assert order_list[0]["status"] == "complete"
        assert session["status"] == "accepted"
        if scenario == "split-cart":
            assert len(order_list[0]["payment_intents"]) == 2
        # shuffled and redelivered, the money after the sale comes out the same
        assert order_list[0]["payment_status"] == AFTER_SALE[scenario]
        assert order_list[0]["test_mode"] is (scenario == "test-mode")
        if scenario == "subscription":
            sub = server.get(
                f"/v1/subscriptions/{order_list[0]['subscription_id']}", params={"min_position": max(positions)}
            ).json()
            assert sub["status"] == "active"
        if scenario == "subscription-renewal":  # renewed three times (once late), then ended at period end
            sub = server.get(
                f"/v1/subscriptions/{order_list[0]['subscription_id']}", params={"min_position": max(positions)}
            ).json()
            assert (sub["status"], sub["entitled"], sub["cancel_at_period_end"]) == ("canceled", False, True)
            assert len(sub["invoice_ids"]) == 4
            invoices = server.get("/v1/invoices", params={"subscription_id": sub["subscription_id"]}).json()["data"]
            assert [i["status"] for i in invoices] == ["paid"] * 4
            assert [i["renewal"] for i in invoices] == [True, True, True, False]  # newest first


def test_send_refuses_a_wrong_secret_visibly(db_dsn: str, tmp_path: Path) -> None:
    with run_server(tmp_path, {"LEDGER_DATABASE_URL": db_dsn}) as server:
        result = subprocess.run(
            [
                ledger_command(),
                "send",
                "checkout",
                "--url",
                server.url + "/webhooks/flex",
                "--secret",
                "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 1
    assert " -> 401 " in result.stdout


def _metric(server: RunningServer, name: str, **labels: str) -> float:
    text = httpx.get(server.url + "/metrics", timeout=10).text
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith(name + ("{" + want + "}" if labels else " ")) or (
            labels and line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items())
        ):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_metrics_move_for_every_webhook_outcome_and_for_lag(db_dsn: str, tmp_path: Path) -> None:
    env = {"LEDGER_DATABASE_URL": db_dsn, "LEDGER_WEBHOOK_MAX_BYTES": "2048"}
    with run_server(tmp_path, env) as server:
        body = flex_event()

        def post(content: str | bytes, headers: dict[str, str]) -> httpx.Response:
            return httpx.post(server.url + "/webhooks/flex", content=content, headers=headers)

        post(body, signed_headers(body))
        post(body, signed_headers(body))
        post(body, {})
        post(b"x" * 4096, {})
        post("[1]", signed_headers("[1]"))
        assert _metric(server, "ledger_webhook_requests_total", outcome="accepted") == 1
        assert _metric(server, "ledger_webhook_requests_total", outcome="duplicate") == 1
        assert _metric(server, "ledger_webhook_requests_total", outcome="unauthorized", reason="missing_header") == 1
        assert _metric(server, "ledger_webhook_requests_total", outcome="too_large") == 1
        assert _metric(server, "ledger_webhook_requests_total", outcome="unprocessable") == 1
        assert _metric(server, "ledger_webhook_ingest_seconds_count") == 2
        assert _metric(server, "ledger_append_batch_size_count") >= 1
        assert _metric(server, "ledger_log_head_position") == 1
        deadline = time.monotonic() + 10
        while _metric(server, "ledger_projection_position", projection="orders") < 1 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _metric(server, "ledger_projection_lag_events", projection="orders") == 0

    # with the runner unable to move (another session holds its lock), lag grows with the head
    import asyncio

    import asyncpg

    from projections.coordination import LOCK_NAMESPACE
    from projections.registry import lock_id

    async def scenario() -> tuple[float, float]:
        holder = await asyncpg.connect(db_dsn)
        try:
            await holder.execute("SELECT pg_advisory_lock($1, $2)", LOCK_NAMESPACE, lock_id("orders"))
            with run_server(tmp_path / "again", env) as again:
                for _ in range(3):
                    b = flex_event(
                        "checkout.session.completed",
                        checkout_session={"checkout_session_id": "fcs_x", "status": "complete"},
                    )
                    post_again = httpx.post(again.url + "/webhooks/flex", content=b, headers=signed_headers(b))
                    assert post_again.status_code == 200
                return (
                    _metric(again, "ledger_projection_lag_events", projection="orders"),
                    _metric(again, "ledger_projection_running", projection="orders"),
                )
        finally:
            await holder.close()

    (tmp_path / "again").mkdir()
    lag, running = asyncio.run(scenario())
    assert lag == 3
    assert running == 1  # the lock is held (by this test): a stuck runner shows as lag


def test_status_on_a_missing_database_says_so_in_one_line(pg_server_dsn: str) -> None:
    from tests.support import with_database

    env = {**os.environ, "LEDGER_DATABASE_URL": with_database(pg_server_dsn, "no_such_database_here")}
    result = subprocess.run([ledger_command(), "status"], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert "no_such_database_here" in result.stderr
    assert "Traceback" not in result.stderr


def test_status_into_a_closed_pipe_is_no_error(db_dsn: str) -> None:
    env = {**os.environ, "LEDGER_DATABASE_URL": db_dsn}
    proc = subprocess.Popen([ledger_command(), "status"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None
    proc.stdout.close()  # the reader has gone (`ledger status | head -0`) before anything is written
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert b"database" not in err
    assert b"Broken pipe" not in err
    assert b"Traceback" not in err


def test_concurrent_restocks_never_fail_on_a_deadlock(db_dsn: str) -> None:
    """4 `ledger restock` at once, 5 rounds, against one order: each exits 0 (restocked) or 1
    (refused, nothing left), never 2 on a lock it could have waited for or retried; what they
    say they restocked is what the log holds."""
    import asyncio

    from ledger.db import create_pool
    from ledger_cli.scenarios import Checkout
    from tests.integration.test_restock import _fulfilled

    checkout = Checkout(seed=7, items=4)

    async def prepare() -> None:
        pool = await create_pool(db_dsn, max_size=2)
        try:
            await _fulfilled(pool, checkout)
        finally:
            await pool.close()

    asyncio.run(prepare())
    items = checkout.line_items()
    env = {**os.environ, "LEDGER_DATABASE_URL": db_dsn}
    said = 0
    for round_ in range(5):
        procs = [
            subprocess.Popen(
                [ledger_command(), "restock", checkout.session_id, f"{items[(round_ + n) % 4]['line_item_id']}:1"],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for n in range(4)
        ]
        for proc in procs:
            out, err = proc.communicate(timeout=120)
            assert proc.returncode in (0, 1), (proc.returncode, err)
            assert "Deadlock" not in err
            said += out.count(": +1 ")

    async def restocked() -> int:
        conn = await asyncpg.connect(db_dsn)
        try:
            return int(
                await conn.fetchval(
                    "SELECT count(*) FROM events WHERE event_type = 'ledger.inventory.adjusted'"
                    " AND payload->'object'->'adjustment'->>'reason' = 'restock'"
                )
            )
        finally:
            await conn.close()

    logged = asyncio.run(restocked())
    assert said == logged
    assert logged == sum(min(5, i["quantity"]) for i in items)  # each line item was asked 5 times
