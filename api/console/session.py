"""Signing in to the console: an API token exchanged for an encrypted, ``HttpOnly``,
``SameSite=Strict`` session cookie (litestar's cookie sessions), and a CSRF token on every form
(litestar's CSRF middleware, double-submit). Both keys are derived from the API tokens, so every
process serving the same tokens accepts the same sessions, and removing a token from
``LEDGER_API_TOKENS`` signs out everyone who signed in with it."""

from __future__ import annotations

import hashlib
import hmac
import time
from typing import Any

from litestar.config.csrf import CSRFConfig
from litestar.connection import ASGIConnection
from litestar.middleware.base import DefineMiddleware
from litestar.middleware.csrf import CSRFMiddleware
from litestar.middleware.session.base import SessionMiddleware
from litestar.middleware.session.client_side import ClientSideSessionBackend, CookieBackendConfig
from litestar.types import ASGIApp

from ledger.errors import LedgerError

__all__ = [
    "SESSION_HOURS",
    "SignInRequired",
    "console_middleware",
    "fingerprint",
    "require_session",
    "signed_in_token",
]

SESSION_HOURS = 8
_COOKIE_PATH = "/console"


class SignInRequired(LedgerError):
    code = "sign_in_required"


def _key(tokens: tuple[str, ...], purpose: str) -> bytes:
    material = "\x00".join(sorted(tokens)).encode()
    return hashlib.sha256(f"flex-ledger console {purpose}\x00".encode() + material).digest()


def fingerprint(token: str) -> str:
    """What the session keeps of the token it was opened with (never the token itself)."""
    return hashlib.sha256(b"flex-ledger console token\x00" + token.encode()).hexdigest()[:32]


def signed_in_token(tokens: tuple[str, ...], offered: str) -> str | None:
    """The API token ``offered`` if it is one of ``tokens`` (compared in constant time)."""
    found = None
    for token in tokens:
        if hmac.compare_digest(token.encode(), offered.encode()):
            found = token
    return found


def _sessions(app: ASGIApp, tokens: tuple[str, ...]) -> ASGIApp:
    """The session middleware, made when the app is built (its cipher cannot be copied, and
    litestar copies a router's layers when it registers the router)."""
    config = CookieBackendConfig(
        secret=_key(tokens, "session"),
        key="ledger_console",
        path=_COOKIE_PATH,
        max_age=SESSION_HOURS * 3600,
        httponly=True,
        samesite="strict",
        secure=False,  # the service is often reached over plain HTTP on a private network or localhost
    )
    return SessionMiddleware(app=app, backend=ClientSideSessionBackend(config=config))


def console_middleware(tokens: tuple[str, ...]) -> list[DefineMiddleware]:
    csrf = CSRFConfig(
        secret=_key(tokens, "csrf").hex(),
        cookie_name="ledger_console_csrf",
        cookie_path=_COOKIE_PATH,
        cookie_httponly=True,
        cookie_samesite="strict",
    )
    return [DefineMiddleware(_sessions, tokens=tokens), DefineMiddleware(CSRFMiddleware, config=csrf)]


def require_session(connection: ASGIConnection[Any, Any, Any, Any], _: Any) -> None:
    """Guard of every console page but sign-in: a session opened with a token still accepted."""
    tokens: tuple[str, ...] = connection.app.state.api_tokens
    session = connection.session if "session" in connection.scope else {}
    opened_with = session.get("token") if isinstance(session, dict) else None
    if not isinstance(opened_with, str) or opened_with not in {fingerprint(t) for t in tokens}:
        raise SignInRequired("sign in with an API token")
    # The cookie's own expiry is the browser's word; a copied cookie is refused after it too.
    signed_in_at = session.get("at")
    if not isinstance(signed_in_at, int | float) or not 0 <= time.time() - signed_in_at <= SESSION_HOURS * 3600:
        raise SignInRequired("the session has expired; sign in again")
