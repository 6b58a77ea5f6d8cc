"""``ledger destinations …``: the merchant's outbound destinations from the command line, and
``listen``, a local receiver that verifies and prints what a destination is sent."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Awaitable, Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import msgspec

from ledger.errors import ConfigError, DatabaseError, LedgerError
from ledger.settings import Settings

__all__ = ["add_parser"]


def _cli() -> Any:
    from ledger_cli import main  # the command's shared helpers (main imports this module)

    return main


def _run(work: Callable[[Any, Settings], Awaitable[int]], *, reads_only: bool = False) -> int:
    cli = _cli()

    async def run(settings: Settings) -> int:
        try:
            async with cli.database(settings, reads_only=reads_only) as (conn, _):
                return await work(conn, settings)
        except LedgerError as exc:
            if isinstance(exc, DatabaseError | ConfigError):
                raise  # reported as every command reports them
            print(f"ledger destinations: {exc.message}", file=sys.stderr)
            return 1

    return int(cli._run_with_settings(run))


def _show(d: Any) -> None:
    rows = [
        ("id", d.id),
        ("url", d.url),
        ("types", ", ".join(d.types) or "all"),
        ("mode", d.mode),
        ("state", d.state),
        ("position", f"{d.position} (lag {d.lag})"),
        ("messages", f"{d.delivered} delivered, {d.retrying} retrying, {d.failed} failed"),
        ("last error", f"{d.last_error} ({d.last_error_at})" if d.last_error else "none"),
        ("rotating", f"the previous secret also signs until {d.rotating_until}" if d.rotating_until else "no"),
        ("description", d.description or ""),
        ("created", d.created_at),
    ]
    for key, value in rows:
        print(f"{key + ':':<13}{value}")


def cmd_add(args: argparse.Namespace) -> int:
    from reactors import destinations

    async def work(conn: Any, settings: Settings) -> int:
        types = [t for part in args.types or [] for t in part.split(",")]
        created = await destinations.add(
            conn,
            args.url,
            types=types,
            mode=args.mode,
            description=args.description,
            allow_private=settings.delivery_allow_private,
        )
        _show(created.destination)
        print(f"secret:      {created.secret}")
        print("ledger destinations: keep the secret now: it is not shown again (rotate-secret makes a new one)")
        return 0

    return _run(work)


def cmd_list(args: argparse.Namespace) -> int:
    from reactors import destinations

    async def work(conn: Any, _: Settings) -> int:
        found = await destinations.list_all(conn)
        if args.json:
            print(json.dumps({"data": msgspec.to_builtins(found)}))
            return 0
        if not found:
            print("no destinations (ledger destinations add URL)")
            return 0
        table = [("id", "state", "mode", "types", "lag", "delivered", "retrying", "failed", "url", "last error")]
        for d in found:
            table.append(
                (
                    d.id,
                    d.state,
                    d.mode,
                    ",".join(d.types) or "all",
                    str(d.lag),
                    str(d.delivered),
                    str(d.retrying),
                    str(d.failed),
                    d.url,
                    (d.last_error or "")[:60],
                )
            )
        _cli()._print_table(table)
        return 0

    return _run(work, reads_only=True)


def cmd_show(args: argparse.Namespace) -> int:
    from reactors import destinations

    async def work(conn: Any, _: Settings) -> int:
        d = await destinations.get(conn, args.id)
        if args.json:
            print(json.dumps(msgspec.to_builtins(d)))
            return 0
        _show(d)
        failed = await destinations.messages(conn, args.id, status="failed", limit=10, cursor=None)
        for m in failed.data:
            print(f"failed:      {m.message_id} {m.type} at {m.position}, {m.attempts} attempts: {m.last_error}")
        return 0

    return _run(work, reads_only=True)


def _state_command(action: str) -> Callable[[argparse.Namespace], int]:
    def command(args: argparse.Namespace) -> int:
        from reactors import destinations

        async def work(conn: Any, _: Settings) -> int:
            if action == "delete":
                await destinations.delete(conn, args.id)
                print(f"ledger destinations: {args.id} deleted, with its messages")
                return 0
            d = await (destinations.disable if action == "disable" else destinations.enable)(conn, args.id)
            print(f"ledger destinations: {d.id} is {d.state}")
            return 0

        return _run(work)

    return command


def cmd_rotate(args: argparse.Namespace) -> int:
    from reactors import destinations

    async def work(conn: Any, _: Settings) -> int:
        secret = await destinations.rotate_secret(conn, args.id)
        hours = int(destinations.ROTATION_OVERLAP.total_seconds() // 3600)
        print(f"secret: {secret}")
        print(f"ledger destinations: for {hours} h every message carries both signatures, then only the new one's")
        return 0

    return _run(work)


def cmd_replay(args: argparse.Namespace) -> int:
    from reactors import destinations

    async def work(conn: Any, _: Settings) -> int:
        d = await destinations.replay(conn, args.id, args.from_position)
        print(
            f"ledger destinations: {d.id} delivers again every message from position {args.from_position} on "
            f"({d.lag} log positions to go; same ids and bodies as the first time)"
        )
        return 0

    return _run(work)


def cmd_retry(args: argparse.Namespace) -> int:
    if not args.all_failed and not args.message_ids:
        return int(_cli()._fail("name one or more message ids, or --all-failed"))

    from reactors import destinations

    async def work(conn: Any, _: Settings) -> int:
        ids = None if args.all_failed else list(args.message_ids)
        queued = await destinations.retry_failed(conn, args.id, ids)
        for message_id in queued:
            print(f"ledger destinations: {message_id} queued again")
        missing = set(args.message_ids) - set(queued)
        for message_id in sorted(missing):
            print(f"ledger destinations: {message_id}: not a failed message of {args.id}", file=sys.stderr)
        if args.all_failed and not queued:
            print("ledger destinations: no failed messages")
        return 1 if missing else 0

    return _run(work)


def cmd_listen(args: argparse.Namespace) -> int:
    """A local receiver: verifies each message with the secret (Standard Webhooks), prints it, answers 204."""
    from ledger.errors import SignatureError
    from ledger.settings import decode_secret
    from ledger.signing import verify

    try:
        key = decode_secret(args.secret)
    except LedgerError as exc:
        return int(_cli()._fail(exc.message))

    class Receiver(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length") or 0))
            headers = {k.lower(): v for k, v in self.headers.items()}
            try:
                verify([key], headers, body, tolerance=args.tolerance)
            except SignatureError as exc:
                print(f"refused {headers.get('webhook-id', '?')}: {exc.message}", flush=True)
                self.send_response(401)
                self.end_headers()
                return
            try:
                doc = json.loads(body)
                line = f"{doc.get('position')} {doc.get('type')} {headers.get('webhook-id')}"
            except ValueError:
                doc, line = None, f"? ? {headers.get('webhook-id')}"
            print(line if args.quiet or doc is None else f"{line} {json.dumps(doc.get('data'))}", flush=True)
            self.send_response(204)
            self.end_headers()

        def log_message(self, format: str, *a: Any) -> None:
            return

    server = ThreadingHTTPServer((args.host, args.port), Receiver)
    print(f"listening on http://{args.host}:{server.server_port}/ (verifying with the secret; Ctrl-C ends)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


def add_parser(sub: Any) -> None:
    """``ledger destinations`` and its subcommands."""
    dest = sub.add_parser("destinations", help="outbound destinations: the ledger's messages to your systems")
    dsub = dest.add_subparsers(dest="destinations_command", required=True, metavar="ACTION")

    add = dsub.add_parser("add", help="register a destination; prints its id and signing secret (shown once)")
    add.add_argument("url")
    add.add_argument("--types", action="append", help="message types or prefixes with * (order.*); default all")
    add.add_argument("--mode", choices=("live", "test", "all"), default="live")
    add.add_argument("--description")
    add.set_defaults(func=cmd_add)

    lst = dsub.add_parser("list", help="every destination: state, lag, delivered / retrying / failed, last error")
    lst.add_argument("--json", action="store_true")
    lst.set_defaults(func=cmd_list)

    show = dsub.add_parser("show", help="one destination and its latest failed messages")
    show.add_argument("id")
    show.add_argument("--json", action="store_true")
    show.set_defaults(func=cmd_show)

    for action, text in (
        ("disable", "stop sending; what happens meanwhile is sent once it is enabled again"),
        ("enable", "send again (also after a receiver's 410)"),
        ("delete", "delete a destination and its messages"),
    ):
        p = dsub.add_parser(action, help=text)
        p.add_argument("id")
        p.set_defaults(func=_state_command(action))

    rotate = dsub.add_parser("rotate-secret", help="a new secret; both sign for 24 h")
    rotate.add_argument("id")
    rotate.set_defaults(func=cmd_rotate)

    replay = dsub.add_parser("replay", help="deliver again every message from a log position on")
    replay.add_argument("id")
    replay.add_argument("--from-position", type=int, required=True)
    replay.set_defaults(func=cmd_replay)

    retry = dsub.add_parser("retry", help="queue failed messages again")
    retry.add_argument("id")
    retry.add_argument("message_ids", nargs="*")
    retry.add_argument("--all-failed", action="store_true")
    retry.set_defaults(func=cmd_retry)

    listen = dsub.add_parser("listen", help="a local receiver that verifies and prints each message")
    listen.add_argument("--secret", required=True, help="the destination's whsec_ secret")
    listen.add_argument("--port", type=int, default=8787)
    listen.add_argument("--host", default="127.0.0.1")
    listen.add_argument("--tolerance", type=int, default=300, help="seconds a timestamp may be off")
    listen.add_argument("--quiet", action="store_true", help="one line per message, without its data")
    listen.set_defaults(func=cmd_listen)
