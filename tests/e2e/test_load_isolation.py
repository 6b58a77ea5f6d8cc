"""Reads never starve ingest, and slow clients never hold the server: over real HTTP.

* Read-your-writes waits cost no database round trips per waiting request (one watcher per
  process follows the checkpoints); a position beyond the log head is answered at once as not
  fresh; webhooks keep being accepted while hundreds of reads wait.
* A request whose headers or body do not arrive in time is closed; webhooks are served while
  such clients hold connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from pathlib import Path

import asyncpg
import httpx

from ledger_cli.processes import raw_get
from tests.support import API_TOKEN, RunningServer, flex_event, run_server, signed_headers

AUTH = {"Authorization": f"Bearer {API_TOKEN}"}
WAIT_LIMIT = 5.0  # how long a read-your-writes wait may last (the contract's "a few seconds")


async def _transactions(dsn: str) -> int:
    """Transactions committed in this database so far (every query outside a transaction is one)."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("SELECT pg_stat_force_next_flush()")
        await conn.execute("SELECT pg_stat_clear_snapshot()")
        value = await conn.fetchval("SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()")
        return int(value)
    finally:
        await conn.close()


def _webhook(client: httpx.Client, server: RunningServer) -> httpx.Response:
    body = flex_event("customer.created")
    return client.post(server.url + "/webhooks/flex", content=body, headers=signed_headers(body))


async def _concurrent_reads(url: str, paths: list[str]) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=len(paths))
    async with httpx.AsyncClient(base_url=url, headers=AUTH, timeout=30, limits=limits) as client:
        return await asyncio.gather(*(client.get(p) for p in paths))


def test_waiting_reads_cost_no_round_trips_and_never_block_webhooks(db_dsn: str, tmp_path: Path) -> None:
    # No workers: the projections stay behind the log, so every read-your-writes read waits.
    with (
        run_server(tmp_path, {"LEDGER_DATABASE_URL": db_dsn}, args=["--no-workers"]) as server,
        httpx.Client(timeout=30) as client,
    ):
        head = max(_webhook(client, server).json()["position"] for _ in range(5))
        time.sleep(1.5)  # stats of the appends flushed before the count below starts
        before = asyncio.run(_transactions(db_dsn))

        waiting_paths = [f"/v1/orders/cs_{i}?min_position={head}" for i in range(200)]
        beyond_paths = [f"/v1/orders/cs_{i}?min_position={head + 10_000}" for i in range(100)]
        started = time.monotonic()

        async def everything() -> tuple[list[httpx.Response], list[httpx.Response], list[int]]:
            waits = asyncio.ensure_future(_concurrent_reads(server.url, waiting_paths))
            await asyncio.sleep(0.5)  # the waits are in
            beyond = await _concurrent_reads(server.url, beyond_paths)
            beyond_done = time.monotonic() - started
            statuses = [(await asyncio.to_thread(_webhook, client, server)).status_code for _ in range(20)]
            waited = await waits
            assert beyond_done < WAIT_LIMIT, f"reads beyond the head were waited for ({beyond_done:.1f}s)"
            return waited, beyond, statuses

        waited, beyond, webhook_statuses = asyncio.run(everything())
        time.sleep(1.5)
        after = asyncio.run(_transactions(db_dsn))

    assert webhook_statuses == [200] * 20, "webhooks failed while reads waited"
    assert {r.status_code for r in waited} == {404}
    assert {r.headers["ledger-projection-fresh"] for r in waited} == {"false"}
    assert {r.status_code for r in beyond} == {404}
    assert {r.headers["ledger-projection-fresh"] for r in beyond} == {"false"}
    # 300 reads (one query each), 20 webhooks and the watcher's resyncs: hundreds of transactions.
    # Polling every waiter would have cost 200 waits x 5 s / 20 ms = 50,000.
    assert after - before < 2_000, f"{after - before} transactions for 300 reads"


def test_waiting_reads_wake_when_the_projection_arrives(db_dsn: str, tmp_path: Path) -> None:
    with run_server(tmp_path, {"LEDGER_DATABASE_URL": db_dsn}) as server, httpx.Client(timeout=30) as client:
        body = flex_event("customer.created", event_id="evt_wake")
        position = client.post(server.url + "/webhooks/flex", content=body, headers=signed_headers(body)).json()[
            "position"
        ]
        customer = json.loads(body)["object"]["customer"]["customer_id"]
        reads = asyncio.run(_concurrent_reads(server.url, [f"/v1/customers/{customer}?min_position={position}"] * 50))
        projections = server.get("/v1/projections", params={"min_position": position})
    assert {r.status_code for r in reads} == {200}
    assert {r.headers["ledger-projection-fresh"] for r in reads} == {"true"}
    # /v1/projections waits for every projection too.
    assert projections.headers["ledger-projection-fresh"] == "true"
    assert all(p["position"] >= position for p in projections.json()["data"] if p["kind"] == "projection")


