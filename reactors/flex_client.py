"""The Flex API client: line items, sessions and list pages, with timeouts, retries and limits.

One ``httpx.AsyncClient`` per process. Transport errors, timeouts, 429 and 5xx are retried
with exponential backoff and full jitter, honouring ``Retry-After`` (seconds or an HTTP date);
400, 401, 403, 404 and 422 are not. Every read is bounded whatever Flex does: one overall
``deadline`` for the call, retries and waits included (a reply dripping a byte at a time, or a
``Retry-After`` longer than what is left of it, ends it at once as a transient failure), and
``max_bytes`` of body (streamed and counted, never buffered beyond it: a larger reply is a
permanent failure). Line items are read by ``line_items.parse_line_items`` and checked by
``line_items.check_line_items``; an answer the caller cannot use is a permanent failure.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote

import httpx

from ledger.settings import Settings
from projections.line_items import (
    LineItem,
    UnusableLineItems,
    check_line_items,
    parse_line_items,
    parse_subscription_items,
)

__all__ = [
    "FlexApiError",
    "FlexClient",
    "PermanentFlexError",
    "TransientFlexError",
    "client_for",
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
        deadline: float = 30.0,
        max_bytes: int = 8 * 1024 * 1024,
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
        self.deadline = deadline
        self.max_bytes = max_bytes
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
            raw, items = parse_line_items(body)
            check_line_items(raw, items)
            return raw, items
        except UnusableLineItems as exc:
            raise PermanentFlexError(str(exc), status=200) from None

    async def subscription_items(self, subscription_id: str) -> tuple[list[dict[str, Any]], list[LineItem]]:
        """``GET /subscriptions/{id}``'s items (what a renewal fulfills), retried; raises a
        ``FlexApiError`` subclass (permanent when the reply has no usable items)."""
        body = await self.get(f"/subscriptions/{quote(subscription_id, safe='')}")
        try:
            raw, items = parse_subscription_items(body)
            check_line_items(raw, items)
            return raw, items
        except UnusableLineItems as exc:
            raise PermanentFlexError(f"subscription {subscription_id[:80]}: {exc}", status=200) from None

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
        """``GET path``, retried on transient failures within the deadline; the JSON body. Raises
        ``FlexApiError``."""
        return await self._retried("GET", path, params)

    async def delete(self, path: str) -> Any:
        """``DELETE path``, retried like a read (deleting twice deletes once); the JSON body."""
        return await self._retried("DELETE", path, None)

    async def post(self, path: str, doc: dict[str, Any]) -> Any:
        """``POST path`` with a JSON body, attempted once: Flex documents no idempotency key, so a
        retry could act twice. Raises ``FlexApiError``."""
        try:
            async with asyncio.timeout(self.deadline):
                return await self._once("POST", path, None, doc)
        except TimeoutError:
            raise TransientFlexError(
                f"Flex API gave no complete answer within {self.deadline:g} s: it may have acted"
            ) from None

    async def _retried(self, method: str, path: str, params: dict[str, str | int] | None) -> Any:
        loop = asyncio.get_running_loop()
        ends = loop.time() + self.deadline
        last: FlexApiError | None = None
        try:
            async with asyncio.timeout(self.deadline):
                for attempt in range(self.attempts):
                    if attempt:
                        assert last is not None
                        wait = self._backoff(attempt)
                        if last.retry_after is not None:
                            if last.retry_after > min(ends - loop.time(), self.max_retry_after):
                                raise TransientFlexError(
                                    f"{last.message}; it asks to wait {last.retry_after:g} s, more than this "
                                    f"call may ({self.deadline:g} s in all)",
                                    status=last.status,
                                    retry_after=last.retry_after,
                                )
                            wait = max(wait, last.retry_after)
                        await self._sleep(wait)
                    try:
                        return await self._once(method, path, params)
                    except TransientFlexError as exc:
                        last = exc
        except TimeoutError:
            raise TransientFlexError(
                f"Flex API gave no complete answer within {self.deadline:g} s"
                + (f" (last: {last.message})" if last is not None else "")
            ) from None
        assert last is not None
        raise last

    async def _once(
        self, method: str, path: str, params: dict[str, str | int] | None, doc: dict[str, Any] | None = None
    ) -> Any:
        started = time.perf_counter()
        status: int | None = None
        try:
            async with self._limit:
                try:
                    async with self._client.stream(method, path, params=params, json=doc) as response:
                        status = response.status_code
                        if status == 429 or status >= 500:
                            raise _transient(
                                f"Flex API answered {status}",
                                status,
                                retry_after_seconds(response.headers.get("retry-after")),
                            )
                        if status in PERMANENT_STATUSES or not 200 <= status < 300:
                            head = await _read_bounded(response, 200, truncate=True)
                            text = head.decode("utf-8", "replace")
                            raise PermanentFlexError(f"Flex API answered {status}: {text}", status=status)
                        body = await _read_bounded(response, self.max_bytes)
                except httpx.TimeoutException as exc:
                    raise _transient(f"Flex API timed out ({type(exc).__name__})", None, None) from exc
                except httpx.TransportError as exc:
                    raise _transient(f"Flex API unreachable ({type(exc).__name__}: {exc})", None, None) from exc
            if not body.strip() and method == "DELETE":
                return None  # 204
            try:
                return json.loads(body)
            except ValueError:
                raise _transient("Flex API answered with a body that is not JSON", status, None) from None
        finally:
            if self._on_call is not None:
                self._on_call(status, time.perf_counter() - started)


async def _read_bounded(response: httpx.Response, limit: int, *, truncate: bool = False) -> bytes:
    """The body, at most ``limit`` bytes: beyond it the rest is cut (``truncate``) or the reply is
    refused, without reading more of it."""
    declared = response.headers.get("content-length", "")
    if not truncate and declared.isdigit() and int(declared) > limit:
        raise PermanentFlexError(f"Flex API answered {declared} bytes, more than the {limit} allowed", status=200)
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size > limit:
            if truncate:
                chunks.append(chunk[: limit - (size - len(chunk))])
                break
            raise PermanentFlexError(f"Flex API answered more than the {limit} bytes allowed", status=200)
        chunks.append(chunk)
    return b"".join(chunks)


def clients_for(
    settings: Settings,
    *,
    concurrency: int | None = None,
    on_call: Callable[[int | None, float], None] | None = None,
    attempts: int = 4,
    deadline: float | None = None,
) -> dict[str, FlexClient]:
    """One client per configured key: ``live`` (``FLEX_API_KEY``) and ``test`` (``FLEX_TEST_API_KEY``)."""
    return {
        mode: client_for(settings, key, concurrency=concurrency, on_call=on_call, attempts=attempts, deadline=deadline)
        for mode, key in (("live", settings.flex_api_key), ("test", settings.flex_test_api_key))
        if key
    }


def client_for(
    settings: Settings,
    key: str,
    *,
    concurrency: int | None = None,
    on_call: Callable[[int | None, float], None] | None = None,
    attempts: int = 4,
    deadline: float | None = None,
) -> FlexClient:
    """A client of Flex's API with ``key``, as the settings configure it."""
    return FlexClient(
        settings.flex_api_base_url,
        key,
        read_timeout=settings.flex_api_timeout,
        concurrency=concurrency or settings.fulfillment_concurrency,
        on_call=on_call,
        attempts=attempts,
        deadline=deadline if deadline is not None else settings.flex_api_deadline,
        max_bytes=settings.flex_api_max_bytes,
    )


def _transient(message: str, status: int | None, retry_after: float | None) -> TransientFlexError:
    return TransientFlexError(message, status=status, retry_after=retry_after)
