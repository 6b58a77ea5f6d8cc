"""``POST /webhooks/flex``: verify, check, append durably, then answer.

The one hot path of the service, written once as a raw ASGI handler: the request body is read
through ASGI with its size limit, and every reply — 200, an error, the 500 that would mean a bug
— is written by ``_reply``. Litestar routes to it like any other route (``flex_webhook``);
``WEBHOOK_OPERATION`` documents it in the OpenAPI schema, which raw ASGI routes are not part of.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

import msgspec
from litestar import asgi
from litestar.enums import ParamType
from litestar.openapi.spec import OpenAPIMediaType as MediaType
from litestar.openapi.spec import (
    OpenAPIResponse,
    OpenAPIType,
    Operation,
    Parameter,
    PathItem,
    Reference,
    RequestBody,
    Schema,
)
from litestar.types import Receive, Scope, Send

from api.errors import INTERNAL_ERROR, describe, error_body
from api.state import AppState
from ledger import signing
from ledger.envelope import parse_envelope
from ledger.errors import DatabaseUnavailable, LedgerError, PayloadTooLarge, SignatureError, UnusableEvent
from ledger.log import AppendResult, NewEvent

__all__ = ["PATH", "WEBHOOK_OPERATION", "flex_webhook", "ingest"]

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


async def ingest(headers: Mapping[str, str], body: bytes, state: AppState) -> AppendResult:
    """Verifies a delivery and appends it (or quarantines it). Raises ``LedgerError``s."""
    settings = state.settings
    try:
        found = signing.verify(settings.webhook_secrets, headers, body, tolerance=settings.webhook_tolerance)
    except SignatureError as exc:
        _log.info("webhook rejected: %s", exc.code)
        raise
    try:
        envelope = parse_envelope(body)
        return await state.committer.append(
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
        qid = await state.ingest_log.quarantine(
            message_id=found.message_id, headers=_encode(kept).decode(), body=body, reason=exc.message
        )
        _log.warning("webhook quarantined as #%s: %s", qid, exc.message)
        raise


async def _read_body(headers: Mapping[str, str], receive: Receive, limit: int) -> bytes:
    """The request body, refused as soon as it is known to exceed ``limit`` bytes."""
    declared = headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(limit)
    chunks: list[bytes] = []
    size = 0
    while True:
        message: Any = await receive()
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


async def _reply(send: Send, status: int, body: bytes, headers: Mapping[str, str] | None = None) -> None:
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def serve_webhook(state: AppState, scope: Scope, receive: Receive, send: Send) -> None:
    """One delivery, as ASGI: read, ingest, count, answer. Never raises for a client's input."""
    if scope.get("method") != "POST":
        body = _encode(error_body("method_not_allowed", f"{PATH} accepts POST only"))
        await _reply(send, 405, body, {"Allow": "POST"})
        return
    metrics = state.metrics
    headers: dict[str, str] = {}
    for key, value in scope["headers"]:
        headers.setdefault(key.decode("latin-1"), value.decode("latin-1"))
    started = time.perf_counter()
    try:
        result = await ingest(headers, await _read_body(headers, receive, state.settings.webhook_max_bytes), state)
    except LedgerError as exc:
        outcome = next((name for cls, name in _OUTCOMES if isinstance(exc, cls)), "error")
        metrics.webhooks.labels(outcome, exc.code if outcome == "unauthorized" else "").inc()
        status, doc, extra = describe(exc)
        await _reply(send, status, _encode(doc), extra)
        return
    except Exception:
        _log.exception("webhook: unexpected failure")
        metrics.webhooks.labels("error", "").inc()
        await _reply(send, 500, _encode(error_body(*INTERNAL_ERROR)))
        return
    status_name = "duplicate" if result.duplicate else "accepted"
    metrics.webhooks.labels(status_name, "").inc()
    metrics.ingest_seconds.observe(time.perf_counter() - started)
    await _reply(send, 200, _encode({"status": status_name, "position": result.position}))


@asgi(PATH, copy_scope=False)
async def flex_webhook(scope: Scope, receive: Receive, send: Send) -> None:
    await serve_webhook(AppState.of(scope), scope, receive, send)


def _error(description: str) -> OpenAPIResponse:
    # the one error shape (api.errors.ErrorBody), as the framework documents it for every other route
    error = Reference(ref="#/components/schemas/ErrorBody")
    return OpenAPIResponse(description=description, content={"application/json": MediaType(schema=error)})


def _header(name: str, description: str) -> Parameter:
    return Parameter(
        name=name,
        param_in=ParamType.HEADER,
        required=False,
        description=description,
        schema=Schema(type=OpenAPIType.STRING),
    )


# Svix sends its three headers under one of two sets of names (``svix-*``, or ``webhook-*`` as the
# Standard Webhooks spec names them); every delivery needs one whole set.
_SIGNATURE_HEADERS: list[Parameter | Reference] = [
    header
    for prefix in ("webhook", "svix")
    for header in (
        _header(
            f"{prefix}-id",
            f"The message id (unique per message, the same when resent). `{prefix}-*` or the "
            f"other set of names is required.",
        ),
        _header(f"{prefix}-timestamp", "Unix seconds when signed; refused more than LEDGER_WEBHOOK_TOLERANCE away."),
        _header(
            f"{prefix}-signature",
            "Space-separated `v1,<base64 HMAC-SHA256 of id.timestamp.body>` signatures; one must verify with a "
            "secret of LEDGER_WEBHOOK_SECRETS.",
        ),
    )
]

WEBHOOK_OPERATION = PathItem(
    post=Operation(
        tags=["webhooks"],
        summary="Receive a signed Flex webhook",
        description="Verifies the Svix signature (`svix-id`, `svix-timestamp`, `svix-signature`, or the "
        "`webhook-*` names) over the raw body and appends the event to the log before answering.",
        operation_id="receiveFlexWebhook",
        parameters=_SIGNATURE_HEADERS,
        request_body=RequestBody(
            required=True,
            description="The event exactly as Flex signed it.",
            content={"application/json": MediaType(schema=Schema(type=OpenAPIType.OBJECT))},
        ),
        responses={
            "200": OpenAPIResponse(
                description="Stored (`accepted`) or already stored (`duplicate`), at this log position.",
                content={
                    "application/json": MediaType(
                        schema=Schema(
                            type=OpenAPIType.OBJECT,
                            required=["status", "position"],
                            properties={
                                "status": Schema(type=OpenAPIType.STRING, enum=["accepted", "duplicate"]),
                                "position": Schema(type=OpenAPIType.INTEGER),
                            },
                        )
                    )
                },
            ),
            "401": _error("Missing, stale or wrong signature: nothing stored."),
            "413": _error("Body larger than LEDGER_WEBHOOK_MAX_BYTES: nothing stored."),
            "422": _error("Signed, but not a usable event: kept in quarantine."),
            "503": _error("The database is unavailable: nothing stored; retry (see Retry-After)."),
        },
    )
)
