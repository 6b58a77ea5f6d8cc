"""The Flex API client: line items, sessions and list pages, with timeouts, retries and a limit.

One ``httpx.AsyncClient`` per process. Transport errors, timeouts, 429 and 5xx are retried
with exponential backoff and full jitter, honouring ``Retry-After`` (seconds or an HTTP date);
400, 401, 403, 404 and 422 are not. Line items are read by ``line_items.parse_line_items``; an
answer the caller cannot use is a permanent failure.
"""

from __future__ import annotations

import asyncio
import email.utils
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote

import httpx

from ledger.settings import Settings
from projections.fulfillment.line_items import LineItem, UnusableLineItems, parse_line_items

__all__ = [
    "FlexApiError",
    "FlexClient",
    "PermanentFlexError",
    "TransientFlexError",
    "clients_for",
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
        body = await self.get(f"/checkout/sessions/{quote(checkout_session_id, safe='')}/line_items")
        try:
            return parse_line_items(body)
        except UnusableLineItems as exc:
            raise PermanentFlexError(str(exc), status=200) from None

    async def checkout_session(self, checkout_session_id: str) -> dict[str, Any] | None:
        """``GET /checkout/sessions/{id}``: the session, or ``None`` when Flex does not know it."""
        try:
            body = await self.get(f"/checkout/sessions/{quote(checkout_session_id, safe='')}")
        except PermanentFlexError as exc:
            if exc.status == 404:
                return None
            raise
        session = body.get("checkout_session") if isinstance(body, dict) else None
        if not isinstance(session, dict):
            raise PermanentFlexError("Flex API answered a session without 'checkout_session'", status=200)
        return session

    async def list_page(self, path: str, key: str, **params: str | int | None) -> list[dict[str, Any]]:
        """One page of a list route (``{key: [...]}``); objects that are not JSON objects are dropped."""
        body = await self.get(path, {k: v for k, v in params.items() if v is not None})
        items = body.get(key) if isinstance(body, dict) else None
        if not isinstance(items, list):
            raise PermanentFlexError(f"Flex API answered {path} without a {key!r} list", status=200)
        return [item for item in items if isinstance(item, dict)]

    async def get(self, path: str, params: dict[str, str | int] | None = None) -> Any:
        """``GET path``, retried on transient failures; the JSON body. Raises ``FlexApiError``."""
        last: FlexApiError | None = None
        for attempt in range(self.attempts):
            if attempt:
                wait = self._backoff(attempt)
                if last is not None and last.retry_after is not None:
                    wait = min(max(wait, last.retry_after), self.max_retry_after)
                await self._sleep(wait)
            try:
                return await self._once(path, params)
            except TransientFlexError as exc:
                last = exc
        assert last is not None
        raise last

    async def _once(self, path: str, params: dict[str, str | int] | None) -> Any:
        started = time.perf_counter()
        status: int | None = None
        try:
            async with self._limit:
                try:
                    response = await self._client.get(path, params=params)
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
                return response.json()
            except ValueError:
                raise _transient("Flex API answered with a body that is not JSON", status, None) from None
        finally:
            if self._on_call is not None:
                self._on_call(status, time.perf_counter() - started)


def clients_for(
    settings: Settings,
    *,
    concurrency: int | None = None,
    on_call: Callable[[int | None, float], None] | None = None,
    attempts: int = 4,
) -> dict[str, FlexClient]:
    """One client per configured key: ``live`` (``FLEX_API_KEY``) and ``test`` (``FLEX_TEST_API_KEY``)."""
    clients = {}
    for mode, key in (("live", settings.flex_api_key), ("test", settings.flex_test_api_key)):
        if key:
            clients[mode] = FlexClient(
                settings.flex_api_base_url,
                key,
                read_timeout=settings.flex_api_timeout,
                concurrency=concurrency or settings.fulfillment_concurrency,
                on_call=on_call,
                attempts=attempts,
            )
    return clients


def _transient(message: str, status: int | None, retry_after: float | None) -> TransientFlexError:
    return TransientFlexError(message, status=status, retry_after=retry_after)
