"""What litestar's routing costs the webhook endpoint, in process (no server, no database).

    python -m bench.dispatch [--requests 20000] [--rounds 3]

Sends signed-looking deliveries with a wrong signature (answered 401 after verification, so no
database is needed) to the app as ``ledger serve`` builds it, where litestar routes them to the
raw ASGI handler, and to the same handler called from a wrapper in front of the framework (the
baseline): the difference is the routing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import time
from typing import Any

from api.app import create_app
from api.state import AppState
from api.webhooks import PATH, serve_webhook
from bench.common import SECRET
from ledger.settings import load_settings

BODY = b'{"event_id":"evt_1","event_type":"checkout.session.completed"}'


class InFront:
    """The baseline: the handler called before the framework sees the request."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] == PATH:
            await serve_webhook(AppState(self.app.state), scope, receive, send)
            return
        await self.app(scope, receive, send)


def _scope() -> dict[str, Any]:
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(BODY)).encode()),
        (b"svix-id", b"msg_1"),
        (b"svix-timestamp", str(int(time.time())).encode()),
        (b"svix-signature", b"v1,AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="),
    ]
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": PATH,
        "raw_path": PATH.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 8000),
        "state": {},
    }


async def _microseconds_per_request(app: Any, n: int) -> float:
    statuses: set[int] = set()

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": BODY, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses.add(message["status"])

    started = time.perf_counter()
    for _ in range(n):
        await app(_scope(), receive, send)
    elapsed = time.perf_counter() - started
    assert statuses == {401}, statuses
    return elapsed / n * 1e6


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    logging.disable(logging.CRITICAL)
    settings = load_settings({"LEDGER_WEBHOOK_SECRETS": SECRET}, require_secrets=True)
    outer = create_app(settings, api_tokens=("bench",), workers=False)
    litestar_app = outer
    while hasattr(litestar_app, "app"):  # the middlewares in front of litestar
        litestar_app = litestar_app.app
    routed, in_front = [], []
    for _ in range(args.rounds):
        routed.append(await _microseconds_per_request(litestar_app, args.requests))
        in_front.append(await _microseconds_per_request(InFront(litestar_app), args.requests))
    print(
        f"routed by litestar: {min(routed):.1f} µs/request; in front of it: {min(in_front):.1f} µs/request; "
        f"routing costs {min(routed) - min(in_front):.1f} µs/request "
        f"(best of {args.rounds} rounds of {args.requests:,})"
    )
    print(json.dumps({"bench": "dispatch", "routed_us": round(min(routed), 1), "in_front_us": round(min(in_front), 1)}))


if __name__ == "__main__":
    asyncio.run(main())