def _slow_client(port: int) -> socket.socket:
    """Half a request: the request line and one header, then nothing."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(b"POST /webhooks/flex HTTP/1.1\r\nHost: x\r\n")
    return sock


def _closed_by_server(sock: socket.socket, within: float) -> bool:
    sock.settimeout(within)
    try:
        return sock.recv(1) == b""
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True


def test_slow_clients_are_cut_off_and_webhooks_go_on(db_dsn: str, tmp_path: Path) -> None:
    env = {
        "LEDGER_DATABASE_URL": db_dsn,
        "LEDGER_HTTP_HEADER_TIMEOUT": "2",
        "LEDGER_HTTP_BODY_TIMEOUT": "2",
    }
    with run_server(tmp_path, env) as server, httpx.Client(timeout=10) as client:
        port = int(server.url.rsplit(":", 1)[1])
        slow = [_slow_client(port) for _ in range(300)]
        # A body that never finishes: headers complete, 10 of 100 bytes sent.
        body_sock = socket.create_connection(("127.0.0.1", port))
        body_sock.sendall(b"POST /webhooks/flex HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789")
        try:
            statuses = [_webhook(client, server).status_code for _ in range(20)]
            assert statuses == [200] * 20
            # Each slow connection closed by the server, well before a client would give up.
            assert all(_closed_by_server(s, within=10) for s in slow)
            assert _closed_by_server(body_sock, within=10)
            assert _webhook(client, server).status_code == 200
        finally:
            for s in [*slow, body_sock]:
                s.close()
        assert "slow connection" in server.log()


def test_many_plain_reads_at_once_are_all_answered_and_webhooks_go_on(db_dsn: str, tmp_path: Path) -> None:
    """Reads are admitted a few at a time (api/admission.py): every one is still answered."""
    with (
        run_server(tmp_path, {"LEDGER_DATABASE_URL": db_dsn, "LEDGER_READ_POOL_SIZE": "2"}) as server,
        httpx.Client(timeout=30) as client,
    ):
        assert _webhook(client, server).status_code == 200

        async def both() -> tuple[list[httpx.Response], list[int]]:
            reads = asyncio.ensure_future(_concurrent_reads(server.url, [f"/v1/orders/cs_{i}" for i in range(300)]))
            hooks = [(await asyncio.to_thread(_webhook, client, server)).status_code for _ in range(10)]
            return await reads, hooks

        reads, hooks = asyncio.run(both())
    assert hooks == [200] * 10
    assert [r.status_code for r in reads] == [404] * 300


def _reads_gauges(client: httpx.Client, server: RunningServer) -> tuple[float, float]:
    """``ledger_reads_queued`` and ``ledger_reads_in_progress`` from /metrics."""
    values = dict(line.split() for line in client.get(server.url + "/metrics").text.splitlines() if line[:1] != "#")
    return float(values["ledger_reads_queued"]), float(values["ledger_reads_in_progress"])


def test_metrics_show_the_reads_waiting_for_their_turn(db_dsn: str, tmp_path: Path) -> None:
    """Reads stuck behind a lock on the orders table: two worked on, the rest queued. /metrics says
    so and /readyz answers (they have connections of their own) while webhooks go on; once the lock
    goes (before the reads' lock_timeout), every read is answered and the queue is empty."""
    with (
        run_server(tmp_path, {"LEDGER_DATABASE_URL": db_dsn, "LEDGER_READ_POOL_SIZE": "2"}) as server,
        httpx.Client(timeout=30) as client,
    ):
        port = int(server.url.rsplit(":", 1)[1])

        async def everything() -> tuple[
            list[tuple[float, bytes]], list[tuple[float, float]], list[int], httpx.Response
        ]:
            blocker = await asyncpg.connect(db_dsn)
            try:
                locked = blocker.transaction()
                await locked.start()
                await blocker.execute("LOCK TABLE orders IN ACCESS EXCLUSIVE MODE")
                reads = asyncio.gather(*(raw_get(port, f"/v1/orders/cs_{i}", API_TOKEN) for i in range(50)))
                seen: list[tuple[float, float]] = []
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline and (not seen or seen[-1] != (48, 2)):
                    seen.append(await asyncio.to_thread(_reads_gauges, client, server))
                hooks = [(await asyncio.to_thread(_webhook, client, server)).status_code for _ in range(5)]
                ready = await asyncio.to_thread(client.get, server.url + "/readyz")
                await locked.rollback()
            finally:
                await blocker.close()
            return await reads, seen, hooks, ready

        answered, seen, hooks, ready = asyncio.run(everything())
        after = _reads_gauges(client, server)
    assert seen[-1] == (48, 2), seen[-5:]
    assert ready.status_code == 200, ready.text
    assert ready.elapsed.total_seconds() < 1
    assert hooks == [200] * 5
    assert {reply.split(b"\r\n")[0] for _, reply in answered} == {b"HTTP/1.1 404 Not Found"}
    assert after == (0, 0)


def _answer(sock: socket.socket, within: float = 10) -> bytes:
    sock.settimeout(within)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except (TimeoutError, ConnectionResetError):
        pass
    return data


def test_oversized_or_too_many_headers_get_431_and_webhooks_go_on(db_dsn: str, tmp_path: Path) -> None:
    env = {"LEDGER_DATABASE_URL": db_dsn, "LEDGER_HTTP_MAX_HEADER_BYTES": "16384", "LEDGER_HTTP_MAX_HEADERS": "20"}
    with run_server(tmp_path, env) as server, httpx.Client(timeout=10) as client:
        port = int(server.url.rsplit(":", 1)[1])
        huge = socket.create_connection(("127.0.0.1", port))
        many = socket.create_connection(("127.0.0.1", port))
        try:
            # a 50 MB header line, sent in pieces: refused once 16 KiB are in, whatever follows
            huge.sendall(b"POST /webhooks/flex HTTP/1.1\r\nHost: x\r\nX-Big: ")
            sent = 0
            with contextlib.suppress(OSError):  # the server closes it mid-send
                while sent < 50_000_000:
                    huge.sendall(b"a" * 65536)
                    sent += 65536
            assert sent < 50_000_000  # cut off long before the end
            answer = _answer(huge)  # the 431, unless the reset of the unread rest overtook it
            assert answer.startswith(b"HTTP/1.1 431 ") or answer == b"", answer[:200]
            many.sendall(
                b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(30)) + b"\r\n"
            )
            reply = _answer(many)
            assert reply.startswith(b"HTTP/1.1 431 "), reply[:200]
            assert b"more than 20 request headers" in reply
            assert _webhook(client, server).status_code == 200
            # headers within the limits (and a body well past them) are served as ever
            assert (
                client.get(server.url + "/healthz", headers={f"x-{i}": "1" * 500 for i in range(15)}).status_code == 200
            )
        finally:
            huge.close()
            many.close()


