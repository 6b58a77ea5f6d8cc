"""Bearer-token authentication for everything under ``/v1``."""

from __future__ import annotations

import hmac
import secrets
from pathlib import Path
from typing import Any

from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler

from api.state import AppState
from ledger.errors import NotAuthenticated

__all__ = ["client_address", "load_or_create_token", "require_token"]

TOKEN_FILE = "api_token"  # noqa: S105 (a file name)


def load_or_create_token(data_dir: Path) -> tuple[str, bool]:
    """The token stored under the data dir, made on first use. Returns (token, created)."""
    path = data_dir / TOKEN_FILE
    if path.exists():
        token = path.read_text().strip()
        if token:
            return token, False
    data_dir.mkdir(parents=True, exist_ok=True)
    token = "flt_" + secrets.token_urlsafe(32)
    path.touch(mode=0o600)
    path.write_text(token + "\n")
    return token, True


def client_address(connection: ASGIConnection[Any, Any, Any, Any]) -> str:
    """The client's address (behind a proxy on this host, the one it forwards: uvicorn's
    ``forwarded_allow_ips``), for limits kept per client."""
    return connection.client.host if connection.client is not None else "unknown"


def require_token(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    """A valid bearer token, or 401; an address that sent too many wrong ones gets 429 for a while
    and its token is not even compared (``api/throttle.py``)."""
    state = AppState.of(connection.scope)
    address = client_address(connection)
    state.auth_failures.check(address)
    header = connection.headers.get("authorization", "")
    scheme, _sep, presented = header.partition(" ")
    if scheme.lower() != "bearer" or not presented.strip():
        raise NotAuthenticated("missing bearer token: send 'Authorization: Bearer <token>'")
    presented_bytes = presented.strip().encode()
    if not any(hmac.compare_digest(presented_bytes, t.encode()) for t in state.api_tokens):
        state.auth_failures.failed(address)
        raise NotAuthenticated("invalid bearer token")
