"""Outbound delivery over real HTTP: the installed server and command, a receiver in this process
that verifies every message with the official ``standardwebhooks`` library."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from standardwebhooks.webhooks import Webhook

from ledger_cli.flex_standin import made_up_line_items
from ledger_cli.scenarios import Checkout, checkout_events
from tests.support import (
    RunningServer,
    console_csrf,
    console_signed_in,
    deliver,
    fulfillment_env,
    ledger_command,
    run_server,
    run_standin,
)


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes

    @property
    def id(self) -> str:
        return self.headers["webhook-id"]

    @property
    def doc(self) -> dict[str, Any]:
        return json.loads(self.body)  # type: ignore[no-any-return]


@dataclass
class Receiver:
    """A destination's receiver: records every request; ``answer`` picks each reply's status."""

    answer: Callable[[Received, int], int] = lambda _, __: 200
    delay: float = 0.0
    got: list[Received] = field(default_factory=list)
    url: str = ""
    lock: threading.Lock = field(default_factory=threading.Lock)

    def attempts_of(self, message_id: str) -> list[Received]:
        with self.lock:
            return [r for r in self.got if r.id == message_id]

    def delivered(self) -> dict[str, Received]:
        """The messages answered 2xx, by id (the last such attempt)."""
        with self.lock:
            return {r.id: r for r in self.got if getattr(r, "status", 0) // 100 == 2}


@contextmanager
def receiving(receiver: Receiver) -> Iterator[Receiver]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length") or 0))
            got = Received({k.lower(): v for k, v in self.headers.items()}, body)
            with receiver.lock:
                receiver.got.append(got)
                seen = sum(1 for r in receiver.got if r.id == got.id)
            if receiver.delay:
                time.sleep(receiver.delay)
            status = receiver.answer(got, seen)
            got.status = status  # type: ignore[attr-defined]
            self.send_response(status)
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    receiver.url = f"http://127.0.0.1:{server.server_port}/hooks"
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()


def ledger(env: Mapping[str, str], *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [ledger_command(), *args], env={**os.environ, **env}, capture_output=True, text=True, timeout=60
    )
    if check:
        assert done.returncode == 0, done.stdout + done.stderr
    return done


def add_destination(env: Mapping[str, str], url: str, *extra: str) -> tuple[str, str]:
    out = ledger(env, "destinations", "add", url, *extra).stdout
    fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line and not line.startswith("ledger"))
    return fields["id"].strip(), fields["secret"].strip()


def wait_for(condition: Callable[[], bool], timeout: float = 60, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def verified(secret: str, got: Received) -> dict[str, Any]:
    """The message as the official Standard Webhooks library verifies it."""
    return Webhook(secret).verify(got.body, got.headers)  # type: ignore[no-any-return]


def items_of(c: Checkout) -> int:
    """How many line items (so adjustments) the Flex stand-in answers for the checkout."""
    return len(made_up_line_items(c.session_id))


def adjustments(server: RunningServer) -> list[dict[str, Any]]:
    return server.get("/v1/inventory/adjustments?limit=1000").json()["data"]  # type: ignore[no-any-return]


@contextmanager
def ledger_with_delivery(
    tmp_path: Path, db_dsn: str, schedule: str = "0,0.3,0.3,0.3", concurrency: int = 8
) -> Iterator[tuple[RunningServer, dict[str, str]]]:
    with run_standin() as standin:
        env = {
            "LEDGER_DATABASE_URL": db_dsn,
            **fulfillment_env(standin.api_base),
            "LEDGER_RECONCILE_INTERVAL": "0",
            "LEDGER_DELIVERY_ALLOW_PRIVATE": "true",
            "LEDGER_DELIVERY_SCHEDULE": schedule,
            "LEDGER_DELIVERY_TIMEOUT": "5",
            "LEDGER_DELIVERY_CONCURRENCY": str(concurrency),
        }
        with run_server(tmp_path, env) as server:
            yield server, env


def test_every_adjustment_and_order_is_delivered_signed_whatever_the_arrival_order(db_dsn: str, tmp_path: Path) -> None:
    with receiving(Receiver()) as receiver, ledger_with_delivery(tmp_path, db_dsn) as (server, env):
        destination, secret = add_destination(env, receiver.url, "--mode", "all")
        checkouts = [Checkout(seed=900 + i, items=2) for i in range(3)] + [
            Checkout(seed=910, test_mode=True),
            Checkout(seed=911, mode="subscription"),
        ]
        events = [e for c in checkouts for e in checkout_events(c)]
        random.Random(7).shuffle(events)
        deliver(server, events)
        wait_for(lambda: len(adjustments(server)) == sum(items_of(c) for c in checkouts), what="fulfillment")
        feed = {a["adjustment_id"]: a for a in adjustments(server)}
        wanted_ids = set(feed)

        def adjusted() -> dict[str, dict[str, Any]]:
            docs = [verified(secret, r) for r in receiver.delivered().values()]
            return {d["data"]["adjustment_id"]: d for d in docs if d["type"] == "inventory.adjusted"}

        wait_for(lambda: set(adjusted()) == wanted_ids, what="every adjustment delivered")
        for adjustment_id, doc in adjusted().items():
            assert doc["data"] == feed[adjustment_id]  # as the feed shows it
            assert doc["position"] == feed[adjustment_id]["position"]
            assert doc["test_mode"] == feed[adjustment_id]["test_mode"]

        # order.updated: every session, its last message the order as the API serves it now
        def orders() -> dict[str, dict[str, Any]]:
            latest: dict[str, dict[str, Any]] = {}
            for r in receiver.delivered().values():
                d = verified(secret, r)
                if d["type"] == "order.updated":
                    sid = d["data"]["checkout_session_id"]
                    if sid not in latest or d["position"] > latest[sid]["position"]:
                        latest[sid] = d
            return latest

        sessions = {c.session_id for c in checkouts}
        wait_for(lambda: set(orders()) == sessions, what="order.updated for every session")
        wait_for(
            lambda: all(d["data"]["fulfillment"]["status"] == "fulfilled" for d in orders().values()),
            what="the fulfilled order delivered",
        )
        for sid, doc in orders().items():
            as_of = server.get(f"/v1/orders/{sid}?as_of_position={doc['position']}").json()
            assert doc["data"] == as_of
        wait_for(  # delivered attempts are recorded together, a moment after the receiver answered
            lambda: server.get("/v1/destinations").json()["data"][0]["delivered"] == len(receiver.delivered()),
            what="the deliveries recorded",
        )

        # customer.updated and subscription.updated: their last message is the document served now
        def latest(kind: str, key: str) -> dict[str, dict[str, Any]]:
            found: dict[str, dict[str, Any]] = {}
            for r in receiver.delivered().values():
                d = verified(secret, r)
                if d["type"] == kind and (
                    d["data"][key] not in found or d["position"] > found[d["data"][key]]["position"]
                ):
                    found[d["data"][key]] = d
            return found

        def customers_delivered() -> bool:  # each customer's last message: the document served now
            sent = latest("customer.updated", "customer_id")
            return all(
                c.customer_id in sent
                and sent[c.customer_id]["data"] == server.get(f"/v1/customers/{c.customer_id}").json()
                for c in checkouts
            )

        wait_for(customers_delivered, what="every customer as the API serves it")
        subscription = str(checkouts[-1].subscription_id)
        wait_for(
            lambda: (
                latest("subscription.updated", "subscription_id").get(subscription, {}).get("data")
                == server.get(f"/v1/subscriptions/{subscription}").json()
            ),
            what="the subscription as the API serves it",
        )
        first_invoice = str(checkouts[-1].invoice_id)
        wait_for(
            lambda: (
                latest("invoice.updated", "invoice_id").get(first_invoice, {}).get("data")
                == server.get(f"/v1/invoices/{first_invoice}").json()
            ),
            what="the subscription's invoice as the API serves it",
        )
        listed = server.get("/v1/destinations").json()["data"]
        assert [d["id"] for d in listed] == [destination]
        assert listed[0]["failed"] == 0
        assert "secret" not in json.dumps(listed)

        def recorded() -> set[str]:
            page = server.get(f"/v1/destinations/{destination}/messages?status=delivered&limit=1000").json()
            return {m["message_id"] for m in page["data"]}

        # the messages that went out while the waits above ran are recorded a moment after their answer
        wait_for(lambda: recorded() == set(receiver.delivered()), what="every delivered message recorded")
        metrics = server.get("/metrics").text
        assert 'ledger_delivery_attempts_total{outcome="delivered",type="inventory.adjusted"}' in metrics
        assert f'ledger_destination_messages{{destination="{destination}",status="delivered"}}' in metrics


def test_a_failing_receiver_gets_the_same_id_and_body_until_it_answers_2xx(db_dsn: str, tmp_path: Path) -> None:
    with (
        receiving(Receiver(answer=lambda _, seen: 500 if seen < 3 else 200)) as receiver,
        ledger_with_delivery(tmp_path, db_dsn) as (server, env),
    ):
        _destination, secret = add_destination(env, receiver.url, "--types", "inventory.adjusted")
        c = Checkout(seed=920)
        deliver(server, checkout_events(c))
        wait_for(lambda: len(receiver.delivered()) == items_of(c), what="delivery after two 500s")
        for message_id in receiver.delivered():
            attempts = receiver.attempts_of(message_id)
            assert len(attempts) == 3
            assert {a.body for a in attempts} == {attempts[0].body}  # byte-identical
            for a in attempts:
                verified(secret, a)
        assert {verified(secret, r)["type"] for r in receiver.got} == {"inventory.adjusted"}  # --types


def test_410_disables_the_destination_and_nothing_more_is_attempted(db_dsn: str, tmp_path: Path) -> None:
    # one attempt at a time, each answered slowly: while the first is in flight the sender claims
    # the next message ahead, which must not be attempted once the receiver has said 410
    with (
        receiving(Receiver(answer=lambda _, __: 410, delay=0.5)) as receiver,
        ledger_with_delivery(tmp_path, db_dsn, concurrency=1) as (server, env),
    ):
        destination, _ = add_destination(env, receiver.url)
        deliver(server, checkout_events(Checkout(seed=930, items=4)))
        wait_for(
            lambda: server.get(f"/v1/destinations/{destination}").json()["state"] == "disabled_by_receiver",
            what="disabled by the receiver",
        )
        deliver(server, checkout_events(Checkout(seed=931)))
        time.sleep(3)
        assert len(receiver.got) == 1
        receiver.answer, receiver.delay = (lambda _, __: 200), 0.0
        ledger(env, "destinations", "enable", destination)
        wait_for(  # what was claimed ahead is due at once, not when its lease ends
            lambda: server.get(f"/v1/destinations/{destination}").json()["retrying"] == 0,
            what="sent after enable",
            timeout=10,
        )
        wait_for(  # recorded a moment after the receiver answered
            lambda: len(receiver.delivered()) == server.get(f"/v1/destinations/{destination}").json()["delivered"] > 0,
            what="every delivery recorded",
        )


def test_disabled_by_hand_sends_nothing_more_and_resumes_at_once_when_enabled(db_dsn: str, tmp_path: Path) -> None:
    # one attempt at a time, each answered slowly: a message is always claimed ahead, and must be
    # neither sent while disabled nor held until its lease ends once enabled
    with (
        receiving(Receiver(delay=0.5)) as receiver,
        ledger_with_delivery(tmp_path, db_dsn, concurrency=1) as (server, env),
    ):
        destination, _ = add_destination(env, receiver.url)
        deliver(server, checkout_events(Checkout(seed=935, items=4)))
        wait_for(lambda: len(receiver.got) >= 1, what="the first attempt")
        ledger(env, "destinations", "disable", destination)
        time.sleep(2)  # the worker sees the state within its poll interval; an attempt in flight ends
        sent = len(receiver.got)
        time.sleep(3)
        assert len(receiver.got) == sent
        assert server.get(f"/v1/destinations/{destination}").json()["retrying"] > 0
        ledger(env, "destinations", "enable", destination)
        wait_for(
            lambda: server.get(f"/v1/destinations/{destination}").json()["retrying"] == 0,
            what="sent after enable",
            timeout=15,
        )


def test_failed_after_the_schedule_then_retried_on_request(db_dsn: str, tmp_path: Path) -> None:
    with (
        receiving(Receiver(answer=lambda _, __: 503)) as receiver,
        ledger_with_delivery(tmp_path, db_dsn, schedule="0,0.2") as (server, env),
    ):
        destination, _ = add_destination(env, receiver.url, "--types", "inventory.*")
        c = Checkout(seed=940)
        deliver(server, checkout_events(c))
        wait_for(
            lambda: server.get(f"/v1/destinations/{destination}").json()["failed"] == items_of(c),
            what="failed after the schedule",
        )
        assert all(len(receiver.attempts_of(r.id)) == 2 for r in receiver.got)
        shown = ledger(env, "destinations", "list").stdout
        assert destination in shown
        assert "503" in shown
        receiver.answer = lambda _, __: 204
        out = ledger(env, "destinations", "retry", destination, "--all-failed").stdout
        assert out.count("queued again") == items_of(c)
        wait_for(lambda: len(receiver.delivered()) == items_of(c), what="delivered after retry")
        assert server.get(f"/v1/destinations/{destination}").json()["failed"] == 0


def test_the_console_shows_failed_messages_and_retries_them(db_dsn: str, tmp_path: Path) -> None:
    with (
        receiving(Receiver(answer=lambda _, __: 500)) as receiver,
        ledger_with_delivery(tmp_path, db_dsn, schedule="0") as (server, env),
    ):
        destination, _ = add_destination(env, receiver.url, "--types", "inventory.adjusted", "--description", "ERP")
        c = Checkout(seed=945)
        deliver(server, checkout_events(c))
        wait_for(lambda: server.get(f"/v1/destinations/{destination}").json()["failed"] == items_of(c), what="failed")
        failed = server.get(f"/v1/destinations/{destination}/messages?status=failed").json()["data"]
        with console_signed_in(server) as console:
            page = console.get("/console/destinations").text
            assert destination in page
            assert "the receiver answered 500" in page
            for m in failed:
                assert m["message_id"] in page
            receiver.answer = lambda _, __: 200
            token = console_csrf(console, "/console/destinations")
            reply = console.post(
                "/console/destinations/retry",
                data={"_csrf_token": token, "destination_id": destination, "message_id": failed[0]["message_id"]},
            )
            assert reply.status_code == 303
            assert "1 failed message(s) queued again" in console.get(reply.headers["location"]).text
        wait_for(lambda: failed[0]["message_id"] in receiver.delivered(), what="the retried message delivered")
        assert server.get(f"/v1/destinations/{destination}").json()["failed"] == items_of(c) - 1


def test_replay_sends_the_same_ids_and_bytes(db_dsn: str, tmp_path: Path) -> None:
    with receiving(Receiver()) as receiver, ledger_with_delivery(tmp_path, db_dsn) as (server, env):
        destination, _ = add_destination(env, receiver.url)
        c = Checkout(seed=950, items=2)
        deliver(server, checkout_events(c))
        wait_for(
            lambda: sum(verified_type(r) == "inventory.adjusted" for r in receiver.delivered().values()) == items_of(c),
            what="first delivery",
        )
        time.sleep(1)
        first = {r.id: r.body for r in receiver.delivered().values()}
        receiver.got.clear()
        ledger(env, "destinations", "replay", destination, "--from-position", "1")
        wait_for(lambda: set(receiver.delivered()) >= set(first), what="replayed")
        again = {r.id: r.body for r in receiver.delivered().values()}
        assert {k: again[k] for k in first} == first


def verified_type(r: Received) -> str:
    return str(r.doc["type"])


def test_rotation_signs_with_both_secrets_during_the_overlap(db_dsn: str, tmp_path: Path) -> None:
    with receiving(Receiver()) as receiver, ledger_with_delivery(tmp_path, db_dsn) as (server, env):
        destination, old = add_destination(env, receiver.url, "--types", "inventory.adjusted")
        new = ledger(env, "destinations", "rotate-secret", destination).stdout.split("secret:", 1)[1].split()[0]
        assert new != old
        assert new.startswith("whsec_")
        deliver(server, checkout_events(Checkout(seed=960)))
        wait_for(lambda: bool(receiver.delivered()), what="a message")
        for got in receiver.delivered().values():
            assert len(got.headers["webhook-signature"].split()) == 2
            verified(old, got)
            verified(new, got)
        shown = ledger(env, "destinations", "show", destination, "--json").stdout
        assert json.loads(shown)["rotating_until"] is not None
        assert old not in shown
        assert new not in shown


def test_live_and_test_objects_go_to_their_modes(db_dsn: str, tmp_path: Path) -> None:
    with (
        receiving(Receiver()) as live,
        receiving(Receiver()) as test,
        ledger_with_delivery(tmp_path, db_dsn) as (
            server,
            env,
        ),
    ):
        add_destination(env, live.url, "--types", "inventory.adjusted")
        add_destination(env, test.url, "--types", "inventory.adjusted", "--mode", "test")
        deliver(server, checkout_events(Checkout(seed=970)) + checkout_events(Checkout(seed=971, test_mode=True)))
        wait_for(lambda: bool(live.delivered()) and bool(test.delivered()), what="both modes")
        time.sleep(1)
        assert {r.doc["test_mode"] for r in live.delivered().values()} == {False}
        assert {r.doc["test_mode"] for r in test.delivered().values()} == {True}


def test_a_hanging_receiver_delays_neither_another_destination_nor_ingest(db_dsn: str, tmp_path: Path) -> None:
    with (
        receiving(Receiver(delay=20)) as slow,
        receiving(Receiver()) as fast,
        ledger_with_delivery(tmp_path, db_dsn) as (server, env),
    ):
        env = {**env}
        add_destination(env, slow.url)
        add_destination(env, fast.url)
        started = time.monotonic()
        c = Checkout(seed=980, items=3)
        events = checkout_events(c)
        deliver(server, events)
        wait_for(lambda: len(fast.delivered()) >= items_of(c) + 1, timeout=15, what="the fast destination")
        assert time.monotonic() - started < 15
        t0 = time.monotonic()
        deliver(server, checkout_events(Checkout(seed=981)))
        assert time.monotonic() - t0 < 5  # ingest is not held by the hanging receiver


def test_private_addresses_are_refused_unless_allowed(db_dsn: str) -> None:
    env = {"LEDGER_DATABASE_URL": db_dsn}
    for url in ("http://127.0.0.1:9/hook", "http://localhost/x", "http://169.254.169.254/latest", "http://10.1.2.3/"):
        refused = ledger(env, "destinations", "add", url, check=False)
        assert refused.returncode == 1
        assert "LEDGER_DELIVERY_ALLOW_PRIVATE" in refused.stderr
    assert "no destinations" in ledger(env, "destinations", "list").stdout
    bad = ledger(env, "destinations", "add", "ftp://example.com/", check=False)
    assert bad.returncode == 1
    assert "http" in bad.stderr


def test_a_process_killed_mid_delivery_delivers_after_restart(db_dsn: str, tmp_path: Path) -> None:
    with run_standin() as standin, receiving(Receiver(delay=3)) as receiver:
        env = {
            "LEDGER_DATABASE_URL": db_dsn,
            **fulfillment_env(standin.api_base),
            "LEDGER_RECONCILE_INTERVAL": "0",
            "LEDGER_DELIVERY_ALLOW_PRIVATE": "true",
            "LEDGER_DELIVERY_SCHEDULE": "0,0.3",
        }
        destination, _ = add_destination(env, receiver.url, "--types", "inventory.adjusted")
        c = Checkout(seed=990, items=3)
        with run_server(tmp_path, env) as server:
            deliver(server, checkout_events(c))
            wait_for(lambda: len(receiver.got) >= 1, what="an attempt in flight")
            server.process.send_signal(signal.SIGKILL)
            server.process.wait()
        receiver.delay = 0
        before = {r.id for r in receiver.got}
        with run_server(tmp_path, env) as server:

            def done() -> bool:
                d = server.get(f"/v1/destinations/{destination}").json()
                return bool(d["delivered"] == items_of(c) and d["retrying"] == 0)

            wait_for(done, what="every message delivered after restart")
            assert set(receiver.delivered()) >= before  # what was in flight was sent again, none lost