def test_over_the_connection_cap_the_slowest_make_room_and_webhooks_go_on(db_dsn: str, tmp_path: Path) -> None:
    env = {"LEDGER_DATABASE_URL": db_dsn, "LEDGER_HTTP_MAX_CONNECTIONS": "100", "LEDGER_HTTP_HEADER_TIMEOUT": "30"}
    with run_server(tmp_path, env) as server, httpx.Client(timeout=10) as client:
        port = int(server.url.rsplit(":", 1)[1])
        slow = [_slow_client(port) for _ in range(400)]  # four times the cap, each half a request
        try:
            statuses = [_webhook(client, server).status_code for _ in range(20)]
            assert statuses == [200] * 20, statuses
            # the oldest of them were closed to make room, long before their header timeout
            assert sum(_closed_by_server(s, within=2) for s in slow[:200]) >= 150
        finally:
            for s in slow:
                s.close()
        assert "over 100 open" in server.log()


def test_read_your_writes_waits_keep_their_limit_under_any_concurrency(db_dsn: str, tmp_path: Path) -> None:
    """600 reads wait at once for a position no projection will reach (no workers), while webhooks
    arrive: each is answered, not fresh, within the wait's limit and a moment to read."""
    with (
        run_server(tmp_path, {"LEDGER_DATABASE_URL": db_dsn}, args=["--no-workers"]) as server,
        httpx.Client(timeout=30) as client,
    ):
        port = int(server.url.rsplit(":", 1)[1])
        head = max(_webhook(client, server).json()["position"] for _ in range(3))

        async def everything() -> tuple[list[tuple[float, bytes]], list[float]]:
            # the process's watcher loses its connection as the reads arrive: they wait for it to
            # reconnect and then for the position, within the one limit
            conn = await asyncpg.connect(db_dsn)
            try:
                await conn.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database()"
                    " AND pid <> pg_backend_pid() AND application_name = 'flex-ledger'"
                    " AND query NOT LIKE 'SELECT pg_advisory_unlock_all()%'"  # not the pools' idle ones
                )
            finally:
                await conn.close()
            waits = asyncio.gather(
                *(raw_get(port, f"/v1/orders/cs_{i}?min_position={head}", API_TOKEN) for i in range(600))
            )
            webhook_seconds = []
            for _ in range(40):
                started = time.monotonic()
                reply = await asyncio.to_thread(_webhook, client, server)
                assert reply.status_code == 200
                webhook_seconds.append(time.monotonic() - started)
                await asyncio.sleep(0.05)
            return await waits, webhook_seconds

        waited, webhook_seconds = asyncio.run(everything())
    seconds = sorted(s for s, _ in waited)
    assert all(r.startswith(b"HTTP/1.1 404") for _, r in waited)
    assert all(b"ledger-projection-fresh: false" in r for _, r in waited)
    assert seconds[-1] < WAIT_LIMIT + 1.5, f"the slowest wait took {seconds[-1]:.1f}s (p50 {seconds[300]:.1f}s)"
    assert max(webhook_seconds) < 1.0, f"a webhook took {max(webhook_seconds):.2f}s while reads waited"
