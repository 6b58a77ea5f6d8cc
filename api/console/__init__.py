"""The operator console (``/console``): HTML pages served by the service itself, no external
script, font or stylesheet. ``console_router`` mounts the pages, their session and CSRF
middleware, their static files and their error pages; ``TEMPLATE_CONFIG`` is the app's."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

from litestar import Request, Response, Router
from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler
from litestar.plugins.jinja import JinjaTemplateEngine
from litestar.response import Redirect, Template
from litestar.static_files import create_static_files_router
from litestar.template.config import TemplateConfig

from api.console.pages import CONSOLE_PAGES
from api.console.session import SignInRequired, console_middleware, require_session
from api.errors import describe
from ledger.errors import LedgerError

__all__ = ["TEMPLATE_CONFIG", "console_router"]

_HERE = Path(__file__).parent


def _money(cents: Any) -> str:
    return f"${cents / 100:,.2f}" if isinstance(cents, int) else "–"


def _when(value: Any) -> str:
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S UTC")
    if isinstance(value, str):
        return value.replace("T", " ").replace("Z", " UTC").split(".")[0] + (" UTC" if "." in value else "")
    return "–"


def _filters(engine: JinjaTemplateEngine) -> None:
    engine.engine.filters.update(money=_money, when=_when)


TEMPLATE_CONFIG = TemplateConfig(directory=_HERE / "templates", engine=JinjaTemplateEngine, engine_callback=_filters)


async def _guard(connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler) -> None:
    if not handler.opt.get("public"):
        await require_session(connection, handler)


def _sign_in_first(request: Request[Any, Any, Any], _: Exception) -> Response[Any]:
    return Redirect("/console/login", status_code=303)


def _error_page(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    assert isinstance(exc, LedgerError)
    status, body, headers = describe(exc)
    return Template(
        template_name="error.html",
        context={"path": request.url.path, "status": status, "message": body.error.message},
        status_code=status,
        headers=headers,
    )


def console_router(api_tokens: tuple[str, ...], *, secure_cookie: bool = False) -> Router:
    static = create_static_files_router(
        path="/static",
        directories=[_HERE / "static"],
        name="console-static",
        include_in_schema=False,
        opt={"public": True},
    )
    return Router(
        "/console",
        route_handlers=[*CONSOLE_PAGES, static],
        guards=[_guard],
        middleware=console_middleware(api_tokens, secure_cookie=secure_cookie),
        exception_handlers={SignInRequired: _sign_in_first, LedgerError: _error_page},
        include_in_schema=False,
    )
