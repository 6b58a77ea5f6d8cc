"""A local stand-in for the Flex API, with scriptable faults: what the tests, the demo and the
benchmarks call instead of Flex.

Run it with ``ledger flex-standin --port 8100`` and point ``FLEX_API_BASE_URL`` at
``http://127.0.0.1:8100/v1``. It serves, with Flex's shapes:

* ``GET /v1/checkout/sessions/{id}/line_items``: line items registered with
  ``POST /_standin/sessions/{id}`` (body ``{"line_items": [...]}``), else 1-3 items made up
  deterministically from the session id;
* ``GET /v1/checkout/sessions/{id}``, ``/v1/subscriptions/{id}`` and ``/v1/invoices/{id}`` (404
  ``{"detail": "not_found"}`` when unknown), and the lists ``GET /v1/checkout/sessions``,
  ``/v1/payment_intents``, ``/v1/refunds``, ``/v1/invoices`` and ``/v1/subscriptions`` (newest
  first; ``limit`` 1-100, ``starting_after``; ``checkout_session``, ``payment_intent``,
  ``subscription`` and, for subscriptions, ``status`` filters), of the
  resources it learned from Flex events posted to ``POST /_standin/events`` (body
  ``{"events": [...], "line_items": {session_id: [...]}}``): what ``ledger send --flex-standin``
  and the demo post, whether or not the webhooks themselves are delivered;
* ``Authorization: Bearer <key>`` checked when started with ``--api-key`` (401 otherwise);
* faults scripted with ``POST /_standin/faults`` and body
  ``{"session_id": TARGET, "script": [{"status": 429, "retry_after": "1"}, {"delay": 3}, ...]}``
  (consumed one per call, then normal answers) or ``{"session_id": TARGET, "always": {"status": 404}}``
  (until ``DELETE /_standin/faults``); a step may also be ``{"drop": true}`` (close the connection),
  ``{"body": {...}}`` (answer that document instead), ``{"drip": S}`` (send the answer one byte
  every S seconds), ``{"huge": N}`` (a JSON answer of N bytes, streamed without a length) or, on a
  list route, ``{"endless": true}`` (a full page of new resources, created now, every time);
  TARGET is a session id or ``*`` (the per-session routes), or a route: ``line_items``,
  ``checkout_session``, ``checkout_sessions``, ``payment_intents``, ``refunds``, ``invoices``,
  ``subscriptions``, or ``invoice`` / ``subscription`` (reading one by id);
* every call is recorded: ``GET /_standin/calls`` gives ``{"count": N, "calls": [...]}``;
* webhook endpoints as the seed guide manages them: ``POST /v1/webhooks`` (body ``{"webhook":
  {"url", "events"}}``, answered ``{"webhook": {"webhook_id", "url", "events", "signing_secret",
  "test_mode", "created_at"}}``; ``test_mode`` when the bearer key holds ``_test_``), ``GET
  /v1/webhooks`` (the key's mode's), ``GET`` and ``DELETE /v1/webhooks/{id}``; and ``POST /v1/events/{id}/retry``
  (body ``{"event": {"webhook_id"}}``) for an event it learned: answered with the event, which it
  then POSTs to that endpoint's URL signed with its secret as Svix signs (each delivery recorded as
  a call of route ``delivery``).

A plain ASGI app, so tests and the demo run it exactly as the service runs.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import re
import secrets
import time
from collections import deque
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs

import httpx

from ledger.settings import decode_secret
from ledger_cli.send import signed_headers
from projections.fields import epoch_micros

__all__ = ["FlexStandIn", "made_up_line_items"]

_LINE_ITEMS = re.compile(r"^(?:/v1)?/checkout/sessions/([^/]+)/line_items$")
_SESSION_GET = re.compile(r"^/v1/checkout/sessions/([^/]+)$")
_SESSION = re.compile(r"^/_standin/sessions/([^/]+)$")
_WEBHOOKS = re.compile(r"^/v1/webhooks(?:/([^/]+))?$")
_RETRY = re.compile(r"^/v1/events/([^/]+)/retry$")

Send = Any
Receive = Any
Scope = dict[str, Any]


def made_up_line_items(session_id: str) -> list[dict[str, Any]]:
    """1-3 plausible line items, always the same for the same session id."""
    digest = hashlib.sha256(session_id.encode()).digest()
    items = []
    for i in range(1 + digest[0] % 3):
        quantity = 1 + digest[i + 1] % 3
        unit = (5 + digest[i + 4] % 60) * 100
        product = f"fprod_{digest[i + 8]:02x}{digest[i + 9]:02x}"
        items.append(
            {
                "line_item_id": f"li_{session_id[-10:]}_{i + 1}",
                "description": f"Wellness item {digest[i + 8] % 20 + 1}",
                "quantity": quantity,
                "amount_subtotal": unit * quantity,
                "amount_total": unit * quantity,
                "amount_discount": 0,
                "amount_tax": 0,
                "eligibility": "auto_substantiation",
                "price": {
                    "price_id": f"fprice_{digest[i + 8]:02x}{digest[i + 9]:02x}",
                    "unit_amount": unit,
                    "product": {
                        "product_id": product,
                        "name": f"Product {product[-4:]}",
                        "upc_code": f"0{digest[i + 8]:011d}",
                    },
                },
            }
        )
    return items


# The resources a Flex event carries, by object key: (id field, list route's reply key).
_RESOURCES = {
    "checkout_session": ("checkout_session_id", "checkout_sessions"),
    "payment_intent": ("payment_intent_id", "payment_intents"),
    "refund": ("refund_id", "refunds"),
    "invoice": ("invoice_id", "invoices"),
    "subscription": ("subscription_id", "subscriptions"),
}
_LISTS = {
    "/v1/checkout/sessions": "checkout_session",
    "/v1/payment_intents": "payment_intent",
    "/v1/refunds": "refund",
    "/v1/invoices": "invoice",
    "/v1/subscriptions": "subscription",
}
# ``GET /v1/<route>/{id}``: the resources one can be read by id, answered {"<kind>": {...}}.
_ONE = re.compile(r"^/v1/(invoices|subscriptions)/([^/]+)$")


def _id(value: Any, id_field: str) -> Any:
    """A reference as an id, whether Flex sent the id or the object."""
    return value.get(id_field) if isinstance(value, dict) else value


def _micros(value: Any) -> int:
    """A time as the projections read it (epoch seconds or milliseconds, or ISO-8601); 0 if none."""
    return epoch_micros(value) or 0


class FlexStandIn:
    def __init__(self, *, api_key: str | None = None, delay: float = 0.0) -> None:
        self.api_key = api_key
        self.delay = delay
        self.sessions: dict[str, list[dict[str, Any]]] = {}
        # resources learned from events: kind -> id -> (event time, object as the API shows it)
        self.resources: dict[str, dict[str, tuple[int, dict[str, Any]]]] = {k: {} for k in _RESOURCES}
        self._sorted: dict[str, list[dict[str, Any]] | None] = dict.fromkeys(_RESOURCES)
        self._intent_sessions: dict[str, str] | None = None
        self.scripts: dict[str, deque[dict[str, Any]]] = {}
        self.always: dict[str, dict[str, Any]] = {}
        self.calls: list[dict[str, Any]] = []
        self._made = 0
        self.events: dict[str, dict[str, Any]] = {}  # learned, by event id: what a retry sends again
        self.webhooks: dict[str, dict[str, Any]] = {}
        self._sending: set[asyncio.Task[None]] = set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        method, path = scope["method"], scope["path"].rstrip("/") or "/"
        if path.startswith("/_standin/"):
            return await self._control(send, method, path, body)
        match = _WEBHOOKS.match(path)
        if match:
            test_mode = "_test_" in dict(scope["headers"]).get(b"authorization", b"").decode()
            hook_id = match.group(1)
            return await self._serve(
                scope, send, None, "webhooks", lambda: self._webhook_call(method, hook_id, body, test_mode)
            )
        match = _RETRY.match(path)
        if match and method == "POST":
            event_id = match.group(1)
            return await self._serve(scope, send, None, "event_retry", lambda: self._retry(event_id, body))
        if method != "GET":
            return await _json(send, 405, {"detail": "method_not_allowed"})
        query = {k: v[-1] for k, v in parse_qs(scope.get("query_string", b"").decode()).items()}
        match = _LINE_ITEMS.match(path)
        if match:
            return await self._serve(
                scope, send, match.group(1), "line_items", lambda: self._line_items(match.group(1))
            )
        match = _SESSION_GET.match(path)
        if match:
            session_id = match.group(1)
            return await self._serve(scope, send, session_id, "checkout_session", lambda: self._get(session_id))
        match = _ONE.match(path)
        if match:
            kind, rid = _LISTS["/v1/" + match.group(1)], match.group(2)
            return await self._serve(scope, send, None, kind, lambda: self._one(kind, rid))
        if path in _LISTS:
            kind = _LISTS[path]
            return await self._serve(scope, send, None, _RESOURCES[kind][1], lambda: self._list(kind, query))
        return await _json(send, 404, {"detail": "not_found"})

    async def _control(self, send: Send, method: str, path: str, body: bytes) -> None:
        if path == "/_standin/calls" and method == "GET":
            return await _json(send, 200, {"count": len(self.calls), "calls": self.calls})
        if path == "/_standin/faults" and method == "POST":
            spec = json.loads(body or b"{}")
            self.fault(spec.get("session_id", "*"), script=spec.get("script", []), always=spec.get("always"))
            return await _json(send, 200, {"ok": True})
        if path == "/_standin/faults" and method == "DELETE":
            self.scripts.clear()
            self.always.clear()
            return await _json(send, 200, {"ok": True})
        if path == "/_standin/events" and method == "POST":
            spec = json.loads(body or b"{}")
            learned = self.learn(spec.get("events", []))
            for session_id, items in (spec.get("line_items") or {}).items():
                self.sessions[session_id] = items
            return await _json(send, 200, {"ok": True, "resources": learned})
        match = _SESSION.match(path)
        if match and method == "POST":
            self.sessions[match.group(1)] = json.loads(body or b"{}").get("line_items", [])
            return await _json(send, 200, {"ok": True})
        return await _json(send, 404, {"detail": "not_found"})

    def fault(
        self, target: str = "*", *, script: list[dict[str, Any]] | None = None, always: dict[str, Any] | None = None
    ) -> None:
        """Answers of the next calls to ``target`` (one step per call), or of every call (``always``)."""
        if always is not None:
            self.always[target] = always
        self.scripts.setdefault(target, deque()).extend(script or [])

    def learn(self, events: list[dict[str, Any]]) -> int:
        """Keeps the newest state of every session, payment intent, refund, invoice and subscription
        the events carry
        (fields of older events fill only what newer ones did not say), as Flex's API would show it."""
        learned = 0
        for event in events:
            if isinstance(event, dict) and isinstance(event.get("event_id"), str):
                self.events[event["event_id"]] = event
            obj = event.get("object") if isinstance(event, dict) else None
            if not isinstance(obj, dict):
                continue
            at = _micros(event.get("event_dt"))
            for kind, (id_field, _) in _RESOURCES.items():
                resource = obj.get(kind)
                if not isinstance(resource, dict) or not isinstance(resource.get(id_field), str):
                    continue
                known = self.resources[kind].get(resource[id_field])
                if known is None:
                    merged = dict(resource)
                    if "created_at" not in merged:
                        merged["created_at"] = datetime.fromtimestamp(at / 1_000_000, UTC).isoformat()
                    self.resources[kind][resource[id_field]] = (at, merged)
                elif at >= known[0]:
                    self.resources[kind][resource[id_field]] = (at, {**known[1], **resource})
                else:
                    self.resources[kind][resource[id_field]] = (known[0], {**resource, **known[1]})
                self._sorted[kind] = None
                self._intent_sessions = None
                learned += 1
        return learned

    def _webhook_call(self, method: str, hook_id: str | None, body: bytes, test_mode: bool) -> tuple[int, Any]:
        if hook_id is None and method == "GET":  # a key lists its own mode's endpoints
            return 200, {"webhooks": [h for h in self.webhooks.values() if h["test_mode"] == test_mode]}
        if hook_id is None and method == "POST":
            try:
                spec = json.loads(body or b"{}").get("webhook") or {}
            except (ValueError, AttributeError):
                spec = None
            url, events = (spec.get("url"), spec.get("events")) if isinstance(spec, dict) else (None, None)
            if not isinstance(url, str) or not url.startswith(("http://", "https://")):
                return 400, {"detail": "webhook.url must be an http(s) URL"}
            if not isinstance(events, list) or not all(isinstance(e, str) for e in events):
                return 400, {"detail": "webhook.events must be a list of event types"}
            hook_id = f"wh_{secrets.token_hex(8)}"
            self.webhooks[hook_id] = {
                "webhook_id": hook_id,
                "url": url,
                "events": events,
                "signing_secret": "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode(),
                "test_mode": test_mode,
                "created_at": datetime.now(UTC).isoformat(),
            }
            return 200, {"webhook": self.webhooks[hook_id]}
        if hook_id is not None and hook_id in self.webhooks and method in {"GET", "DELETE"}:
            hook = self.webhooks[hook_id] if method == "GET" else self.webhooks.pop(hook_id)
            return 200, {"webhook": hook}
        if hook_id is not None and method in {"GET", "DELETE"}:
            return 404, {"detail": "not_found"}
        return 405, {"detail": "method_not_allowed"}

    def _retry(self, event_id: str, body: bytes) -> tuple[int, Any]:
        """``POST /v1/events/{id}/retry``: the event sent again, signed, to the endpoint named."""
        try:
            hook_id = (json.loads(body or b"{}").get("event") or {}).get("webhook_id")
        except (ValueError, AttributeError):
            hook_id = None
        hook = self.webhooks.get(hook_id) if isinstance(hook_id, str) else None
        event = self.events.get(event_id)
        if hook is None or event is None:
            return 404, {"detail": "not_found"}
        task = asyncio.get_running_loop().create_task(self._redeliver(hook, event))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)
        created = datetime.fromtimestamp(_micros(event.get("event_dt")) / 1_000_000, UTC).isoformat()
        shown = {k: event.get(k) for k in ("event_id", "event_type", "object")}
        return 200, {"event": {**shown, "test_mode": hook["test_mode"], "created_at": created}}

    async def _redeliver(self, hook: dict[str, Any], event: dict[str, Any]) -> None:
        body = json.dumps(event).encode()
        msg_id = "msg_" + hashlib.sha256(f"{event['event_id']}/{hook['webhook_id']}".encode()).hexdigest()[:24]
        headers = signed_headers(decode_secret(hook["signing_secret"]), msg_id, body)
        record: dict[str, Any] = {"route": "delivery", "event_id": event["event_id"], "at": time.time()}
        self.calls.append(record)
        try:
            async with httpx.AsyncClient(timeout=15) as client:
                record["status"] = (await client.post(hook["url"], content=body, headers=headers)).status_code
        except httpx.HTTPError as exc:
            record["status"], record["error"] = None, str(exc)

    def _next_step(self, target: str | None) -> dict[str, Any]:
        # "*" faults the per-session routes; a list route is faulted by its name only
        for key in (target, "*") if target is not None else ():
            if key in self.always:
                return self.always[key]
            script = self.scripts.get(key)
            if script:
                return script.popleft()
        return {}

    async def _serve(self, scope: Scope, send: Send, session_id: str | None, route: str, answer: Any) -> None:
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        step = self._next_step(session_id if session_id is not None else route)
        if not step and session_id is not None:
            step = self._next_step(route)
        record: dict[str, Any] = {"route": route, "session_id": session_id, "at": time.time()}
        self.calls.append(record)
        await asyncio.sleep(self.delay + float(step.get("delay", 0)))
        if step.get("drop"):
            record["status"] = None
            raise ConnectionAbortedError("stand-in dropped the connection on purpose")
        if self.api_key is not None and headers.get("authorization") != f"Bearer {self.api_key}":
            record["status"] = 401
            return await _json(send, 401, {"detail": "invalid_api_key"})
        status = int(step.get("status", 200))
        if "body" in step:
            doc = step["body"]
        elif step.get("endless"):
            doc = {route: [self._made_up(route) for _ in range(100)]}
        elif status == 200:
            status, doc = answer()
        else:
            doc = {"detail": step.get("detail", f"status_{status}")}
        record["status"] = status
        if "huge" in step:
            return await _huge(send, route, int(step["huge"]))
        extra = {"retry-after": str(step["retry_after"])} if "retry_after" in step and status != 200 else {}
        if "drip" in step:
            return await _drip(send, status, doc, float(step["drip"]))
        return await _json(send, status, doc, extra)

    def _made_up(self, route: str) -> dict[str, Any]:
        """A new resource of a list route, created now (``endless`` pages)."""
        kind = next(k for k, (_, key) in _RESOURCES.items() if key == route)
        self._made += 1
        rid = f"{kind[:3]}_endless_{self._made:012d}"
        return {_RESOURCES[kind][0]: rid, "status": "open", "created_at": datetime.now(UTC).isoformat()}

    def _line_items(self, session_id: str) -> tuple[int, Any]:
        items = self.sessions.get(session_id) or made_up_line_items(session_id)
        return 200, {"line_items": items, "test_mode": True}

    def _get(self, session_id: str) -> tuple[int, Any]:
        known = self.resources["checkout_session"].get(session_id)
        if known is None:
            return 404, {"detail": "not_found"}
        return 200, {"checkout_session": known[1]}

    def _one(self, kind: str, rid: str) -> tuple[int, Any]:
        known = self.resources[kind].get(rid)
        if known is None:
            return 404, {"detail": "not_found"}
        return 200, {kind: known[1]}

    def _ordered(self, kind: str) -> list[dict[str, Any]]:
        """Newest first, by creation time then id, as Flex lists."""
        cached = self._sorted[kind]
        if cached is None:
            id_field = _RESOURCES[kind][0]
            objects = [obj for _, obj in self.resources[kind].values()]
            cached = sorted(objects, key=lambda o: (_micros(o.get("created_at")), o[id_field]), reverse=True)
            self._sorted[kind] = cached
        return cached

    def _list(self, kind: str, query: dict[str, str]) -> tuple[int, Any]:
        id_field, key = _RESOURCES[kind]
        limit_text = query.get("limit", "10")
        if not limit_text.isdigit() or not 1 <= int(limit_text) <= 100:
            return 422, {"detail": [{"loc": ["query", "limit"], "msg": "limit must be 1-100", "type": "value_error"}]}
        items = self._ordered(kind)
        session = query.get("checkout_session")
        if session is not None:
            items = [o for o in items if self._session_of(kind, o) == session]
        if query.get("payment_intent") is not None:
            items = [o for o in items if o.get("payment_intent_id") == query["payment_intent"]]
        if query.get("subscription") is not None:
            items = [o for o in items if _id(o.get("subscription"), "subscription_id") == query["subscription"]]
        if kind == "subscription" and query.get("status") is not None:
            items = [o for o in items if o.get("status") == query["status"]]
        after = query.get("starting_after")
        if after is not None:
            at = next((i for i, o in enumerate(items) if o.get(id_field) == after), None)
            if at is None:
                return 404, {"detail": "starting_after_not_found"}
            items = items[at + 1 :]
        return 200, {key: items[: int(limit_text)]}

    def _session_of(self, kind: str, obj: dict[str, Any]) -> str | None:
        """The session a payment intent or refund belongs to (the session lists its intents)."""
        if kind == "checkout_session":
            return obj.get("checkout_session_id")
        if self._intent_sessions is None:
            self._intent_sessions = {
                intent: session_id
                for session_id, (_, session) in self.resources["checkout_session"].items()
                for intent in session.get("payment_intents") or []
                if isinstance(intent, str)
            }
        return self._intent_sessions.get(obj.get("payment_intent_id") or "")


async def _json(send: Send, status: int, doc: Any, extra: dict[str, str] | None = None) -> None:
    payload = json.dumps(doc).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    headers += [(k.encode(), v.encode()) for k, v in (extra or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


async def _drip(send: Send, status: int, doc: Any, every: float) -> None:
    """The answer one byte at a time, ``every`` seconds apart (a reply that never quite stalls)."""
    payload = json.dumps(doc).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    for i in range(len(payload)):
        await send({"type": "http.response.body", "body": payload[i : i + 1], "more_body": True})
        await asyncio.sleep(every)
    await send({"type": "http.response.body", "body": b""})


async def _huge(send: Send, key: str, size: int) -> None:
    """A valid JSON answer of about ``size`` bytes, streamed in 1 MiB chunks with no length given."""
    head, tail = f'{{"{key}": [], "padding": "'.encode(), b'"}'
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": head, "more_body": True})
    left, chunk = max(0, size - len(head) - len(tail)), b"x" * (1 << 20)
    while left > 0:
        await send({"type": "http.response.body", "body": chunk[: min(left, len(chunk))], "more_body": True})
        left -= len(chunk)
    await send({"type": "http.response.body", "body": tail})
