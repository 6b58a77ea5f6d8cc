"""Metrics an SRE can alert on, and the small things an operator meets first: counters named
`_total`, build info and process metrics, `ledger work` serving them on its own port, the shipped
alert rules and dashboard naming only what is exported, log settings from the environment, a busy
port refused before anything starts, `ledger status` saying which database it reads."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest
import yaml

from tests.e2e.test_fulfillment import complete
from tests.support import (
    SECRET,
    RunningServer,
    fulfillment_env,
    ledger_command,
    run_server,
    run_standin,
    unique_name,
    with_database,
)
from tests.support import free_port as _free_port

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "ledger-alerts.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "ledger-dashboard.json"
_TYPE = re.compile(r"^# TYPE (\w+) (\w+)$", re.MULTILINE)


def _exported(text: str) -> dict[str, str]:
    """Every sample name an exposition can hold, with its metric's type."""
    names: dict[str, str] = {}
    for name, kind in _TYPE.findall(text):
        suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"], "summary": ["_sum", "_count"]}
        for suffix in suffixes.get(kind, [""]):
            names[name if name.endswith(suffix) else name + suffix] = kind
    return names


def _named_in(expr: str) -> set[str]:
    return set(re.findall(r"\b((?:ledger|process)_[a-z_]+)\b", expr))


def test_counters_are_total_build_info_and_process_metrics_are_there(server: RunningServer) -> None:
    text = httpx.get(server.url + "/metrics").text
    types = dict(_TYPE.findall(text))
    for name in (
        "ledger_reconcile_runs",
        "ledger_reconcile_observations_recorded",
        "ledger_reconcile_missed_money",
        "ledger_worker_failures",
        "ledger_projection_failed_events",
        "ledger_webhook_requests",
    ):
        assert types.get(f"{name}_total") == "counter", name
        assert name not in types, f"{name} is exported as something else too"
    assert re.search(r'^ledger_worker_failures_total\{projection="orders"\} \d', text, re.MULTILINE)
    assert re.search(r"^ledger_reconcile_runs_total\{outcome=\"ok\"\} \d", text, re.MULTILINE)
    assert re.search(
        r'^ledger_build_info\{python="[\d.]+",schema_version="\d+",version="[^"]+"\} 1\.0$', text, re.MULTILINE
    )
    assert re.search(r"^process_resident_memory_bytes \d", text, re.MULTILINE)
    assert "python_info{" in text


def test_the_shipped_rules_and_dashboard_name_only_exported_metrics(server: RunningServer) -> None:
    exported = _exported(httpx.get(server.url + "/metrics").text)
    rules = yaml.safe_load(RULES.read_text())
    exprs = [r["expr"] for group in rules["groups"] for r in group["rules"]]
    assert len(exprs) >= 15
    dashboard = json.loads(DASHBOARD.read_text())
    exprs += [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    missing = {name for expr in exprs for name in _named_in(expr)} - set(exported)
    assert not missing, f"named but not exported: {sorted(missing)}"
    promtool = shutil.which("promtool")
    if promtool is None:
        if os.environ.get("LEDGER_REQUIRE_PROMTOOL") == "1":
            pytest.fail("promtool is not installed (Debian: apt-get install prometheus)")
        return  # parsed above; promtool's own check where it is installed (CI)
    checked = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_ledger_work_serves_metrics_health_and_readiness_on_its_port(db_dsn: str, tmp_path: Path) -> None:
    port = _free_port()
    with run_standin() as standin:
        env = {"LEDGER_DATABASE_URL": db_dsn, **fulfillment_env(standin.api_base), "LEDGER_RECONCILE_INTERVAL": "0"}
        with run_server(tmp_path, env, args=["--no-workers"]) as server:
            work = subprocess.Popen(
                [ledger_command(), "work", "--metrics-host", "127.0.0.1"],
                env={**os.environ, **env, "LEDGER_METRICS_PORT": str(port)},
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            try:
                complete(server, seed=4101)  # fulfilled by the worker: its Flex call is in its metrics
                deadline = time.monotonic() + 60
                while True:
                    try:
                        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
                    except httpx.HTTPError:
                        text = ""
                    flex_called = 'ledger_flex_api_request_seconds_count{status="200"}' in text
                    # the Flex call is counted before the session is marked fulfilled: wait for both
                    if flex_called and 'ledger_fulfillment_sessions{status="fulfilled"} 1.0' in text:
                        break
                    assert time.monotonic() < deadline, text[-2000:]
                    time.sleep(0.2)
                assert httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200
                assert httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200
                assert "ledger_build_info{" in text
            finally:
                work.send_signal(signal.SIGTERM)
                out, _ = work.communicate(timeout=30)
            assert work.returncode == 0, out
            assert f"/metrics on 127.0.0.1:{port}" in out


def test_log_format_and_level_come_from_the_environment(db_dsn: str, tmp_path: Path) -> None:
    with run_server(
        tmp_path, {"LEDGER_DATABASE_URL": db_dsn, "LEDGER_LOG_FORMAT": "json", "LEDGER_LOG_LEVEL": "info"}
    ) as s:
        time.sleep(0.5)
        lines = [line for line in s.log().splitlines() if line.startswith("{")]
        assert lines
        assert all(json.loads(line)["level"] for line in lines)
        assert any(json.loads(line)["level"] == "info" for line in lines)
    with run_server(
        tmp_path, {"LEDGER_DATABASE_URL": db_dsn, "LEDGER_LOG_FORMAT": "text", "LEDGER_LOG_LEVEL": "warning"}
    ) as s:
        time.sleep(0.5)
        logged = [line for line in s.log().splitlines() if not line.startswith("ledger:")]
        assert not any(line.startswith("{") for line in logged)
        assert not any(" INFO " in line for line in logged)
    bad = subprocess.run(
        [ledger_command(), "serve"],
        env={**os.environ, "LEDGER_DATABASE_URL": db_dsn, "LEDGER_WEBHOOK_SECRETS": SECRET, "LEDGER_LOG_LEVEL": "loud"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2
    assert bad.stderr.strip() == "ledger: LEDGER_LOG_LEVEL must be one of debug, info, warning, error, not 'loud'"
    helped = subprocess.run([ledger_command(), "serve", "--help"], capture_output=True, text=True, timeout=60).stdout
    assert "LEDGER_LOG_LEVEL" in helped
    assert "LEDGER_LOG_FORMAT" in helped


def test_a_busy_port_is_refused_before_anything_starts(server: RunningServer, db_dsn: str) -> None:
    port = int(server.url.rsplit(":", 1)[1])
    result = subprocess.run(
        [ledger_command(), "serve", "--port", str(port)],
        env={**os.environ, "LEDGER_DATABASE_URL": db_dsn, "LEDGER_WEBHOOK_SECRETS": SECRET},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "serving on" not in result.stdout
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_status_says_which_database_and_a_first_start_logs_no_missing_table(pg_server_dsn: str, tmp_path: Path) -> None:
    import asyncio

    import asyncpg

    name = unique_name("ledger_first")

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(pg_server_dsn)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    try:
        dsn = with_database(pg_server_dsn, name)
        with run_server(tmp_path, {"LEDGER_DATABASE_URL": dsn}) as server:
            time.sleep(1.0)
            assert "UndefinedTable" not in server.log()
        status = subprocess.run(
            [ledger_command(), "status"],
            env={**os.environ, "LEDGER_DATABASE_URL": dsn},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert status.returncode == 0, status.stderr
        assert status.stdout.splitlines()[0].startswith(f"database: the database {name} on ")
        assert "postgres@" not in status.stdout
    finally:
        asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
