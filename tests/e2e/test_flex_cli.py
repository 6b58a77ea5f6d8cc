"""``ledger flex …`` against the Flex stand-in: registering the endpoint, then a lost event sent
again by Flex on request, verified and recorded once by the real server."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import time
from pathlib import Path

import asyncpg
import httpx

from ledger_cli.flex import READ_EVENT_TYPES
from ledger_cli.processes import free_port
from ledger_cli.scenarios import Checkout, checkout_events
from tests.support import SECRET, ledger_command, run_server, run_standin

TEST_KEY = "fsk_test_cli"


def flex(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [ledger_command(), "flex", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def recorded(db_dsn: str, event_id: str) -> int:
    async def count() -> int:
        conn = await asyncpg.connect(db_dsn)
        try:
            return int(await conn.fetchval("SELECT count(*) FROM events WHERE event_id = $1", event_id))
        finally:
            await conn.close()

    return asyncio.run(count())


def deliveries(standin_url: str) -> list[dict[str, object]]:
    calls = httpx.get(standin_url + "/_standin/calls", timeout=10).json()["calls"]
    return [c for c in calls if c["route"] == "delivery"]


def wait_for_deliveries(standin_url: str, n: int) -> list[dict[str, object]]:
    deadline = time.monotonic() + 30
    while len(got := deliveries(standin_url)) < n:
        assert time.monotonic() < deadline, f"the stand-in made {len(got)} deliveries, not {n}"
        time.sleep(0.1)
    return got


def test_an_endpoint_made_from_the_command_line_receives_a_lost_event_sent_again(db_dsn: str, tmp_path: Path) -> None:
    with run_standin(api_key=TEST_KEY) as standin:
        # the live key is wrong: every --mode test call must use the test key
        env = {"FLEX_API_BASE_URL": standin.api_base, "FLEX_API_KEY": "fsk_live_wrong", "FLEX_TEST_API_KEY": TEST_KEY}
        port = free_port()
        endpoint = f"http://127.0.0.1:{port}/webhooks/flex"

        made = flex({**env, "LEDGER_WEBHOOK_SECRETS": ""}, "webhooks", "create", endpoint, "--mode", "test")
        assert made.returncode == 0, made.stderr
        line = re.search(r"^put this in the environment: LEDGER_WEBHOOK_SECRETS=(whsec_\S+)$", made.stdout, re.M)
        assert line, made.stdout
        secret = line.group(1)
        assert f"secret:      {secret}" in made.stdout
        assert "mode:        test" in made.stdout
        rotating = flex({**env, "LEDGER_WEBHOOK_SECRETS": SECRET}, "webhooks", "create", endpoint, "--mode", "test")
        assert 'LEDGER_WEBHOOK_SECRETS="$LEDGER_WEBHOOK_SECRETS,whsec_' in rotating.stdout  # the old one kept
        second = re.search(r"^id:\s+(\S+)$", rotating.stdout, re.M)
        assert second

        listed = flex(env, "webhooks", "list", "--mode", "test", "--json")
        assert listed.returncode == 0, listed.stderr
        hooks = json.loads(listed.stdout)["webhooks"]
        assert len(hooks) == 2
        assert all(h["url"] == endpoint and h["test_mode"] is True for h in hooks)
        assert hooks[0]["events"] == list(READ_EVENT_TYPES)  # every type the ledger reads, by default
        assert "signing_secret" not in listed.stdout
        assert secret not in listed.stdout

        live = flex(env, "webhooks", "list")  # the live key, which Flex refuses
        assert live.returncode == 1
        assert "401" in live.stderr

        # a checkout whose webhooks never arrived: Flex knows its events
        c = Checkout(seed=950, test_mode=True)
        events = checkout_events(c)
        httpx.post(standin.url + "/_standin/events", json={"events": events}, timeout=10).raise_for_status()
        completed = next(e for e in events if e["event_type"] == "checkout.session.completed")

        ambiguous = flex(env, "events", "retry", completed["event_id"], "--mode", "test")
        assert ambiguous.returncode == 2
        assert "--webhook" in ambiguous.stderr
        assert second.group(1) in ambiguous.stderr
        gone = flex(env, "webhooks", "delete", second.group(1), "--mode", "test")
        assert gone.returncode == 0, gone.stderr

        with run_server(
            tmp_path, {"LEDGER_DATABASE_URL": db_dsn, "LEDGER_WEBHOOK_SECRETS": secret}, port=port
        ) as server:
            for _ in range(2):  # asked twice: delivered twice, recorded once
                again = flex(env, "events", "retry", completed["event_id"], "--mode", "test")
                assert again.returncode == 0, again.stderr
                assert f"{completed['event_id']}: Flex sends it again to" in again.stdout
            assert [d["status"] for d in wait_for_deliveries(standin.url, 2)] == [200, 200]
            order = server.get(f"/v1/orders/{c.session_id}")
            assert order.status_code == 200, order.text
            assert order.json()["test_mode"] is True
            assert recorded(db_dsn, completed["event_id"]) == 1

        unknown = flex(env, "events", "retry", "evt_unknown", "--mode", "test")
        assert unknown.returncode == 1
        assert "evt_unknown: not resent: Flex API answered 404" in unknown.stderr

    no_key = flex({"FLEX_API_KEY": "", "FLEX_TEST_API_KEY": ""}, "webhooks", "list")
    assert no_key.returncode == 2
    assert "FLEX_API_KEY is not set" in no_key.stderr
