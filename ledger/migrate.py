"""Schema migrations: numbered, forward-only steps, each applied once and recorded.

``schema.sql`` is the whole current schema: a new database gets it in one transaction, and every
step is recorded as already there (``how = 'schema'``). A database an earlier release wrote gets
the steps it lacks, in order, each in its own transaction, recorded as ``applied`` with its name,
checksum and time. A database from before steps were recorded says its version
(``ledger_schema``): the steps that version already had are recorded as ``baseline`` without
running them. The steps live in ``ledger/migrations/NNNN_name.sql``; each starts with a
``-- version: N`` line, the ``ledger_schema`` version it brings the database to.

Finding what is pending only reads (two catalog lookups and one small table), so a process that
starts on an up-to-date database runs no DDL and takes no lock beyond a read's. Applying runs
under a session advisory lock (one migrator at a time), and every step with a short
``lock_timeout``: a step that would wait behind a long reader (``pg_dump``, an analyst's query)
gives up, waits and tries again, instead of queueing for ACCESS EXCLUSIVE, which would make
every append queue behind it.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from importlib import resources

import asyncpg

from ledger.db import SCHEMA_VERSION, schema_sql
from ledger.errors import ConfigError, SchemaTooNew
from ledger.sql import log_queries

__all__ = ["MigrationBusy", "Plan", "Step", "history", "migrate", "plan", "steps"]

_LOCK_KEY = 0x1ED6E4  # the advisory lock of whoever changes the schema (the same key releases 1-7 used)
_VERSION = re.compile(r"^-- version: *(\d+) *$", re.MULTILINE)
_FILE = re.compile(r"^(\d{4})_(\w+)\.sql$")
_Work = Callable[[asyncpg.Connection], Awaitable[None]]


class MigrationBusy(ConfigError):
    """A step could not take its locks in time (a long reader holds them), or another process is
    migrating: nothing was changed by that step; try again."""

    code = "migration_busy"


@dataclass(frozen=True)
class Step:
    number: int
    name: str
    version: int  # the ledger_schema version the step brings the database to
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()

    @property
    def label(self) -> str:
        return f"{self.number:04d}_{self.name}"


def steps() -> list[Step]:
    """Every step this release knows, in order."""
    found = []
    for entry in resources.files("ledger.migrations").iterdir():
        match = _FILE.match(entry.name)
        if match is None:
            continue
        text = entry.read_text(encoding="utf-8")
        version = _VERSION.search(text)
        if version is None:
            raise LookupError(f"migration {entry.name} has no '-- version: N' line")
        found.append(Step(int(match.group(1)), match.group(2), int(version.group(1)), text))
    found.sort(key=lambda s: s.number)
    assert [s.number for s in found] == list(range(1, len(found) + 1)), "steps are numbered 1, 2, 3, ... without gaps"
    assert found[-1].version == SCHEMA_VERSION, "the last step brings the database to this release's version"
    return found


@dataclass(frozen=True)
class Plan:
    """What ``migrate`` would do: ``fresh`` (a new database: schema.sql), the steps to ``baseline``
    (already there by version, only recorded) and the steps to ``apply``."""

    fresh: bool
    baseline: list[Step]
    apply: list[Step]

    @property
    def pending(self) -> bool:
        return self.fresh or bool(self.baseline or self.apply)

    def describe(self) -> list[str]:
        if self.fresh:
            return [f"a new database: schema.sql (version {SCHEMA_VERSION}), steps 1-{len(steps())} recorded"]
        return [f"record {s.label} (the database's version already has it)" for s in self.baseline] + [
            f"apply {s.label} (to version {s.version})" for s in self.apply
        ]


async def plan(conn: asyncpg.Connection) -> Plan:
    """What is pending, by reading only. Raises ``SchemaTooNew`` for a database a newer release
    wrote (a version or a step this release does not know), ``ConfigError`` when a recorded step
    is not the one this release has under its number."""
    known = steps()
    exists = await conn.fetchrow(log_queries.migrations_exist)
    if not exists["has_schema"]:
        return Plan(fresh=True, baseline=[], apply=[])
    version = int(await conn.fetchval(log_queries.schema_version) or 0)
    if version > SCHEMA_VERSION:
        raise _too_new(f"schema version {version}, newer than this release's {SCHEMA_VERSION}")
    rows = await conn.fetch(log_queries.migrations_applied) if exists["has_migrations"] else []
    done = {r["number"]: r for r in rows}
    newer = [n for n in done if n > len(known)]
    if newer:
        raise _too_new(f"migration step {max(newer)} (this release's last is {len(known)})")
    for step in known:
        row = done.get(step.number)
        if row is not None and row["checksum"] != step.checksum:
            raise ConfigError(
                f"migration step {step.label} was applied as {row['name']} with another checksum: this release and "
                "the database disagree about it (was a step edited after it was released?); nothing was changed"
            )
    missing = [s for s in known if s.number not in done]
    return Plan(
        fresh=False,
        baseline=[s for s in missing if s.version <= version],
        apply=[s for s in missing if s.version > version],
    )


def _too_new(what: str) -> SchemaTooNew:
    return SchemaTooNew(
        f"the database is at {what}: it was upgraded by a newer flex-ledger; run that release (nothing was changed)"
    )


async def migrate(
    conn: asyncpg.Connection,
    *,
    lock_timeout: str = "2s",
    attempts: int = 30,
    pause: float = 1.0,
) -> list[str]:
    """Applies what ``plan`` finds pending; returns what it did (empty when nothing was pending, in
    which case nothing but reads ran). Raises ``MigrationBusy`` when a step could not take its
    locks in ``attempts`` tries, ``SchemaTooNew`` for a database a newer release wrote."""
    first = await plan(conn)
    if not first.pending:
        return []
    for _ in range(attempts):
        if await conn.fetchval(log_queries.migration_try_lock, _LOCK_KEY):
            break
        await asyncio.sleep(pause)
    else:
        raise MigrationBusy("another process has been changing the schema for a while; try again")
    try:
        todo = await plan(conn)  # what is left once it is our turn
        done: list[str] = []
        if todo.fresh:
            await _attempt(conn, lock_timeout, attempts, pause, "schema.sql", _fresh)
            return todo.describe()
        if todo.baseline or todo.apply:
            await _attempt(conn, lock_timeout, attempts, pause, "the record of steps", _record_table)
        for step in todo.baseline:
            await conn.execute(log_queries.migration_record, step.number, step.name, step.checksum, "baseline")
            done.append(f"recorded {step.label} (the database's version already had it)")
        for step in todo.apply:
            await _attempt(conn, lock_timeout, attempts, pause, step.label, _applying(step))
            done.append(f"applied {step.label} (to version {step.version})")
        return done
    finally:
        await conn.execute(log_queries.migration_unlock, _LOCK_KEY)


async def _fresh(conn: asyncpg.Connection) -> None:
    await conn.execute(schema_sql())
    for step in steps():
        await conn.execute(log_queries.migration_record, step.number, step.name, step.checksum, "schema")


async def _record_table(conn: asyncpg.Connection) -> None:
    await conn.execute(log_queries.migrations_table)


def _applying(step: Step) -> _Work:
    async def apply(conn: asyncpg.Connection) -> None:
        await conn.execute(step.sql)
        await conn.execute(log_queries.migration_record, step.number, step.name, step.checksum, "applied")

    return apply


async def _attempt(
    conn: asyncpg.Connection, lock_timeout: str, attempts: int, pause: float, what: str, work: _Work
) -> None:
    """Runs ``work`` in one transaction whose statements wait at most ``lock_timeout`` for a lock;
    when they would wait longer, rolls back, pauses and tries again."""
    for attempt in range(1, attempts + 1):
        try:
            async with conn.transaction():
                await conn.execute(log_queries.migration_lock_timeout, lock_timeout)
                await work(conn)
            return
        except (asyncpg.exceptions.LockNotAvailableError, asyncpg.exceptions.DeadlockDetectedError):
            if attempt == attempts:
                raise MigrationBusy(
                    f"{what}: its tables stayed locked by another session for {attempts} tries of {lock_timeout} "
                    "(a long transaction, or pg_dump); nothing of it was applied; try again when it is done"
                ) from None
            await asyncio.sleep(pause)


async def history(conn: asyncpg.Connection) -> list[asyncpg.Record]:
    """The steps this database has: number, name, checksum, when, and how (``applied``,
    ``baseline``, ``schema``)."""
    exists = await conn.fetchrow(log_queries.migrations_exist)
    return list(await conn.fetch(log_queries.migrations_applied)) if exists["has_migrations"] else []
