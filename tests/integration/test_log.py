"""The log against a real PostgreSQL: order, dedup, chain, immutability, group commit."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import asyncpg
import pytest

from ledger.errors import UnusableEvent
from ledger.group_commit import GroupCommitter
from ledger.log import EventLog, NewEvent, verify_chain
from ledger.sql import log_queries as queries


def ev(event_id: str, body: dict[str, Any] | None = None, event_type: str = "customer.created") -> NewEvent:
    payload = json.dumps(body or {"event_id": event_id, "event_type": event_type})
    return NewEvent(event_id=event_id, event_type=event_type, raw_body=payload.encode())


async def positions(pool: asyncpg.Pool) -> list[int]:
    return [r["position"] for r in await pool.fetch("SELECT position FROM events ORDER BY position")]


async def test_append_assigns_contiguous_positions_and_dedups(pool: asyncpg.Pool) -> None:
    log = EventLog(pool)
    first = await log.append([ev("a"), ev("b"), ev("a")])
    assert [(r.position, r.duplicate) for r in first] == [(1, False), (2, False), (1, True)]
    second = await log.append([ev("c"), ev("b")])
    assert [(r.position, r.duplicate) for r in second] == [(3, False), (2, True)]
    assert await positions(pool) == [1, 2, 3]
    assert await log.head() == 3


async def test_redelivery_with_a_different_body_keeps_the_first_copy(pool: asyncpg.Pool) -> None:
    log = EventLog(pool)
    await log.append([ev("a", {"event_id": "a", "event_type": "customer.created", "v": 1})])
    [again] = await log.append([ev("a", {"event_id": "a", "event_type": "customer.updated", "v": 2})])
    assert again.duplicate
    assert again.position == 1
    row = await pool.fetchrow("SELECT event_type, payload::text AS p FROM events")
    assert row["event_type"] == "customer.created"
    assert json.loads(row["p"])["v"] == 1
    assert await pool.fetchval("SELECT count(*) FROM events") == 1


@pytest.mark.parametrize("statement", ["UPDATE events SET event_type = 'x'", "DELETE FROM events", "TRUNCATE events"])
async def test_changing_the_log_fails_inside_the_database(pool: asyncpg.Pool, statement: str) -> None:
    await EventLog(pool).append([ev("a"), ev("b")])
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
        await pool.execute(statement)
    assert await positions(pool) == [1, 2]


async def test_verify_passes_on_an_intact_log(pool: asyncpg.Pool) -> None:
    log = EventLog(pool)
    for i in range(5):
        await log.append([ev(f"e{i}-{j}") for j in range(7)])
    async with pool.acquire() as conn:
        report = await verify_chain(conn, segment=4)
    assert report.ok
    assert report.rows == 35
    assert report.head_position == 35


@pytest.mark.parametrize(
    ("tamper", "expected_problem"),
    [
        ('UPDATE events SET payload = \'{"event_id":"e3","event_type":"forged"}\' WHERE position = 3', "payload"),
        ("UPDATE events SET raw_body = 'forged' WHERE position = 3", "content"),
        ("UPDATE events SET event_type = 'forged' WHERE position = 3", "content"),
        ("UPDATE events SET hash = sha256('x') WHERE position = 3", "content"),
        ("DELETE FROM events WHERE position = 3", "missing"),
    ],
)
async def test_verify_names_the_first_tampered_position(pool: asyncpg.Pool, tamper: str, expected_problem: str) -> None:
    log = EventLog(pool)
    await log.append([ev(f"e{i}") for i in range(1, 7)])
    async with pool.acquire() as conn:
        async with conn.transaction():
            await conn.execute("SET LOCAL session_replication_role = replica")  # bypasses the triggers
            await conn.execute(tamper)
        report = await verify_chain(conn, segment=2)
    assert not report.ok
    assert report.bad_position == 3
    assert expected_problem in (report.problem or "")


async def test_verify_catches_a_rehashed_row_at_the_next_link(pool: asyncpg.Pool) -> None:
    await EventLog(pool).append([ev(f"e{i}") for i in range(1, 5)])
    async with pool.acquire() as conn:
        async with conn.transaction():
            await conn.execute("SET LOCAL session_replication_role = replica")
            await conn.execute(
                """UPDATE events SET event_type = 'forged',
                   hash = sha256(prev_hash || ledger_row_digest(position, event_id, 'forged', source, event_dt,
                                                   occurred_at, recorded_at, raw_body, headers, message_id))
                   WHERE position = 2"""
            )
        report = await verify_chain(conn)
    assert not report.ok
    assert report.bad_position == 3
    assert "link" in (report.problem or "")


@pytest.mark.parametrize("tampered", [3, 4, 5, 9])  # first, second and last rows of segments of 2 (3-4, 5-6, 9-10)
async def test_verify_on_two_connections_reports_what_one_does(pool: asyncpg.Pool, tampered: int) -> None:
    """Segments checked at once on two connections: the link between two segments is checked in
    log order, so a break at a segment's first row (or a row rehashed just before it) is reported
    at the same position, with the same problem, as a walk on one connection."""
    await EventLog(pool).append([ev(f"e{i}") for i in range(1, 11)])
    async with pool.acquire() as conn, pool.acquire() as helper:
        assert (await verify_chain(conn, segment=2, helpers=[helper])).ok
        async with conn.transaction():
            await conn.execute("SET LOCAL session_replication_role = replica")
            await conn.execute(
                """UPDATE events SET event_type = 'forged',
                   hash = sha256(prev_hash || ledger_row_digest(position, event_id, 'forged', source, event_dt,
                                                   occurred_at, recorded_at, raw_body, headers, message_id))
                   WHERE position = $1""",
                tampered - 1,
            )
        one = await verify_chain(conn, segment=3)
        two = await verify_chain(conn, segment=2, helpers=[helper])
        async with conn.transaction():  # committed: the helper sees it
            await conn.execute("SET LOCAL session_replication_role = replica")
            await conn.execute("DELETE FROM events WHERE position IN ($1, $2)", tampered - 1, tampered)
        gap_one = await verify_chain(conn, segment=3)
        gap_two = await verify_chain(conn, segment=2, helpers=[helper])
    assert (one.ok, one.bad_position, one.problem) == (False, tampered, "its link to the previous row is broken")
    assert (two.ok, two.bad_position, two.problem) == (one.ok, one.bad_position, one.problem)
    assert (gap_two.ok, gap_two.bad_position, gap_two.problem) == (gap_one.ok, gap_one.bad_position, gap_one.problem)
    assert gap_one.problem == f"position {tampered - 1} is missing"


async def test_verify_never_reports_appends_made_during_its_walk(pool: asyncpg.Pool) -> None:
    """25 walks while three clients append: each walk checks the log up to the head it read first;
    appends that land meanwhile are neither walked nor taken for a broken tail."""
    log = EventLog(pool)
    await log.append([ev(f"seed-{i}") for i in range(200)])
    stop = asyncio.Event()

    async def client(n: int) -> int:
        sent = 0
        while not stop.is_set():
            await log.append([ev(f"c{n}-{sent}-{j}") for j in range(3)])
            sent += 1
        return sent

    clients = [asyncio.create_task(client(n)) for n in range(3)]
    reports = []
    try:
        async with pool.acquire() as conn:
            for _ in range(25):
                # small segments: many round trips per walk, so appends land in the middle of it
                reports.append(await verify_chain(conn, segment=16))
    finally:
        stop.set()
        sent = await asyncio.gather(*clients)
    assert [r.problem for r in reports if not r.ok] == []
    assert sum(sent) > 0
    assert len({r.head_position for r in reports}) > 1, "the log grew while the walks ran"
    assert reports[-1].head_position > 200
    async with pool.acquire() as conn:
        final = await verify_chain(conn)
    assert final.ok
    assert final.head_position == await log.head()


async def test_verify_finds_a_missing_head_a_missing_tail_and_a_row_beyond_the_head(pool: asyncpg.Pool) -> None:
    log = EventLog(pool)
    await log.append([ev(f"e{i}") for i in range(1, 7)])
    async with pool.acquire() as conn:
        async with conn.transaction():
            await conn.execute("SET LOCAL session_replication_role = replica")
            await conn.execute("DELETE FROM events WHERE position = 6")
        report = await verify_chain(conn, segment=4)
        assert (report.ok, report.bad_position) == (False, 6)
        assert "ends at position 5 but its head says 6" in (report.problem or "")

        async with conn.transaction():
            await conn.execute("SET LOCAL session_replication_role = replica")
            await conn.execute(
                "UPDATE ledger_head SET position = 4, hash = (SELECT hash FROM events WHERE position = 4)"
            )
        report = await verify_chain(conn)
        assert (report.ok, report.bad_position) == (False, 5)
        assert "rows beyond position 4, where its head says it ends" in (report.problem or "")

        async with conn.transaction():
            await conn.execute("SET LOCAL session_replication_role = replica")
            await conn.execute("DELETE FROM ledger_head")
        report = await verify_chain(conn)
        assert not report.ok
        assert "head" in (report.problem or "")


async def test_rolled_back_append_leaves_no_hole(pool: asyncpg.Pool) -> None:
    log = EventLog(pool)
    await log.append([ev("a")])
    async with pool.acquire() as conn:
        tx = conn.transaction()
        await tx.start()
        await conn.fetch(queries.append, ["b"], ["t"], ["flex"], [None], [None], [b"{}"], [None], [None])
        await tx.rollback()
    await log.append([ev("c")])
    assert await positions(pool) == [1, 2]
    assert await pool.fetchval("SELECT event_id FROM events WHERE position = 2") == "c"


async def test_two_connections_reader_never_skips(pool: asyncpg.Pool) -> None:
    """A appends and stays open; B appends and commits; a reader polls; A commits."""

    def args(eid: str) -> tuple[list[Any], ...]:
        return ([eid], ["t"], ["flex"], [None], [None], [b"{}"], [None], [None])

    a = await pool.acquire()
    b = await pool.acquire()
    try:
        tx_a = a.transaction()
        await tx_a.start()
        [row_a] = await a.fetch(queries.append, *args("from-a"))
        b_task = asyncio.create_task(b.fetch(queries.append, *args("from-b")))
        await asyncio.sleep(0.3)
        assert not b_task.done(), "B must wait for A: appends are serialised"
        # the reader sees nothing yet, so its checkpoint stays at 0
        assert await pool.fetch(queries.read_events, 0, 100) == []
        await tx_a.commit()
        [row_b] = await b_task
        seen = await pool.fetch(queries.read_events, 0, 100)
        assert [(r["position"], r["event_id"]) for r in seen] == [(1, "from-a"), (2, "from-b")]
        assert (row_a["out_position"], row_b["out_position"]) == (1, 2)
    finally:
        await pool.release(a)
        await pool.release(b)


async def test_fifty_concurrent_deliveries_of_ten_events(pool: asyncpg.Pool) -> None:
    log = EventLog(pool)
    batches: list[int] = []
    async with GroupCommitter(log, max_batch=16, max_wait=0.005, on_batch=batches.append) as committer:
        results = await asyncio.gather(*(committer.append(ev(f"evt-{i % 10}")) for i in range(50)))
    assert await positions(pool) == list(range(1, 11))
    by_id: dict[str, set[int]] = {}
    for i, r in enumerate(results):
        by_id.setdefault(f"evt-{i % 10}", set()).add(r.position)
    assert all(len(p) == 1 for p in by_id.values()), "every copy answers with the first copy's position"
    assert sum(not r.duplicate for r in results) == 10
    assert len(batches) < 50, "concurrent appends share transactions"
    notifications = await pool.fetchval("SELECT count(*) FROM events")  # sanity: 10 rows
    assert notifications == 10


async def test_one_event_the_database_rejects_fails_alone(pool: asyncpg.Pool) -> None:
    log = EventLog(pool)
    bad = NewEvent(event_id="bad", event_type="t", raw_body=b'{"a": "\\u0000"}')
    async with GroupCommitter(log, max_wait=0.01) as committer:
        results = await asyncio.gather(
            committer.append(ev("good-1")),
            committer.append(bad),
            committer.append(ev("good-2")),
            return_exceptions=True,
        )
    assert isinstance(results[1], UnusableEvent)
    assert {r.position for r in results if not isinstance(r, BaseException)} == {1, 2}


async def test_one_notify_per_batch(db_dsn: str, pool: asyncpg.Pool) -> None:
    listener = await asyncpg.connect(db_dsn)
    got: list[str] = []
    await listener.add_listener("ledger_events", lambda *args: got.append(args[3]))
    try:
        await EventLog(pool).append([ev("a"), ev("b"), ev("c")])
        await EventLog(pool).append([ev("a")])  # all duplicates: nothing new, no notification
        await asyncio.sleep(0.3)
    finally:
        await listener.close()
    assert got == ["3"]
