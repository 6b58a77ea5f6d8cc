"""``POST /webhooks/flex``: verify, check, append durably, then answer.

The route is served by a small ASGI fast path in front of the framework (``WebhookFastPath``):
it is the one hot path of the service, and going through the framework's routing, request and
response objects roughly doubled its CPU per request. The litestar route below does the same
through the framework, and documents the endpoint in OpenAPI. Both call ``ingest``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import msgspec
from litestar import Request, Response, post
from litestar.datastructures import State

from api.errors import describe
from ledger import signing
from ledger.envelope import parse_envelope
from ledger.errors import DatabaseUnavailable, LedgerError, PayloadTooLarge, SignatureError, UnusableEvent
from ledger.log import AppendResult, NewEvent

__all__ = ["WebhookFastPath", "flex_webhook", "ingest"]

PATH = "/webhooks/flex"
_log = logging.getLogger(__name__)
_encode = msgspec.json.encode
# Never kept with a quarantined body.
_PRIVATE_HEADERS = frozenset({"authorization", "cookie", "proxy-authorization"})
_OUTCOMES: tuple[tuple[type[LedgerError], str], ...] = (
    (SignatureError, "unauthorized"),
    (PayloadTooLarge, "too_large"),
    (UnusableEvent, "unprocessable"),
    (DatabaseUnavailable, "unavailable"),
)


async def ingest(headers: Mapping[str, str], body: bytes, state: Any) -> AppendResult:
    """Verifies a delivery and appends it (or quarantines it). Raises ``LedgerError``s."""
    settings = state.settings
    try:
        found = signing.verify(settings.webhook_secrets, headers, body, tolerance=settings.webhook_tolerance)
    except SignatureError as exc:
        _log.info("webhook rejected: %s", exc.code)
        raise
    try:
        envelope = parse_envelope(body)
        return await state.committer.append(  # type: ignore[no-any-return]
            NewEvent(
                event_id=envelope.event_id,
                event_type=envelope.event_type,
                source="flex",
                event_dt=envelope.event_dt,
                occurred_at=envelope.occurred_at,
                raw_body=body,
                headers=_encode(found.as_record()).decode(),
                message_id=found.message_id,
            )
        )
    except UnusableEvent as exc:
        kept = {k: v for k, v in headers.items() if k.lower() not in _PRIVATE_HEADERS}
        qid = await state.log.quarantine(
            message_id=found.message_id, headers=_encode(kept).decode(), body=body, reason=exc.message
        )
        _log.warning("webhook quarantined as #%s: %s", qid, exc.message)
        raise


async def _counted(headers: Mapping[str, str], read: Callable[[], Awaitable[bytes]], state: Any) -> bytes:
    """Reads, ingests and counts one delivery; returns the reply body of a 200."""
    metrics = state.metrics
    started = time.perf_counter()
    try:
        result = await ingest(headers, await read(), state)
    except LedgerError as exc:
        outcome = next((name for cls, name in _OUTCOMES if isinstance(exc, cls)), "error")
        metrics.webhooks.labels(outcome, exc.code if outcome == "unauthorized" else "").inc()
        raise
    status = "duplicate" if result.duplicate else "accepted"
    metrics.webhooks.labels(status, "").inc()
    metrics.ingest_seconds.observe(time.perf_counter() - started)
    return _encode({"status": status, "position": result.position})


def _too_large(declared: str | None, limit: int) -> bool:
    return declared is not None and declared.isdigit() and int(declared) > limit


@post(
    PATH,
    status_code=200,
    summary="Receive a signed Flex webhook",
    description="Verifies the Svix signature over the raw body and appends the event to the log before answering. "
    "Replies: 200 accepted/duplicate with the log position; 401 bad signature; 413 too large; "
    "422 unusable (quarantined); 503 database unavailable (retry).",
    tags=["webhooks"],
)
async def flex_webhook(request: Request[Any, Any, Any], state: State) -> Response[bytes]:
    limit = state.settings.webhook_max_bytes

    async def read() -> bytes:
        if _too_large(request.headers.get("content-length"), limit):
            raise PayloadTooLarge(limit)
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(limit)
            chunks.append(chunk)
        return b"".join(chunks)

    body = await _counted(request.headers, read, state)
    return Response(body, media_type="application/json", status_code=200)


class WebhookFastPath:
    """ASGI: ``POST /webhooks/flex`` handled directly; everything else goes to ``app``."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] != PATH or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        state = self.app.state
        limit = state.settings.webhook_max_bytes
        headers: dict[str, str] = {}
        for key, value in scope["headers"]:
            headers.setdefault(key.decode("latin-1"), value.decode("latin-1"))

        async def read() -> bytes:
            if _too_large(headers.get("content-length"), limit):
                raise PayloadTooLarge(limit)
            chunks, size = [], 0
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    break
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > limit:
                    raise PayloadTooLarge(limit)
                chunks.append(chunk)
                if not message.get("more_body"):
                    break
            return b"".join(chunks)

        try:
            extra: dict[str, str] = {}
            status, body = 200, await _counted(headers, read, state)
        except LedgerError as exc:
            status, doc, extra = describe(exc)
            body = _encode(doc)
        except Exception:  # a bug, not the client: logged, answered, never a crash
            _log.exception("webhook: unexpected failure")
            status, body, extra = 500, b'{"error":{"code":"internal_error","message":"internal error"}}', {}
        response_headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        response_headers += [(k.lower().encode(), v.encode()) for k, v in extra.items()]
        await send({"type": "http.response.start", "status": status, "headers": response_headers})
        await send({"type": "http.response.body", "body": body})
