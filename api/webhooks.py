"""``POST /webhooks/flex``: verify, check, append durably, then answer."""

from __future__ import annotations

import logging
import time

import msgspec
from litestar import Request, Response, post
from litestar.datastructures import State

from ledger import signing
from ledger.envelope import parse_envelope
from ledger.errors import DatabaseUnavailable, PayloadTooLarge, SignatureError, UnusableEvent
from ledger.log import NewEvent

__all__ = ["flex_webhook"]

_log = logging.getLogger(__name__)
_encode = msgspec.json.encode
# Never kept with a quarantined body.
_PRIVATE_HEADERS = frozenset({"authorization", "cookie", "proxy-authorization"})


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refusing (before reading it all) anything over ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(limit)
        chunks.append(chunk)
    return b"".join(chunks)


@post(
    "/webhooks/flex",
    status_code=200,
    summary="Receive a signed Flex webhook",
    description="Verifies the Svix signature over the raw body and appends the event to the log before answering.",
    tags=["webhooks"],
)
async def flex_webhook(request: Request, state: State) -> Response[bytes]:
    metrics = state.metrics
    started = time.perf_counter()
    try:
        response = await _handle(request, state)
    except SignatureError as exc:
        metrics.webhooks.labels("unauthorized", exc.code).inc()
        raise
    except PayloadTooLarge:
        metrics.webhooks.labels("too_large", "").inc()
        raise
    except UnusableEvent:
        metrics.webhooks.labels("unprocessable", "").inc()
        raise
    except DatabaseUnavailable:
        metrics.webhooks.labels("unavailable", "").inc()
        raise
    metrics.webhooks.labels(response[0], "").inc()
    metrics.ingest_seconds.observe(time.perf_counter() - started)
    return response[1]


async def _handle(request: Request, state: State) -> tuple[str, Response[bytes]]:
    settings = state.settings
    body = await read_body(request, settings.webhook_max_bytes)
    try:
        found = signing.verify(settings.webhook_secrets, request.headers, body, tolerance=settings.webhook_tolerance)
    except SignatureError as exc:
        _log.info("webhook rejected: %s", exc.code)
        raise
    try:
        envelope = parse_envelope(body)
        event = NewEvent(
            event_id=envelope.event_id,
            event_type=envelope.event_type,
            source="flex",
            event_dt=envelope.event_dt,
            occurred_at=envelope.occurred_at,
            raw_body=body,
            headers=_encode(found.as_record()).decode(),
            message_id=found.message_id,
        )
        result = await state.committer.append(event)
    except UnusableEvent as exc:
        kept = {k: v for k, v in request.headers.items() if k.lower() not in _PRIVATE_HEADERS}
        qid = await state.log.quarantine(
            message_id=found.message_id, headers=_encode(kept).decode(), body=body, reason=exc.message
        )
        _log.warning("webhook quarantined as #%s: %s", qid, exc.message)
        raise
    status = "duplicate" if result.duplicate else "accepted"
    _log.debug("webhook %s: %s at position %s", status, envelope.event_type, result.position)
    response = Response(
        _encode({"status": status, "position": result.position}),
        media_type="application/json",
        status_code=200,
    )
    return status, response
