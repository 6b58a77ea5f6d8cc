"""The Flex API client: line items of a checkout session, with timeouts, retries and a limit.

One ``httpx.AsyncClient`` per process. Transport errors, timeouts, 429 and 5xx are retried
with exponential backoff and full jitter, honouring ``Retry-After`` (seconds or an HTTP date);
400, 401, 403, 404 and 422 are not. The reply is read by ``line_items.parse_line_items``; an
answer it cannot use is a permanent failure.
"""

from __future__ import annotations

import asyncio
import email.utils
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from projections.fulfillment.line_items import LineItem, UnusableLineItems, parse_line_items

__all__ = [
    "FlexApiError",
    "FlexClient",
    "PermanentFlexError",
    "TransientFlexError",
    "retry_after_seconds",
]

PERMANENT_STATUSES = frozenset({400, 401, 403, 404, 405, 409, 410, 422})


class FlexApiError(Exception):
    def __init__(self, message: str, *, status: int | None = None, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.retry_after = retry_after


class TransientFlexError(FlexApiError):
    """Worth trying again later (network, timeout, 429, 5xx)."""


class PermanentFlexError(FlexApiError):
    """Trying again will not help until something is fixed (bad key, unknown session, ...)."""


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """``Retry-After`` as seconds: a number of seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


class FlexClient:
    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        connect_timeout: float = 5.0,
        read_timeout: float = 10.0,
        attempts: int = 4,
        backoff_base: float = 0.25,
        backoff_cap: float = 10.0,
        max_retry_after: float = 60.0,
        concurrency: int = 32,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        on_call: Callable[[int | None, float], None] | None = None,
    ) -> None:
        self._client = httpx.AsyncClient(
            base_url=base_url.rstrip("/"),
            headers={"authorization": f"Bearer {api_key}", "accept": "application/json", "user-agent": "flex-ledger"},
            timeout=httpx.Timeout(read_timeout, connect=connect_timeout),
            limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency),
            transport=transport,
        )
        self.attempts = attempts
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.max_retry_after = max_retry_after
        self._limit = asyncio.Semaphore(concurrency)
        self._sleep = sleep
        self._on_call = on_call

    async def aclose(self) -> None:
        await self._client.aclose()

    def _backoff(self, attempt: int) -> float:
        return random.uniform(0, min(self.backoff_cap, self.backoff_base * 2**attempt))

    async def line_items(self, checkout_session_id: str) -> tuple[list[dict[str, Any]], list[LineItem]]:
        """``GET /checkout/sessions/{id}/line_items``, retried; raises a ``FlexApiError`` subclass."""
        path = f"/checkout/sessions/{checkout_session_id}/line_items"
        last: FlexApiError | None = None
        for attempt in range(self.attempts):
            if attempt:
                wait = self._backoff(attempt)
                if last is not None and last.retry_after is not None:
                    wait = min(max(wait, last.retry_after), self.max_retry_after)
                await self._sleep(wait)
            try:
                return await self._once(path)
            except TransientFlexError as exc:
                last = exc
        assert last is not None
        raise last

    async def _once(self, path: str) -> tuple[list[dict[str, Any]], list[LineItem]]:
        started = time.perf_counter()
        status: int | None = None
        try:
            async with self._limit:
                try:
                    response = await self._client.get(path)
                except httpx.TimeoutException as exc:
                    raise _transient(f"Flex API timed out ({type(exc).__name__})", None, None) from exc
                except httpx.TransportError as exc:
                    raise _transient(f"Flex API unreachable ({type(exc).__name__}: {exc})", None, None) from exc
            status = response.status_code
            if status == 429 or status >= 500:
                raise _transient(
                    f"Flex API answered {status}", status, retry_after_seconds(response.headers.get("retry-after"))
                )
            if status in PERMANENT_STATUSES or not 200 <= status < 300:
                raise PermanentFlexError(f"Flex API answered {status}: {response.text[:200]}", status=status)
            try:
                body = response.json()
            except ValueError:
                raise _transient("Flex API answered with a body that is not JSON", status, None) from None
            try:
                return parse_line_items(body)
            except UnusableLineItems as exc:
                raise PermanentFlexError(str(exc), status=status) from None
        finally:
            if self._on_call is not None:
                self._on_call(status, time.perf_counter() - started)


def _transient(message: str, status: int | None, retry_after: float | None) -> TransientFlexError:
    return TransientFlexError(message, status=status, retry_after=retry_after)
