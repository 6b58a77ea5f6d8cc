"""Migrations: the steps bring any earlier database to exactly what schema.sql gives a new one;
an up-to-date database gets no DDL and no lock a reader would notice; a step that would queue
behind a long reader gives up and tries again, and appends never wait for it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from ledger.db import SCHEMA_VERSION
from ledger.errors import ConfigError, SchemaTooNew
from ledger.log import EventLog, verify_chain
from ledger.migrate import MigrationBusy, history, migrate, plan, steps
from projections.registry import install
from tests.conftest import DatabaseFactory
from tests.projection_support import as_new_event

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"

_CATALOG = {
    "columns": """SELECT table_name, column_name, data_type, is_nullable, column_default
                  FROM information_schema.columns WHERE table_schema = 'public'""",
    "constraints": """SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid)
                      FROM pg_constraint WHERE connamespace = 'public'::regnamespace""",
    "indexes": "SELECT tablename, indexname, indexdef FROM pg_indexes WHERE schemaname = 'public'",
    "functions": """SELECT proname, pg_get_functiondef(oid) FROM pg_proc
                    WHERE pronamespace = 'public'::regnamespace""",
    "triggers": """SELECT tgrelid::regclass::text, tgname, pg_get_triggerdef(oid) FROM pg_trigger
                   WHERE NOT tgisinternal""",
    "schema_version": "SELECT version FROM ledger_schema",
}


async def catalog(dsn: str) -> dict[str, list[tuple[object, ...]]]:
    """What a schema is made of, in an order that does not depend on how it was built."""
    conn = await asyncpg.connect(dsn)
    try:
        return {name: sorted(tuple(r) for r in await conn.fetch(sql)) for name, sql in _CATALOG.items()}
    finally:
        await conn.close()


@pytest.fixture
async def empty_db(databases: DatabaseFactory) -> AsyncIterator[str]:
    """A database with nothing in it (not even the schema)."""
    async with databases.fresh(template="template0") as dsn:
        yield dsn


async def _run(dsn: str, sql: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def test_the_steps_give_every_older_database_what_schema_sql_gives_a_new_one(
    db_dsn: str, databases: DatabaseFactory
) -> None:
    first, *_ = steps()
    for start in ("release 7 (step 1 as it shipped)", "release 5 (its own dump)"):
        async with databases.fresh(template="template0") as older:
            await _run(older, first.sql if start.startswith("release 7") else (FIXTURES / "release_v5.sql").read_text())
            conn = await asyncpg.connect(older)
            try:
                done = await install(conn)
                assert done, "something was pending"
                assert (await plan(conn)).pending is False
                recorded = {r["number"]: r["how"] for r in await history(conn)}
            finally:
                await conn.close()
            assert await catalog(older) == await catalog(db_dsn), start
            assert recorded[len(steps())] == "applied"
            assert recorded[1] == ("baseline" if start.startswith("release 7") else "applied")


async def test_a_new_database_gets_schema_sql_with_every_step_recorded(empty_db: str) -> None:
    conn = await asyncpg.connect(empty_db)
    try:
        assert (await plan(conn)).fresh
        await install(conn)
        assert [(r["number"], r["how"]) for r in await history(conn)] == [(s.number, "schema") for s in steps()]
        assert await conn.fetchval("SELECT version FROM ledger_schema") == SCHEMA_VERSION
        assert await migrate(conn) == []  # twice: nothing
    finally:
        await conn.close()


async def test_an_up_to_date_database_gets_no_ddl_beside_a_reader_holding_every_table(db_dsn: str) -> None:
    """As pg_dump does: one transaction holding ACCESS SHARE on every table. A start (install) and
    an append go on at once; with DDL they would wait for the reader (or queue every append)."""
    reader = await asyncpg.connect(db_dsn)
    other = await asyncpg.connect(db_dsn)
    try:
        tables = [r[0] for r in await reader.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")]
        tr = reader.transaction()
        await tr.start()
        await reader.execute(f"LOCK TABLE {', '.join(tables)} IN ACCESS SHARE MODE")
        started = time.monotonic()
        await asyncio.wait_for(install(other), 5)
        pool = await asyncpg.create_pool(db_dsn, min_size=1, max_size=1)
        try:
            await asyncio.wait_for(EventLog(pool).append([as_new_event({"event_id": "e1", "event_type": "x.y"})]), 5)
        finally:
            await pool.close()
        assert time.monotonic() - started < 3
        await tr.rollback()
    finally:
        await reader.close()
        await other.close()


async def test_a_step_behind_a_long_reader_gives_up_and_tries_again_while_appends_go_on(
    databases: DatabaseFactory,
) -> None:
    first, *_ = steps()
    async with databases.fresh(template="template0") as dsn:
        await _run(dsn, first.sql)  # a release-7 database: the last step is pending
        reader = await asyncpg.connect(dsn)
        migrator = await asyncpg.connect(dsn)
        pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
        try:
            tr = reader.transaction()
            await tr.start()
            await reader.execute("LOCK TABLE reconcile_runs, projection_state IN ACCESS SHARE MODE")
            trying = asyncio.create_task(migrate(migrator, lock_timeout="200ms", attempts=5, pause=0.1))
            await asyncio.sleep(0.15)
            # the step is waiting (at most 200 ms at a time): appends are not queued behind it
            started = time.monotonic()
            for i in range(5):
                await EventLog(pool).append([as_new_event({"event_id": f"during-{i}", "event_type": "x.y"})])
            assert time.monotonic() - started < 1.5
            with pytest.raises(MigrationBusy, match="stayed locked"):
                await trying
            assert (await plan(migrator)).apply, "nothing of the step was applied"
            await tr.rollback()
            assert any("applied 0002" in line for line in await migrate(migrator, lock_timeout="200ms"))
            async with pool.acquire() as conn:
                assert (await verify_chain(conn)).ok
        finally:
            await pool.close()
            await reader.close()
            await migrator.close()


async def test_a_database_a_newer_release_wrote_is_refused_unchanged(db_dsn: str) -> None:
    conn = await asyncpg.connect(db_dsn)
    try:
        await conn.execute(
            "INSERT INTO ledger_migrations (number, name, checksum, how) VALUES (99, 'future', 'x', 'applied')"
        )
        with pytest.raises(SchemaTooNew, match="migration step 99"):
            await install(conn)
        await conn.execute("DELETE FROM ledger_migrations WHERE number = 99")
        await conn.execute(f"UPDATE ledger_schema SET version = {SCHEMA_VERSION + 1}")
        with pytest.raises(SchemaTooNew, match=f"schema version {SCHEMA_VERSION + 1}"):
            await install(conn)
        await conn.execute(f"UPDATE ledger_schema SET version = {SCHEMA_VERSION}")
        await conn.execute("UPDATE ledger_migrations SET checksum = 'edited' WHERE number = 1")
        with pytest.raises(ConfigError, match="another checksum"):
            await install(conn)
    finally:
        await conn.close()


async def test_auto_migrate_off_names_the_pending_step_and_changes_nothing(databases: DatabaseFactory) -> None:
    first, *rest = steps()
    async with databases.fresh(template="template0") as dsn:
        await _run(dsn, first.sql)
        before = await catalog(dsn)
        conn = await asyncpg.connect(dsn)
        try:
            with pytest.raises(ConfigError, match=f"apply {rest[-1].label}.*LEDGER_AUTO_MIGRATE is false"):
                await install(conn, auto_migrate=False)
        finally:
            await conn.close()
        assert await catalog(dsn) == before
