"""Every error response, in one place: ``{"error": {"code": ..., "message": ...}}``, one Struct
(``ErrorBody``) that encodes every error reply and describes it in the OpenAPI document."""

from __future__ import annotations

import logging
from typing import Any

import msgspec
from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException

from ledger.errors import (
    DatabaseUnavailable,
    FlexUnavailable,
    InvalidRequest,
    LedgerError,
    NotAuthenticated,
    NotFound,
    PayloadTooLarge,
    SignatureError,
    TooManyFailures,
    UnusableEvent,
)

__all__ = [
    "EXCEPTION_HANDLERS",
    "INTERNAL_ERROR",
    "ErrorBody",
    "ErrorDetail",
    "describe",
    "error_body",
    "error_response",
]

_log = logging.getLogger(__name__)

STATUS: dict[type[LedgerError], int] = {
    SignatureError: 401,
    NotAuthenticated: 401,
    NotFound: 404,
    InvalidRequest: 400,
    PayloadTooLarge: 413,
    UnusableEvent: 422,
    TooManyFailures: 429,
    DatabaseUnavailable: 503,
    FlexUnavailable: 503,
}

_HTTP_CODES = {
    400: "invalid_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
    429: "rate_limited",
    503: "unavailable",
}


# A bug, not the client: logged where it happened, answered with this.
INTERNAL_ERROR = ("internal_error", "internal error; it has been logged")


class ErrorDetail(msgspec.Struct, frozen=True):
    code: str
    message: str


class ErrorBody(msgspec.Struct, frozen=True):
    error: ErrorDetail


def error_body(code: str, message: str) -> ErrorBody:
    return ErrorBody(ErrorDetail(code, message))


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Response[ErrorBody]:
    return Response(error_body(code, message), status_code=status, headers=headers)


def describe(exc: LedgerError) -> tuple[int, ErrorBody, dict[str, str]]:
    """A ledger error as an HTTP status, error body and headers (also used outside litestar)."""
    status = next((s for cls, s in STATUS.items() if isinstance(exc, cls)), 500)
    headers: dict[str, str] = {}
    if status == 500:  # a statement the database failed (``DatabaseError``): a bug, logged, never shown
        _log.error("internal error: %s", exc.message, exc_info=exc)
        return status, error_body(*INTERNAL_ERROR), headers
    if isinstance(exc, DatabaseUnavailable | FlexUnavailable | TooManyFailures):
        headers["Retry-After"] = str(exc.retry_after)
    elif isinstance(exc, NotAuthenticated):
        headers["WWW-Authenticate"] = 'Bearer realm="flex-ledger"'
    return status, error_body(exc.code, exc.message), headers


def _ledger_error(request: Request[Any, Any, Any], exc: Exception) -> Response[ErrorBody]:
    assert isinstance(exc, LedgerError)
    status, body, headers = describe(exc)
    if status == 500:
        _count_internal_error(request)
    return Response(body, status_code=status, headers=headers or None)


def _http_error(_: Request[Any, Any, Any], exc: Exception) -> Response[ErrorBody]:
    assert isinstance(exc, HTTPException)
    message = exc.detail
    if isinstance(exc, ValidationException) and exc.extra:
        problems = exc.extra if isinstance(exc.extra, list) else [exc.extra]
        message = "; ".join(
            f"{p.get('key', '')}: {p.get('message', '')}" if isinstance(p, dict) else str(p) for p in problems
        )
    code = _HTTP_CODES.get(exc.status_code, "error" if exc.status_code < 500 else "internal_error")
    return error_response(exc.status_code, code, message, exc.headers)


def _unexpected(request: Request[Any, Any, Any], exc: Exception) -> Response[ErrorBody]:
    """A bug: logged with its traceback, counted (``ledger_internal_errors``), answered 500."""
    _log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    _count_internal_error(request)
    return error_response(500, *INTERNAL_ERROR)


def _count_internal_error(request: Request[Any, Any, Any]) -> None:
    metrics = getattr(request.app.state, "metrics", None)
    if metrics is not None:
        metrics.internal_errors.inc()


EXCEPTION_HANDLERS = {LedgerError: _ledger_error, HTTPException: _http_error, Exception: _unexpected}
