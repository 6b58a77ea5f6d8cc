"""``ledger send``: realistic Flex events, signed exactly as Svix signs them, POSTed to a URL.

Useful against any deployment that verifies Flex webhooks, not only this one.
"""

from __future__ import annotations

import base64
import json
import random
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import httpx

from ledger.errors import ConfigError
from ledger.settings import decode_secret
from ledger.signing import sign
from ledger_cli.scenarios import (
    PERIOD,
    Checkout,
    cancel_at_period_end_events,
    cancel_events,
    checkout_events,
    dispute_events,
    refund_events,
    renewal_events,
)

__all__ = ["SCENARIOS", "load_events", "scenario_line_items", "send", "signed_headers", "tell_standin"]

# name: (the checkout, what happens after the sale)
SCENARIOS: dict[str, tuple[dict[str, Any], Callable[[Checkout], list[dict[str, Any]]]]] = {
    "checkout": ({"mode": "payment"}, lambda c: []),
    "split-cart": ({"mode": "payment", "split": True, "items": 2}, lambda c: []),
    "subscription": ({"mode": "subscription"}, lambda c: []),
    "test-mode": ({"test_mode": True}, lambda c: []),
    "partial-refund": ({}, lambda c: refund_events(c, c.total // 2)),
    "full-refund": ({}, lambda c: refund_events(c, c.total)),
    "dispute-lost": ({}, lambda c: dispute_events(c, outcome="lost")),
    "dispute-won": ({}, lambda c: dispute_events(c, outcome="won")),
    "voided-authorization": ({"capture": "manual"}, cancel_events),
    # three renewals (the second paid only after a failed attempt), then cancelled at period end
    "subscription-renewal": ({"mode": "subscription"}, lambda c: _renewals(c)),
}
# How far back a scenario starts, so that all of it has happened by now.
_BACK = {"subscription-renewal": 4 * PERIOD}


def _renewals(c: Checkout) -> list[dict[str, Any]]:
    return [
        *renewal_events(c, 1),
        *renewal_events(c, 2, outcome="recovered"),
        *renewal_events(c, 3),
        *cancel_at_period_end_events(c, 3),
    ]


def load_events(source: str, seed: int) -> list[dict[str, Any]]:
    """A scenario's events, or the events in a JSON (object or list) or JSONL file."""
    if source in SCENARIOS:
        options, after_sale = SCENARIOS[source]
        checkout = Checkout(seed=seed, start=int(time.time()) - 600 - _BACK.get(source, 0), **options)
        return checkout_events(checkout) + after_sale(checkout)
    path = Path(source)
    if not path.exists():
        raise ConfigError(f"{source!r} is neither a scenario ({', '.join(SCENARIOS)}) nor a file")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix == ".jsonl":
            events = [json.loads(line) for line in text.splitlines() if line.strip()]
        else:
            loaded = json.loads(text)
            events = loaded if isinstance(loaded, list) else [loaded]
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{source}: not valid JSON ({exc})") from None
    if not all(isinstance(e, dict) for e in events):
        raise ConfigError(f"{source}: every event must be a JSON object")
    return events


def signed_headers(key: bytes, msg_id: str, body: bytes, style: str = "svix") -> dict[str, str]:
    """The headers of ``body`` signed with ``key`` as Svix signs (``style``: svix, webhook or the legacy flex)."""
    ts = str(int(time.time()))
    signature = base64.b64encode(sign(key, msg_id, ts, body)).decode()
    if style == "flex":
        return {"flex-event-id": msg_id, "flex-timestamp": ts, "flex-signature": signature}
    return {
        f"{style}-id": msg_id,
        f"{style}-timestamp": ts,
        f"{style}-signature": f"v1,{signature}",
        "content-type": "application/json",
    }


def scenario_line_items(source: str, seed: int) -> dict[str, list[dict[str, Any]]]:
    """The line items Flex would answer for a scenario's session (none for a file of events)."""
    if source not in SCENARIOS:
        return {}
    checkout = Checkout(seed=seed, **SCENARIOS[source][0])
    return {checkout.session_id: checkout.line_items()}


def tell_standin(standin_url: str, events: list[dict[str, Any]], line_items: dict[str, Any]) -> None:
    """Makes a Flex stand-in (``ledger flex-standin``) know the sessions, payment intents and refunds
    the events carry, as Flex itself would, whether or not the webhooks are then delivered."""
    base = standin_url.rstrip("/").removesuffix("/v1")
    try:
        reply = httpx.post(f"{base}/_standin/events", json={"events": events, "line_items": line_items}, timeout=30)
        reply.raise_for_status()
    except httpx.HTTPError as exc:
        raise ConfigError(f"cannot tell the Flex stand-in at {base} about the events: {exc}") from None


def _dropped(event: dict[str, Any], drop: Sequence[str]) -> bool:
    event_type = event.get("event_type")
    return any(d == "all" or (isinstance(event_type, str) and event_type.startswith(d)) for d in drop)


def send(
    events: list[dict[str, Any]],
    *,
    url: str,
    secret: str,
    seed: int = 0,
    out_of_order: bool = False,
    duplicates: int = 0,
    style: str = "svix",
    drop: Sequence[str] = (),
    out: Any = sys.stdout,
) -> int:
    """Delivers ``events``, except those whose type starts with one of ``drop`` (``all``: every
    one; a lost webhook); prints one line per delivery. Returns 0 when every reply was 2xx."""
    key = decode_secret(secret)
    rng = random.Random(seed)
    deliveries = [(e, f"msg_{uuid.UUID(int=rng.getrandbits(128)).hex[:24]}") for e in events]
    if out_of_order and len(deliveries) > 1:
        shuffled = deliveries[:]
        while shuffled == deliveries:
            rng.shuffle(shuffled)
        deliveries = shuffled
    for delivery in rng.sample(deliveries, k=min(duplicates, len(deliveries))):
        # a redelivery: same message id and body, new timestamp and signature
        deliveries.insert(rng.randint(deliveries.index(delivery) + 1, len(deliveries)), delivery)
    failures = 0
    with httpx.Client(timeout=30) as client:
        for event, msg_id in deliveries:
            body = json.dumps(event).encode()
            label = f"{event.get('event_type', '?'):<32} {event.get('event_id', '?')}"
            if _dropped(event, drop):
                print(f"{label} -> dropped (not delivered)", file=out, flush=True)
                continue
            try:
                reply = client.post(url, content=body, headers=signed_headers(key, msg_id, body, style))
            except httpx.HTTPError as exc:
                print(f"{label} -> error: {exc}", file=out, flush=True)
                failures += 1
                continue
            print(f"{label} -> {reply.status_code} {reply.text.strip()}", file=out, flush=True)
            failures += not reply.is_success
    return 0 if failures == 0 else 1
