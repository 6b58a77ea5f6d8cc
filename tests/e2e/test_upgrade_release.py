"""This release started on a database the previous release wrote (tests/fixtures/release_v5.sql):
nothing is done by hand. The log is kept as it was and still verifies, the schema moves forward,
every projection an older shape built is rebuilt from the log blue/green while reads go on, and
the orders show what this release knows (money after the sale, modes). A database a newer
release upgraded is refused, with a clear message, and left as it was."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from ledger.db import SCHEMA_VERSION
from ledger_cli.processes import ledger_command
from projections.registry import PROJECTIONS
from tests.support import run_server, unique_name, with_database

DUMP = (Path(__file__).resolve().parent.parent / "fixtures" / "release_v5.sql").read_text(encoding="utf-8")
SESSIONS = [
    "fcs_86D704D2F3104E05762BB111CC",
    "fcs_5A898D6AA0F44E294865E01CA3",
    "fcs_A154D3D22B214C405D0C25E681",
    "fcs_B8F985285A9CB9FB26D946772B",
]


async def _sql(dsn: str, query: str, *args: object) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        return list(await conn.fetch(query, *args))
    finally:
        await conn.close()


@contextlib.contextmanager
def restored(pg_server_dsn: str, dump: str) -> Iterator[str]:
    """A new database holding ``dump`` (what an earlier release wrote), dropped afterwards."""
    name = unique_name("ledger_release")

    async def create() -> None:
        admin = await asyncpg.connect(pg_server_dsn)
        try:
            await admin.execute(f'CREATE DATABASE "{name}"')
        finally:
            await admin.close()
        conn = await asyncpg.connect(with_database(pg_server_dsn, name))
        try:
            await conn.execute(dump)
        finally:
            await conn.close()

    async def drop() -> None:
        admin = await asyncpg.connect(pg_server_dsn)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()

    asyncio.run(create())
    try:
        yield with_database(pg_server_dsn, name)
    finally:
        asyncio.run(drop())


@pytest.fixture
def previous_release_db(pg_server_dsn: str) -> Iterator[str]:
    with restored(pg_server_dsn, DUMP) as dsn:
        yield dsn


def _ledger(dsn: str, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "LEDGER_DATABASE_URL": dsn, "LEDGER_DATA_DIR": str(tmp_path / "cli")}
    return subprocess.run([ledger_command(), *args], env=env, capture_output=True, text=True, timeout=120)


def test_the_previous_release_database_upgrades_by_itself(previous_release_db: str, tmp_path: Path) -> None:
    dsn = previous_release_db
    before = asyncio.run(_sql(dsn, "SELECT position, hash FROM events ORDER BY position"))
    shape_column = (
        "SELECT 1 FROM information_schema.columns WHERE table_name = 'projection_state' AND column_name = 'shape'"
    )
    assert not asyncio.run(_sql(dsn, shape_column))  # the previous release kept no shapes
    with run_server(tmp_path, {"LEDGER_DATABASE_URL": dsn}) as server:
        served = [server.get(f"/v1/orders/{SESSIONS[0]}").status_code]
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            rows = server.get("/v1/projections").json()["data"]
            served.append(server.get(f"/v1/orders/{SESSIONS[0]}").status_code)
            if all(r["shape_current"] for r in rows):
                break
            time.sleep(0.2)
        assert all(r["shape_current"] for r in rows), rows
        assert set(served) == {200}  # reads never stopped
        assert "rebuilding them from the log" in server.log()
        for name in PROJECTIONS:
            row = next(r for r in rows if r["name"] == name)
            assert row["shape"] == PROJECTIONS[name].shape
            assert row["lag"] == 0 or row["state"] == "running"
        orders = [server.get(f"/v1/orders/{s}").json() for s in SESSIONS]
        assert [o["payment_status"] for o in orders] == ["paid"] * 4
        assert all(o["amount_net"] == o["amount_total"] > 0 for o in orders)
        assert [o["fulfillment"]["status"] for o in orders] == ["fulfilled"] * 3 + ["pending"]
        listed = server.get("/v1/orders?payment_status=paid&limit=10").json()["data"]
        assert sorted(o["checkout_session_id"] for o in listed) == sorted(SESSIONS)
    assert asyncio.run(_sql(dsn, "SELECT position, hash FROM events ORDER BY position")) == before
    assert asyncio.run(_sql(dsn, "SELECT version FROM ledger_schema"))[0]["version"] == SCHEMA_VERSION
    verified = _ledger(dsn, tmp_path, "verify")
    assert verified.returncode == 0, verified.stderr
    # Started again: nothing left to rebuild.
    with run_server(tmp_path, {"LEDGER_DATABASE_URL": dsn}) as server:
        time.sleep(1)
        assert "rebuilding them from the log" not in server.log()


def test_a_database_a_newer_release_upgraded_is_refused(previous_release_db: str, tmp_path: Path) -> None:
    dsn = previous_release_db
    asyncio.run(_sql(dsn, "UPDATE ledger_schema SET version = $1", SCHEMA_VERSION + 1))
    status = _ledger(dsn, tmp_path, "status")
    assert status.returncode != 0
    assert f"schema version {SCHEMA_VERSION + 1}, newer than this release's {SCHEMA_VERSION}" in status.stderr
    assert "Traceback" not in status.stderr
    assert asyncio.run(_sql(dsn, "SELECT version FROM ledger_schema"))[0]["version"] == SCHEMA_VERSION + 1
    # nothing of this release's schema was applied
    shape_column = (
        "SELECT 1 FROM information_schema.columns WHERE table_name = 'projection_state' AND column_name = 'shape'"
    )
    assert not asyncio.run(_sql(dsn, shape_column))


V7_DUMP = (Path(__file__).resolve().parent.parent / "fixtures" / "release_v7.sql").read_text(encoding="utf-8")
V7_ORDERS = {
    "fcs_6513270E269E0D37F2A74DE452": "partially_refunded",
    "fcs_7AEFF54E808C46A61F492FBA47": "paid",
    "fcs_BD0558B498281A61C83EDD4112": "paid",
    "fcs_DE04CECE83E960E49C51E692DC": "disputed",
}


@pytest.fixture
def release_7_db(pg_server_dsn: str) -> Iterator[str]:
    with restored(pg_server_dsn, V7_DUMP) as dsn:
        yield dsn


def test_the_previous_release_7_database_migrates_in_place(release_7_db: str, db_dsn: str, tmp_path: Path) -> None:
    """Release 7 kept no record of steps: its version says which it had. `ledger migrate` records
    step 1 as there, applies the rest, and the schema is then what schema.sql gives a new database;
    the log is untouched and verifies; the orders are what they were; webhooks go on."""
    from ledger.migrate import steps
    from tests.integration.test_migrations import catalog
    from tests.support import flex_event

    dsn = release_7_db
    before = asyncio.run(_sql(dsn, "SELECT position, hash FROM events ORDER BY position"))
    check = _ledger(dsn, tmp_path, "migrate", "--check")
    assert check.returncode == 1
    assert f"pending: apply {steps()[-1].label}" in check.stdout
    migrated = _ledger(dsn, tmp_path, "migrate")
    assert migrated.returncode == 0, migrated.stderr
    assert "0001_through_release_7  baseline" in migrated.stdout
    assert f"{steps()[-1].label}  applied" in migrated.stdout
    assert asyncio.run(catalog(dsn)) == asyncio.run(catalog(db_dsn))
    assert asyncio.run(_sql(dsn, "SELECT position, hash FROM events ORDER BY position")) == before
    assert _ledger(dsn, tmp_path, "verify").returncode == 0
    assert _ledger(dsn, tmp_path, "migrate", "--check").returncode == 0
    with run_server(tmp_path, {"LEDGER_DATABASE_URL": dsn, "LEDGER_AUTO_MIGRATE": "false"}) as server:
        for session_id, payment_status in V7_ORDERS.items():
            order = server.get(f"/v1/orders/{session_id}").json()
            assert order["payment_status"] == payment_status
            assert order["fulfillment"]["status"] == "fulfilled"
        assert server.post_event(flex_event()).json()["position"] == len(before) + 1
    assert _ledger(dsn, tmp_path, "verify").returncode == 0
