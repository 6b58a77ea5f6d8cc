"""Signing in to the console: an API token exchanged for an encrypted, ``HttpOnly``,
``SameSite=Strict`` session cookie (litestar's cookie sessions), and a CSRF token on every form
(litestar's CSRF middleware, double-submit). Both keys are derived from the API tokens, so every
process serving the same tokens accepts the same sessions, and removing a token from
``LEDGER_API_TOKENS`` signs out everyone who signed in with it. Signing out revokes the session's
own id in the database (``ledger.console_sessions``), so a copied cookie stops at once too. Every
response under ``/console`` carries ``SECURITY_HEADERS``."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from datetime import UTC, datetime
from typing import Any

from litestar.config.csrf import CSRFConfig
from litestar.connection import ASGIConnection
from litestar.middleware.base import DefineMiddleware
from litestar.middleware.csrf import CSRFMiddleware
from litestar.middleware.session.base import SessionMiddleware
from litestar.middleware.session.client_side import ClientSideSessionBackend, CookieBackendConfig
from litestar.types import ASGIApp

from api.state import AppState
from ledger.console_sessions import is_revoked
from ledger.errors import LedgerError

__all__ = [
    "SECURITY_HEADERS",
    "SESSION_HOURS",
    "SignInRequired",
    "console_middleware",
    "fingerprint",
    "new_session",
    "require_session",
    "session_expiry",
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


def _sessions(app: ASGIApp, tokens: tuple[str, ...], secure: bool) -> ASGIApp:
    """The session middleware, made when the app is built (its cipher cannot be copied, and
    litestar copies a router's layers when it registers the router)."""
    config = CookieBackendConfig(
        secret=_key(tokens, "session"),
        key="ledger_console",
        path=_COOKIE_PATH,
        max_age=SESSION_HOURS * 3600,
        httponly=True,
        samesite="strict",
        # LEDGER_CONSOLE_SECURE_COOKIE: off by default, as the service is often reached over plain
        # HTTP on a private network or localhost; on behind HTTPS.
        secure=secure,
    )
    return SessionMiddleware(app=app, backend=ClientSideSessionBackend(config=config))


# Every console response: no script but the service's own files, never framed, never sniffed,
# never cached (the pages show customers' data and signature headers), no referrer off the site.
SECURITY_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (
        b"content-security-policy",
        b"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; object-src 'none'; "
        b"base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    ),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
    (b"cache-control", b"no-store"),
)


def _security_headers(app: ASGIApp) -> ASGIApp:
    """Adds ``SECURITY_HEADERS`` to every response under ``/console`` (pages, redirects, error
    pages and static files alike), replacing any the handler set."""
    names = {name for name, _ in SECURITY_HEADERS}

    async def middleware(scope: Any, receive: Any, send: Any) -> None:
        async def sending(message: Any) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() not in names]
                message = {**message, "headers": [*headers, *SECURITY_HEADERS]}
            await send(message)

        await app(scope, receive, sending)

    return middleware


def console_middleware(tokens: tuple[str, ...], *, secure_cookie: bool = False) -> list[DefineMiddleware]:
    csrf = CSRFConfig(
        secret=_key(tokens, "csrf").hex(),
        cookie_name="ledger_console_csrf",
        cookie_path=_COOKIE_PATH,
        cookie_httponly=True,
        cookie_samesite="strict",
        cookie_secure=secure_cookie,
    )
    return [
        DefineMiddleware(_security_headers),
        DefineMiddleware(_sessions, tokens=tokens, secure=secure_cookie),
        DefineMiddleware(CSRFMiddleware, config=csrf),
    ]


def new_session(token: str) -> dict[str, Any]:
    """What a session cookie holds: the token's fingerprint, when it was opened, and its own id
    (what signing out revokes)."""
    return {"token": fingerprint(token), "at": int(time.time()), "sid": secrets.token_urlsafe(18)}


def session_expiry(session: dict[str, Any]) -> datetime:
    """When a session's cookie is refused anyway (``SESSION_HOURS`` after it was opened)."""
    opened = session.get("at")
    start = opened if isinstance(opened, int | float) else time.time()
    return datetime.fromtimestamp(start + SESSION_HOURS * 3600, UTC)


async def require_session(connection: ASGIConnection[Any, Any, Any, Any], _: Any) -> None:
    """Guard of every console page but sign-in: a session opened with a token still accepted,
    not expired, and not signed out (on any process: ``ledger.console_sessions``)."""
    state = AppState.of(connection.scope)
    session = connection.session if "session" in connection.scope else {}
    opened_with = session.get("token") if isinstance(session, dict) else None
    if not isinstance(opened_with, str) or opened_with not in {fingerprint(t) for t in state.api_tokens}:
        raise SignInRequired("sign in with an API token")
    # The cookie's own expiry is the browser's word; a copied cookie is refused after it too.
    signed_in_at = session.get("at")
    if not isinstance(signed_in_at, int | float) or not 0 <= time.time() - signed_in_at <= SESSION_HOURS * 3600:
        raise SignInRequired("the session has expired; sign in again")
    session_id = session.get("sid")
    if not isinstance(session_id, str) or await is_revoked(state.pool, session_id):
        raise SignInRequired("this session was signed out; sign in again")
