"""Running the service's own processes: free ports, the installed ``ledger`` script, waiting for a
process to answer, stopping it, the Flex stand-in, and a GET timed over a plain socket. Shared by
the demo, the tests and the benchmarks."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

__all__ = ["StandIn", "free_port", "ledger_command", "raw_get", "run_standin", "stop", "wait_until_ok"]


def free_port(preferred: int = 0) -> int:
    """``preferred`` when it is free, else any free port."""
    for port in (preferred, 0) if preferred else (0,):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(s.getsockname()[1])
    raise OSError("no free port")


async def raw_get(port: int, path: str, token: str) -> tuple[float, bytes]:
    """One GET to the service on ``port`` over a plain socket: the seconds until the whole reply was
    in, and the reply. Hundreds at once cost the client next to nothing (an HTTP client library on
    the same cores would spend more than the server it measures)."""
    started = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        f"GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n".encode()
    )
    await writer.drain()
    reply = await reader.read()
    writer.close()
    return time.monotonic() - started, reply


def ledger_command() -> str:
    """The installed ``ledger`` console script of the running interpreter's environment."""
    path = Path(sys.executable).parent / "ledger"
    if not path.exists():
        raise RuntimeError(f"ledger is not installed next to {sys.executable}")
    return str(path)


def wait_until_ok(
    url: str, process: subprocess.Popen[bytes], what: str, *, timeout: float = 60, log_path: Path | None = None
) -> None:
    """Waits until ``url`` answers 200; raises (with the process's log, when given) if it exits first."""

    def log() -> str:
        return ":\n" + log_path.read_text(errors="replace") if log_path is not None and log_path.exists() else ""

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode}{log()}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2).status_code == 200:
                return
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not start in {timeout:.0f} s{log()}")


def stop(process: subprocess.Popen[bytes] | None, timeout: float = 30) -> None:
    """SIGTERM, then SIGKILL if it has not exited within ``timeout`` seconds."""
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


class StandIn:
    """A running Flex stand-in (``ledger flex-standin``) and its control routes."""

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

    def fault(
        self,
        session_id: str = "*",
        *,
        script: list[dict[str, object]] | None = None,
        always: dict[str, object] | None = None,
    ) -> None:
        spec: dict[str, object] = {"session_id": session_id, "script": script or []}
        if always is not None:
            spec["always"] = always
        httpx.post(self.url + "/_standin/faults", json=spec, timeout=10).raise_for_status()

    def clear_faults(self) -> None:
        httpx.delete(self.url + "/_standin/faults", timeout=10).raise_for_status()


@contextlib.contextmanager
def run_standin(api_key: str, port: int | None = None, *, delay: float = 0.0) -> Iterator[StandIn]:
    port = port or free_port()
    process = subprocess.Popen(
        [ledger_command(), "flex-standin", "--port", str(port), "--api-key", api_key, "--delay", str(delay)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ok(url + "/_standin/calls", process, "the Flex stand-in", timeout=30)
        yield StandIn(process, url, port)
    finally:
        process.terminate()
        process.wait(10)
