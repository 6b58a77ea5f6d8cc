"""Slow and idle clients: deadlines for a request's headers and body, on uvicorn's httptools protocol.

uvicorn closes idle keep-alive connections, but a connection that sends half a request (a
header line a minute, a body a byte at a time) stays open for as long as the client likes, and
enough of them exhaust the process's file descriptors. Here every request's headers must be
complete within ``header_timeout`` seconds of its connection opening or of its first byte, and
its body within ``body_timeout`` seconds of its headers; otherwise the connection is closed.
Headers larger than ``max_header_bytes`` in all, or more than ``max_headers`` of them, get a
431 and the connection closed before the request reaches the app: httptools itself sets no limit,
and one 100 MB header line would otherwise be buffered and parsed on the event loop. The number of
connections served at once is capped separately (uvicorn's ``limit_concurrency``: beyond it, new
requests get a 503), and idle kept-alive connections are closed after ``timeout_keep_alive``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import resource
import time
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

__all__ = ["guarded_protocol"]

_log = logging.getLogger(__name__)


class _Closed:
    """Counts connections closed for being slow; logs at most one line per interval."""

    def __init__(self, interval: float = 10.0) -> None:
        self.interval = interval
        self.count = 0
        self._logged_at = 0.0
        self._unlogged = 0

    def add(self, phase: str, timeout: float) -> None:
        self.count += 1
        self._unlogged += 1
        now = time.monotonic()
        if now - self._logged_at >= self.interval:
            _log.warning(
                "closed %d slow connection(s) (last: %s not complete within %.0fs)", self._unlogged, phase, timeout
            )
            self._logged_at, self._unlogged = now, 0


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    header_timeout = 10.0
    body_timeout = 30.0
    max_header_bytes = 65_536
    max_headers = 100
    max_connections = 2048
    open_connections = 0  # of this process
    # The connections waiting for a request's headers, oldest first (dict: insertion-ordered set).
    awaiting_headers: dict[GuardedHttpToolsProtocol, None] = {}  # noqa: RUF012 (one per class made below)
    closed = _Closed()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline: asyncio.TimerHandle | None = None
        self._in_headers = True
        self._header_bytes = 0
        self._header_count = 0

    def data_received(self, data: bytes) -> None:
        if self._in_headers:
            self._header_bytes += len(data)
        super().data_received(data)
        # Still in the headers after this chunk (a chunk that completes them is never refused):
        # what the parser holds is bounded by the limit plus one read.
        if self._in_headers and self._header_bytes > self.max_header_bytes:
            self._refuse(f"request headers larger than {self.max_header_bytes} bytes")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        if self._header_count > self.max_headers:
            self._refuse(f"more than {self.max_headers} request headers")
            return
        super().on_header(name, value)

    def _refuse(self, why: str) -> None:
        """431 and the connection closed, before the request reaches the app."""
        if self.transport.is_closing():
            return
        body = json.dumps({"error": {"code": "request_header_fields_too_large", "message": why}}).encode()
        self.transport.write(
            b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\n"
            + f"content-length: {len(body)}\r\nconnection: close\r\n\r\n".encode()
            + body
        )
        self.closed.add("request headers (too large)", 0)
        self._disarm()
        self.transport.close()

    def _arm(self, phase: str, timeout: float) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(timeout, self._expire, phase, timeout)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expire(self, phase: str, timeout: float) -> None:
        self._deadline = None
        if not self.transport.is_closing():
            self.closed.add(phase, timeout)
            self.transport.close()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        cls = type(self)
        cls.open_connections += 1
        self._counted = True
        if cls.open_connections > self.max_connections:
            # Over the cap: the connection that has waited longest for its request's headers (idle
            # or slow) makes room; only when none is waiting is the new one turned away.
            oldest = next(iter(cls.awaiting_headers), None)
            victim = oldest if oldest is not None else self
            self.closed.add(f"connection (over {self.max_connections} open)", 0)
            victim.transport.close()
            cls.awaiting_headers.pop(victim, None)
            if victim is self:
                return
        cls.awaiting_headers[self] = None
        self._arm("request headers", self.header_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        type(self).awaiting_headers.pop(self, None)
        if getattr(self, "_counted", False):
            type(self).open_connections -= 1
            self._counted = False
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._deadline is None:  # a later request on a kept-alive connection
            self._arm("request headers", self.header_timeout)

    def on_headers_complete(self) -> None:
        self._in_headers = False
        type(self).awaiting_headers.pop(self, None)
        self._arm("request body", self.body_timeout)
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._disarm()
        self._in_headers, self._header_bytes, self._header_count = True, 0, 0
        super().on_message_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and not self.pipeline:  # idle, kept alive
            type(self).awaiting_headers[self] = None


def guarded_protocol(
    header_timeout: float,
    body_timeout: float,
    max_header_bytes: int = 65_536,
    max_headers: int = 100,
    max_connections: int = 2048,
) -> type[HttpToolsProtocol]:
    """The protocol class to give ``uvicorn.run(http=...)``. Raises the process's open-files limit
    as far as it may go, and keeps ``max_connections`` below it (room for the database pools and
    files), so that connections are refused by the cap, logged, before descriptors run out."""
    with contextlib.suppress(ValueError, OSError):
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard == resource.RLIM_INFINITY or hard > soft:
            wanted = hard if hard != resource.RLIM_INFINITY else max(soft, 65_536)
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft != resource.RLIM_INFINITY and max_connections > soft - 256:
        _log.warning(
            "only %d files may be open: serving at most %d connections (not %d)",
            soft,
            max(16, soft - 256),
            max_connections,
        )
        max_connections = max(16, soft - 256)
    return type(
        "GuardedHttpToolsProtocol",
        (GuardedHttpToolsProtocol,),
        {
            "header_timeout": header_timeout,
            "body_timeout": body_timeout,
            "max_header_bytes": max_header_bytes,
            "max_headers": max_headers,
            "max_connections": max_connections,
            "open_connections": 0,
            "awaiting_headers": {},
        },
    )
