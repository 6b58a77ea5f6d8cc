"""Observations: what the ledger learned by asking Flex's API rather than from a webhook.

``ledger reconcile`` and ``POST /v1/orders/{id}/sync`` append a ``ledger.flex.observed`` event
holding one resource exactly as Flex returned it, under its resource key, and when it was seen::

    {"event_id": "ledger.flex.observed:fcs_…:9c1e…", "event_type": "ledger.flex.observed",
     "source": "flex-api", "observed_at": "2026-11-29T08:00:00.123456Z",
     "object": {"checkout_session": {...}}}

Every follower of the log reads an observation as the webhook snapshot it stands for
(``as_snapshot``): a ``checkout.session.observed``, ``payment_intent.observed`` or
``refund.observed`` event whose time is ``observed_at`` — the moment the snapshot was true, as
``event_dt`` is for a webhook — never the time it was recorded. So an order first learned from an
observation and later from its late webhooks merges to the same state as in any other order.

The ``event_id`` is derived from the resource id and its content: recording the same state twice,
from two runs at once or a run and a sync, appends it once.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from ledger.envelope import MAX_KEY_BYTES, has_nul, oversized_key
from ledger.log import NewEvent
from projections.base import LogRow
from projections.fields import as_str

__all__ = ["KINDS", "OBSERVED", "SOURCE", "Kind", "as_snapshot", "observed_event", "resource_id", "unusable"]

OBSERVED = "ledger.flex.observed"
SOURCE = "flex-api"


@dataclass(frozen=True)
class Kind:
    """A resource Flex's API lists: its key in an observation, its id field, its list route and
    reply key, the event type its snapshot is read as, and the projection that says whether an
    observation of it is news (reconcile)."""

    name: str
    id_field: str
    list_path: str
    list_key: str
    snapshot_type: str
    projection: str = "orders"


KINDS: dict[str, Kind] = {
    k.name: k
    for k in (
        Kind(
            "checkout_session",
            "checkout_session_id",
            "/checkout/sessions",
            "checkout_sessions",
            "checkout.session.observed",
        ),
        Kind("payment_intent", "payment_intent_id", "/payment_intents", "payment_intents", "payment_intent.observed"),
        Kind("refund", "refund_id", "/refunds", "refunds", "refund.observed"),
        Kind("invoice", "invoice_id", "/invoices", "invoices", "invoice.observed", "invoices"),
        Kind(
            "subscription",
            "subscription_id",
            "/subscriptions",
            "subscriptions",
            "customer.subscription.observed",
            "subscriptions",
        ),
    )
}


def resource_id(kind: Kind, resource: dict[str, Any]) -> str | None:
    return as_str(resource.get(kind.id_field)) or as_str(resource.get("id"))


def unusable(kind: Kind, resource: Any) -> str | None:
    """Why a resource Flex's API returned cannot be recorded as an observation (``None`` when it
    can): not an object, no id, an id or reference no index can hold, or a ``\\u0000`` the log
    cannot store. Such a resource is skipped and reported, never recorded."""
    if not isinstance(resource, dict):
        return "not a JSON object"
    rid = resource_id(kind, resource)
    if rid is None:
        return f"no {kind.id_field}"
    if len(rid.encode()) > MAX_KEY_BYTES:
        return f"its {kind.id_field} is longer than {MAX_KEY_BYTES} bytes"
    where = oversized_key(resource)
    if where is not None:
        return f"{where} is longer than {MAX_KEY_BYTES} bytes"
    if has_nul(resource):
        return "it holds a \\u0000 character, which the log cannot store"
    return None


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def observed_event(kind: Kind, resource: dict[str, Any], observed_at: datetime) -> NewEvent:
    """The observation of ``resource`` (which must have an id) as seen at ``observed_at``."""
    rid = resource_id(kind, resource)
    if rid is None:
        raise ValueError(f"a {kind.name} without {kind.id_field}")
    canonical = json.dumps(resource, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    digest = hashlib.sha256(f"{kind.name}\x00{canonical}".encode()).hexdigest()[:24]
    event_id = f"{OBSERVED}:{rid}:{digest}"
    body = {
        "event_id": event_id,
        "event_type": OBSERVED,
        "source": SOURCE,
        "observed_at": _iso(observed_at),
        "test_mode": resource.get("test_mode") if isinstance(resource.get("test_mode"), bool) else None,
        "object": {kind.name: resource},
    }
    return NewEvent(
        event_id=event_id,
        event_type=OBSERVED,
        source=SOURCE,
        raw_body=json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode(),
        event_dt=int(observed_at.timestamp()),
        occurred_at=observed_at,
    )


def as_snapshot(row: LogRow) -> LogRow:
    """An observation as the webhook snapshot it stands for; any other row unchanged (and an
    observation that holds no known resource too: followers then ignore it)."""
    if row.event_type != OBSERVED:
        return row
    obj = row.payload.get("object")
    if not isinstance(obj, dict):
        return row
    for kind in KINDS.values():
        if isinstance(obj.get(kind.name), dict):
            payload = {**row.payload, "event_type": kind.snapshot_type, "event_dt": row.payload.get("observed_at")}
            return LogRow(position=row.position, event_type=kind.snapshot_type, payload=payload)
    return row
