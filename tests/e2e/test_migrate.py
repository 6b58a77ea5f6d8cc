"""Upgrading as an operator does it: `ledger migrate` (and its dry run and check), auto-migrate on
and off, and a running ledger that a long reader (pg_dump) never stops: starting, `ledger status`
and webhooks go on beside it."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest

from ledger.migrate import steps
from tests.support import flex_event, ledger_command, run_server, unique_name, with_database


def _ledger(*args: str, dsn: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [ledger_command(), *args],
        env={**os.environ, "LEDGER_DATABASE_URL": dsn, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def release_7_db(pg_server_dsn: str) -> Iterator[str]:
    """A database as release 7 left it: its schema (step 1 as it shipped), nothing recorded."""
    name = unique_name("ledger_r7")

    async def run(sql: str, db: str | None = None) -> None:
        conn = await asyncpg.connect(with_database(pg_server_dsn, db) if db else pg_server_dsn)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(run(f'CREATE DATABASE "{name}"'))
    asyncio.run(run(steps()[0].sql, name))
    try:
        yield with_database(pg_server_dsn, name)
    finally:
        asyncio.run(run(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def test_check_dry_run_and_migrate_as_a_deploy_pipeline_uses_them(release_7_db: str) -> None:
    last = steps()[-1]
    check = _ledger("migrate", "--check", dsn=release_7_db)
    assert check.returncode == 1
    assert f"pending: apply {last.label}" in check.stdout
    assert "pending: record 0001_through_release_7" in check.stdout
    dry = _ledger("migrate", "--dry-run", dsn=release_7_db)
    assert dry.returncode == 0
    assert _ledger("migrate", "--check", dsn=release_7_db).returncode == 1  # the dry run changed nothing
    status = _ledger("status", dsn=release_7_db)  # reads only: says so, changes nothing
    assert f"apply {last.label}" in status.stderr
    assert _ledger("migrate", "--check", dsn=release_7_db).returncode == 1
    done = _ledger("migrate", dsn=release_7_db)
    assert done.returncode == 0, done.stderr
    assert f"applied {last.label}" in done.stdout
    assert "0001_through_release_7  baseline" in done.stdout
    assert f"{last.label}  applied" in done.stdout
    again = _ledger("migrate", "--check", dsn=release_7_db)
    assert again.returncode == 0
    assert "up to date" in again.stdout
    assert "nothing to do" in _ledger("migrate", dsn=release_7_db).stdout


def test_serve_with_auto_migrate_off_refuses_a_database_behind_it_naming_the_step(
    release_7_db: str, tmp_path: Path
) -> None:
    with run_server(
        tmp_path, {"LEDGER_DATABASE_URL": release_7_db, "LEDGER_AUTO_MIGRATE": "false"}, wait_ready=False
    ) as server:
        assert server.process.wait(60) != 0
        assert f"apply {steps()[-1].label}" in server.log()
        assert "LEDGER_AUTO_MIGRATE is false" in server.log()
    assert _ledger("migrate", "--check", dsn=release_7_db).returncode == 1  # nothing was changed
    with run_server(tmp_path, {"LEDGER_DATABASE_URL": release_7_db}) as server:  # on (the default): it migrates
        assert httpx.get(server.url + "/readyz").status_code == 200
        assert f"applied {steps()[-1].label}" in server.log()
    assert _ledger("migrate", "--check", dsn=release_7_db).returncode == 0


def test_a_reader_holding_every_table_delays_no_start_no_status_and_no_webhook(db_dsn: str, tmp_path: Path) -> None:
    async def hold() -> tuple[asyncpg.Connection, object]:
        reader = await asyncpg.connect(db_dsn)
        tables = [r[0] for r in await reader.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")]
        tr = reader.transaction()
        await tr.start()
        await reader.execute(f"LOCK TABLE {', '.join(tables)} IN ACCESS SHARE MODE")  # as pg_dump does
        return reader, tr

    loop = asyncio.new_event_loop()
    reader, tr = loop.run_until_complete(hold())
    try:
        started = time.monotonic()
        with run_server(tmp_path, {"LEDGER_DATABASE_URL": db_dsn}) as server:
            assert time.monotonic() - started < 20
            status_started = time.monotonic()
            status = _ledger("status", dsn=db_dsn)
            assert status.returncode == 0, status.stderr
            assert time.monotonic() - status_started < 5
            for _ in range(4):
                sent = time.monotonic()
                assert server.post_event(flex_event()).status_code == 200
                assert time.monotonic() - sent < 1
            assert _ledger("migrate", "--check", dsn=db_dsn).returncode == 0
    finally:
        loop.run_until_complete(tr.rollback())  # type: ignore[attr-defined]
        loop.run_until_complete(reader.close())
        loop.close()
