"""``ledger flex …``: this ledger's webhook endpoint in Flex, and redelivery, through Flex's API.

Each command talks to Flex with the key of its mode (``--mode live``: ``FLEX_API_KEY``; ``--mode
test``: ``FLEX_TEST_API_KEY``, else ``FLEX_API_KEY``) at ``FLEX_API_BASE_URL``; none needs the
database.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote

from ledger.errors import ConfigError
from ledger.settings import Settings, load_settings
from reactors.flex_client import FlexApiError, FlexClient, client_for

__all__ = ["READ_EVENT_TYPES", "add_parser"]

# Every Flex event type the ledger's projections and reactors read: what a new endpoint subscribes
# to unless told otherwise (Flex's own list is not exhaustive; the ledger keeps what it ignores).
READ_EVENT_TYPES = (
    "checkout.session.completed",
    "checkout.session.expired",
    "payment_intent.created",
    "payment_intent.processing",
    "payment_intent.requires_action",
    "payment_intent.amount_capturable_updated",
    "payment_intent.succeeded",
    "payment_intent.payment_failed",
    "payment_intent.canceled",
    "customer.created",
    "customer.updated",
    "customer.deleted",
    "customer.subscription.created",
    "customer.subscription.updated",
    "customer.subscription.deleted",
    "invoice.created",
    "invoice.finalized",
    "invoice.updated",
    "invoice.paid",
    "invoice.payment_succeeded",
    "invoice.payment_failed",
    "invoice.payment_action_required",
    "invoice.marked_uncollectible",
    "invoice.voided",
    "refund.created",
    "refund.updated",
    "charge.refunded",
    "charge.refund.updated",
    "charge.dispute.created",
    "charge.dispute.updated",
    "charge.dispute.closed",
    "charge.dispute.funds_withdrawn",
    "charge.dispute.funds_reinstated",
)

_SECRETS = "LEDGER_WEBHOOK_SECRETS"


def _client(settings: Settings, mode: str) -> FlexClient:
    key = settings.flex_test_api_key if mode == "test" else None
    key = key or settings.flex_api_key
    if not key:
        needed = "FLEX_TEST_API_KEY or FLEX_API_KEY" if mode == "test" else "FLEX_API_KEY"
        raise ConfigError(f"{needed} is not set: the command calls Flex's API with it")
    return client_for(settings, key)


def _run(args: argparse.Namespace, work: Callable[[FlexClient], Awaitable[int]]) -> int:
    async def run() -> int:
        client = _client(load_settings(), args.mode)
        try:
            return await work(client)
        finally:
            await client.aclose()

    try:
        return asyncio.run(run())
    except ConfigError as exc:
        print(f"ledger flex: {exc.message}", file=sys.stderr)
        return 2
    except FlexApiError as exc:
        print(f"ledger flex: {exc.message}", file=sys.stderr)
        return 1


def _webhook(body: Any) -> dict[str, Any]:
    webhook = body.get("webhook") if isinstance(body, dict) else None
    if not isinstance(webhook, dict):
        raise FlexApiError("Flex API answered without a 'webhook' object", status=200)
    return webhook


async def _webhooks(client: FlexClient) -> list[dict[str, Any]]:
    body = await client.get("/webhooks")
    hooks = body.get("webhooks") if isinstance(body, dict) else None
    if not isinstance(hooks, list):
        raise FlexApiError("Flex API answered GET /webhooks without a 'webhooks' list", status=200)
    return [h for h in hooks if isinstance(h, dict)]


def _events(option: list[str] | None) -> list[str]:
    chosen = [t.strip() for part in option or [] for t in part.split(",") if t.strip()]
    return chosen or list(READ_EVENT_TYPES)


def cmd_create(args: argparse.Namespace) -> int:
    async def work(client: FlexClient) -> int:
        events = _events(args.events)
        webhook = _webhook(await client.post("/webhooks", {"webhook": {"url": args.url, "events": events}}))
        secret = webhook.get("signing_secret")
        print(f"id:          {webhook.get('webhook_id', '')}")
        print(f"url:         {webhook.get('url', args.url)}")
        print(f"events:      {', '.join(webhook.get('events') or events)}")
        mode = args.mode if "test_mode" not in webhook else "test" if webhook["test_mode"] else "live"
        print(f"mode:        {mode}")
        if not isinstance(secret, str) or not secret:
            print("ledger flex: Flex returned no signing secret; find it in Flex's dashboard", file=sys.stderr)
            return 0
        print(f"secret:      {secret}")
        if os.environ.get(_SECRETS, "").strip():
            # the secrets already set keep verifying until their endpoints are gone (rotation)
            print(f'put this in the environment: {_SECRETS}="${_SECRETS},{secret}"')
        else:
            print(f"put this in the environment: {_SECRETS}={secret}")
        return 0

    return _run(args, work)


def cmd_list(args: argparse.Namespace) -> int:
    async def work(client: FlexClient) -> int:
        hooks = await _webhooks(client)
        if args.json:
            shown = [{k: v for k, v in h.items() if k != "signing_secret"} for h in hooks]
            print(json.dumps({"webhooks": shown}, indent=2))
            return 0
        if not hooks:
            print(f"no webhook endpoints in Flex ({args.mode} key)")
        for h in hooks:
            events = h.get("events") or []
            mode = "test" if h.get("test_mode") else "live" if h.get("test_mode") is False else args.mode
            print(f"{h.get('webhook_id', '?')}  {mode:<4}  {h.get('url', '?')}  ({len(events)} event types)")
        return 0

    return _run(args, work)


def cmd_delete(args: argparse.Namespace) -> int:
    async def work(client: FlexClient) -> int:
        await client.delete(f"/webhooks/{quote(args.id, safe='')}")
        print(f"deleted {args.id}: Flex sends it nothing more (remove its secret from {_SECRETS} once drained)")
        return 0

    return _run(args, work)


def cmd_retry(args: argparse.Namespace) -> int:
    async def work(client: FlexClient) -> int:
        webhook_id = args.webhook
        if webhook_id is None:
            hooks = await _webhooks(client)
            if len(hooks) != 1:
                named = ", ".join(str(h.get("webhook_id")) for h in hooks) or "none"
                raise ConfigError(f"name the endpoint with --webhook: Flex has {len(hooks)} ({named})")
            webhook_id = str(hooks[0].get("webhook_id"))
        failed = 0
        for event_id in args.event_ids:
            try:
                await client.post(f"/events/{quote(event_id, safe='')}/retry", {"event": {"webhook_id": webhook_id}})
            except FlexApiError as exc:
                failed += 1
                print(f"{event_id}: not resent: {exc.message}", file=sys.stderr)
                continue
            print(f"{event_id}: Flex sends it again to {webhook_id}")
        return 1 if failed else 0

    return _run(args, work)


def add_parser(sub: Any) -> None:
    """``ledger flex`` and its subcommands."""
    flex = sub.add_parser(
        "flex",
        help="this ledger's webhook endpoint in Flex, and redelivery, through Flex's API",
        description="Calls Flex's API (FLEX_API_BASE_URL) with FLEX_API_KEY, or FLEX_TEST_API_KEY for --mode test. "
        "Needs no database.",
    )
    fsub = flex.add_subparsers(dest="flex_command", required=True, metavar="TOPIC")

    def with_mode(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument(
            "--mode",
            choices=("live", "test"),
            default="live",
            help="live: FLEX_API_KEY; test: FLEX_TEST_API_KEY (else FLEX_API_KEY). Default live",
        )
        return p

    webhooks = fsub.add_parser("webhooks", help="the webhook endpoints Flex sends events to")
    wsub = webhooks.add_subparsers(dest="webhooks_command", required=True, metavar="ACTION")
    create = with_mode(
        wsub.add_parser(
            "create",
            help="register URL with Flex; prints the signing secret and the LEDGER_WEBHOOK_SECRETS line",
            description="POST /webhooks: Flex sends the events named (default: every type the ledger reads) to "
            "URL, signed with the secret it returns. Test and live endpoints are separate: create one per mode.",
        )
    )
    create.add_argument(
        "url", metavar="URL", help="the ledger's public endpoint, e.g. https://ledger.example.com/webhooks/flex"
    )
    create.add_argument("--events", action="append", metavar="T,...", help="event types (comma-separated, repeatable)")
    create.set_defaults(func=cmd_create)
    lst = with_mode(wsub.add_parser("list", help="the endpoints Flex has for this key (secrets not shown)"))
    lst.add_argument("--json", action="store_true", help="machine-readable output")
    lst.set_defaults(func=cmd_list)
    delete = with_mode(wsub.add_parser("delete", help="remove an endpoint from Flex"))
    delete.add_argument("id", metavar="ID")
    delete.set_defaults(func=cmd_delete)

    events = fsub.add_parser("events", help="Flex's events")
    esub = events.add_subparsers(dest="events_command", required=True, metavar="ACTION")
    retry = with_mode(
        esub.add_parser(
            "retry",
            help="ask Flex to send events again (POST /events/{id}/retry)",
            description="Asks Flex to deliver each event again to an endpoint: the one named by --webhook, or the "
            "only one Flex has for this key. The ledger records an event once, however often it arrives.",
        )
    )
    retry.add_argument("event_ids", nargs="+", metavar="EVENT_ID")
    retry.add_argument("--webhook", default=None, metavar="ID", help="the endpoint to send to")
    retry.set_defaults(func=cmd_retry)
