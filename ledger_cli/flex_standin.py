"""A local stand-in for the Flex API's Line Items endpoint, with scriptable faults.

Run it with ``ledger flex-standin --port 8100`` and point ``FLEX_API_BASE_URL`` at
``http://127.0.0.1:8100/v1``. It serves ``GET /v1/checkout/sessions/{id}/line_items``:

* line items registered with ``POST /_standin/sessions/{id}`` (body ``{"line_items": [...]}``),
  else 1-3 items made up deterministically from the session id;
* ``Authorization: Bearer <key>`` checked when started with ``--api-key`` (401 otherwise);
* faults scripted with ``POST /_standin/faults`` and body
  ``{"session_id": "fcs_..." or "*", "script": [{"status": 429, "retry_after": "1"}, {"delay": 3}, ...]}``
  (consumed one per call, then normal answers) or ``{"session_id": ..., "always": {"status": 404}}``
  (until ``DELETE /_standin/faults``); a step may also be ``{"drop": true}`` (close the connection);
* every call is recorded: ``GET /_standin/calls`` gives ``{"count": N, "calls": [...]}``.

A plain ASGI app, so tests and the demo run it exactly as the service runs.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import time
from collections import deque
from typing import Any

__all__ = ["FlexStandIn", "made_up_line_items"]

_LINE_ITEMS = re.compile(r"^(?:/v1)?/checkout/sessions/([^/]+)/line_items/?$")
_SESSION = re.compile(r"^/_standin/sessions/([^/]+)$")

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


class FlexStandIn:
    def __init__(self, *, api_key: str | None = None, delay: float = 0.0) -> None:
        self.api_key = api_key
        self.delay = delay
        self.sessions: dict[str, list[dict[str, Any]]] = {}
        self.scripts: dict[str, deque[dict[str, Any]]] = {}
        self.always: dict[str, dict[str, Any]] = {}
        self.calls: list[dict[str, Any]] = []

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
        method, path = scope["method"], scope["path"]
        if path == "/_standin/calls" and method == "GET":
            return await _json(send, 200, {"count": len(self.calls), "calls": self.calls})
        if path == "/_standin/faults" and method == "POST":
            spec = json.loads(body or b"{}")
            target = spec.get("session_id", "*")
            if "always" in spec:
                self.always[target] = spec["always"]
            self.scripts.setdefault(target, deque()).extend(spec.get("script", []))
            return await _json(send, 200, {"ok": True})
        if path == "/_standin/faults" and method == "DELETE":
            self.scripts.clear()
            self.always.clear()
            return await _json(send, 200, {"ok": True})
        match = _SESSION.match(path)
        if match and method == "POST":
            self.sessions[match.group(1)] = json.loads(body or b"{}").get("line_items", [])
            return await _json(send, 200, {"ok": True})
        match = _LINE_ITEMS.match(path)
        if match and method == "GET":
            return await self._line_items(scope, send, match.group(1))
        return await _json(send, 404, {"detail": "not_found"})

    def _next_step(self, session_id: str) -> dict[str, Any]:
        for target in (session_id, "*"):
            if target in self.always:
                return self.always[target]
            script = self.scripts.get(target)
            if script:
                return script.popleft()
        return {}

    async def _line_items(self, scope: Scope, send: Send, session_id: str) -> None:
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        step = self._next_step(session_id)
        record: dict[str, Any] = {"session_id": session_id, "at": time.time()}
        self.calls.append(record)
        await asyncio.sleep(self.delay + float(step.get("delay", 0)))
        if step.get("drop"):
            record["status"] = None
            raise ConnectionAbortedError("stand-in dropped the connection on purpose")
        if self.api_key is not None and headers.get("authorization") != f"Bearer {self.api_key}":
            record["status"] = 401
            return await _json(send, 401, {"detail": "invalid_api_key"})
        status = int(step.get("status", 200))
        record["status"] = status
        if status != 200:
            extra = {"retry-after": str(step["retry_after"])} if "retry_after" in step else {}
            return await _json(send, status, {"detail": step.get("detail", f"status_{status}")}, extra)
        items = self.sessions.get(session_id) or made_up_line_items(session_id)
        return await _json(send, 200, {"line_items": items, "test_mode": True})


async def _json(send: Send, status: int, doc: Any, extra: dict[str, str] | None = None) -> None:
    payload = json.dumps(doc).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    headers += [(k.encode(), v.encode()) for k, v in (extra or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})
