"""Every row of the contract's webhook table, over real HTTP against the installed server."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import asyncpg
import httpx
import pytest

from ledger.settings import decode_secret
from tests.e2e.conftest import MAX_BYTES, TOLERANCE
from tests.support import OTHER_SECRET, SECRET, RunningServer, flex_event, signed_headers


async def _counts(dsn: str) -> tuple[int, int]:
    conn = await asyncpg.connect(dsn)
    try:
        return (
            await conn.fetchval("SELECT count(*) FROM events"),
            await conn.fetchval("SELECT count(*) FROM quarantine"),
        )
    finally:
        await conn.close()


def counts(dsn: str) -> tuple[int, int]:
    import asyncio

    return asyncio.run(_counts(dsn))


def post(server: RunningServer, content: bytes | Iterator[bytes], headers: Mapping[str, str | bytes]) -> httpx.Response:
    # the cases send str and raw bytes values alike, as httpx does with them at run time
    return httpx.post(server.url + "/webhooks/flex", content=content, headers=cast(Any, headers), timeout=30)


def raw_signed(body: bytes, secret: str = SECRET, msg_id: str = "msg_raw") -> dict[str, str]:
    """Signing bytes that are not text (the svix library signs str only)."""
    ts = str(int(time.time()))
    mac = hmac.new(decode_secret(secret), f"{msg_id}.{ts}.".encode() + body, hashlib.sha256).digest()
    return {"svix-id": msg_id, "svix-timestamp": ts, "svix-signature": "v1," + base64.b64encode(mac).decode()}


# --- accepted ------------------------------------------------------------------------------


@pytest.mark.parametrize("prefix", ["svix", "webhook"])
def test_verified_new_event_is_appended_before_the_reply(server: RunningServer, module_db: str, prefix: str) -> None:
    body = flex_event()
    reply = server.post_event(body, prefix=prefix)
    assert reply.status_code == 200, reply.text
    doc = reply.json()
    assert doc["status"] == "accepted"
    assert isinstance(doc["position"], int)
    page = server.get("/v1/events", params={"after": doc["position"] - 1, "limit": 1}).json()
    assert page["data"][0]["event_id"] == json.loads(body)["event_id"]
    assert page["data"][0]["payload"] == json.loads(body)


def test_the_framework_route_behaves_the_same(server: RunningServer) -> None:
    """`/webhooks/flex/` is served by the framework route, `/webhooks/flex` by the fast path."""
    body = flex_event()
    headers = signed_headers(body)
    via_framework = httpx.post(server.url + "/webhooks/flex/", content=body, headers=headers)
    assert via_framework.status_code == 200
    assert via_framework.json()["status"] == "accepted"
    again = httpx.post(server.url + "/webhooks/flex", content=body, headers=headers)
    assert again.json() == {"status": "duplicate", "position": via_framework.json()["position"]}
    bad = httpx.post(server.url + "/webhooks/flex/", content=body, headers={})
    assert bad.status_code == 401
    assert bad.json()["error"]["code"] == "missing_header"
    big = b"x" * (MAX_BYTES + 1)
    assert httpx.post(server.url + "/webhooks/flex/", content=big, headers=raw_signed(big)).status_code == 413


def test_legacy_flex_headers_with_bare_signature(server: RunningServer) -> None:
    body = flex_event()
    headers = signed_headers(body)
    legacy = {
        "flex-event-id": headers["svix-id"],
        "flex-timestamp": headers["svix-timestamp"],
        "flex-signature": headers["svix-signature"].split(",", 1)[1],
    }
    assert post(server, body.encode(), legacy).json()["status"] == "accepted"


def test_either_configured_secret_is_accepted(server: RunningServer) -> None:
    assert server.post_event(flex_event(), secret=OTHER_SECRET).status_code == 200
    assert server.post_event(flex_event(), secret=SECRET).status_code == 200


def test_redelivery_with_a_different_body_is_a_duplicate_of_the_first(server: RunningServer) -> None:
    event_id = f"evt_{uuid.uuid4().hex}"
    first = server.post_event(flex_event("customer.created", event_id)).json()
    again = server.post_event(flex_event("customer.deleted", event_id, note={"x": 1})).json()
    assert again == {"status": "duplicate", "position": first["position"]}
    stored = server.get("/v1/events", params={"after": first["position"] - 1, "limit": 1}).json()["data"][0]
    assert stored["event_type"] == "customer.created"


def test_unknown_type_and_unexpected_shape_are_accepted(server: RunningServer) -> None:
    body = json.dumps({"event_id": f"evt_{uuid.uuid4().hex}", "event_type": "something.new", "object": [1, "x"]})
    assert server.post_event(body).json()["status"] == "accepted"


def test_tolerance_setting_is_honoured(server: RunningServer) -> None:
    inside = datetime.now(UTC) - timedelta(seconds=TOLERANCE - 60)
    outside = datetime.now(UTC) - timedelta(seconds=TOLERANCE + 60)
    assert server.post_event(flex_event(), timestamp=inside).status_code == 200
    assert server.post_event(flex_event(), timestamp=outside).status_code == 401


# --- rejected: nothing stored --------------------------------------------------------------


def _good() -> tuple[str, dict[str, str]]:
    body = flex_event()
    return body, signed_headers(body)


def _without(name: str) -> tuple[bytes, dict[str, str]]:
    body, headers = _good()
    del headers[name]
    return body.encode(), headers


def _with(**changes: str | bytes) -> tuple[bytes, dict[str, str | bytes]]:
    body, headers = _good()
    changed: dict[str, str | bytes] = {**headers, **{k.replace("_", "-"): v for k, v in changes.items()}}
    return body.encode(), changed


def _signed_at(offset: int) -> tuple[bytes, dict[str, str]]:
    body = flex_event()
    return body.encode(), signed_headers(body, timestamp=datetime.now(UTC) + timedelta(seconds=offset))


def _tampered_body() -> tuple[bytes, dict[str, str]]:
    body, headers = _good()
    return body.replace("customer", "customeR", 1).encode(), headers


def _other_id() -> tuple[bytes, dict[str, str]]:
    body, headers = _good()
    headers["svix-id"] = "msg_someone_else"
    return body.encode(), headers


def _wrong_secret() -> tuple[bytes, dict[str, str]]:
    body = flex_event()
    return body.encode(), signed_headers(body, secret="whsec_" + base64.b64encode(b"x" * 24).decode())


def _legacy_wrong() -> tuple[bytes, dict[str, str]]:
    body = flex_event()
    return body.encode(), {"flex-event-id": "e", "flex-timestamp": str(int(time.time())), "flex-signature": "AAAA"}


def _signed_body(body: bytes) -> tuple[bytes, dict[str, str]]:
    return body, raw_signed(body, msg_id=f"msg_{uuid.uuid4().hex}")


UNAUTHORISED: dict[str, Callable[[], tuple[bytes, Mapping[str, str | bytes]]]] = {
    "no headers": lambda: (flex_event().encode(), {}),
    "no id": lambda: _without("svix-id"),
    "no timestamp": lambda: _without("svix-timestamp"),
    "no signature": lambda: _without("svix-signature"),
    "empty signature": lambda: _with(svix_signature=""),
    "empty v1 entries": lambda: _with(svix_signature="v1, v1,"),
    "empty id": lambda: _with(svix_id=""),
    "unversioned signature": lambda: _with(svix_signature="c2lnbmF0dXJl"),
    "v1 not base64": lambda: _with(svix_signature="v1,!!!not-base64!!!"),
    "v2 only": lambda: _with(svix_signature="v2,c2lnbmF0dXJl"),
    "non-ascii signature": lambda: _with(svix_signature="v1,\xe9\xe9".encode("latin-1")),
    "timestamp words": lambda: _with(svix_timestamp="hello"),
    "timestamp negative": lambda: _with(svix_timestamp="-5"),
    "timestamp float": lambda: _with(svix_timestamp="1.7e9"),
    "timestamp enormous": lambda: _with(svix_timestamp="9" * 40),
    "timestamp too old": lambda: _signed_at(-(TOLERANCE + 30)),
    "timestamp in the future": lambda: _signed_at(TOLERANCE + 30),
    "body changed": _tampered_body,
    "id changed": _other_id,
    "unknown secret": _wrong_secret,
    "legacy wrong signature": _legacy_wrong,
    "signature header too long": lambda: _with(svix_signature="v1," + "A" * 8000),
    "tab inside the id": lambda: _with(svix_id="msg\tid"),
    "non-ascii timestamp": lambda: _with(svix_timestamp="\u0661\u0662".encode()),
}

UNPROCESSABLE = {
    "empty body": lambda: _signed_body(b""),
    "not utf-8": lambda: _signed_body(b'{"event_id":"\xff\xfe","event_type":"x"}'),
    "not json": lambda: _signed_body(b"event_id=1&event_type=x"),
    "json array": lambda: _signed_body(b'[{"event_id":"a","event_type":"b"}]'),
    "json string": lambda: _signed_body(b'"hello"'),
    "no event_id": lambda: _signed_body(b'{"event_type":"customer.created"}'),
    "numeric event_id": lambda: _signed_body(b'{"event_id":42,"event_type":"customer.created"}'),
    "empty event_type": lambda: _signed_body(b'{"event_id":"e-empty-type","event_type":""}'),
    "nul character": lambda: _signed_body(b'{"event_id":"e-nul","event_type":"x","a":"\\u0000"}'),
    "deeply nested": lambda: _signed_body(
        b'{"event_id":"e-deep","event_type":"x","a":' + b"[" * 3000 + b"]" * 3000 + b"}"
    ),
    "truncated json": lambda: _signed_body(b'{"event_id":"e-trunc","event_type":"x"'),
}


@pytest.mark.parametrize("case", list(UNAUTHORISED), ids=list(UNAUTHORISED))
def test_unverifiable_deliveries_get_401_and_store_nothing(server: RunningServer, module_db: str, case: str) -> None:
    body, headers = UNAUTHORISED[case]()
    before = counts(module_db)
    reply = post(server, body, headers)
    assert reply.status_code == 401, reply.text
    assert set(reply.json()["error"]) == {"code", "message"}
    assert counts(module_db) == before


@pytest.mark.parametrize("case", list(UNPROCESSABLE), ids=list(UNPROCESSABLE))
def test_verified_unusable_bodies_get_422_and_are_quarantined(server: RunningServer, module_db: str, case: str) -> None:
    body, headers = UNPROCESSABLE[case]()
    events_before, quarantined_before = counts(module_db)
    reply = post(server, body, headers)
    assert reply.status_code == 422, reply.text
    assert reply.json()["error"]["code"] == "unprocessable_event"
    assert counts(module_db) == (events_before, quarantined_before + 1)


def test_quarantine_keeps_the_body_and_headers(server: RunningServer, module_db: str) -> None:
    body, headers = _signed_body(b"[1, 2, 3]")
    assert post(server, body, headers).status_code == 422

    async def last() -> asyncpg.Record:
        conn = await asyncpg.connect(module_db)
        try:
            return await conn.fetchrow(
                "SELECT body, headers::text AS h, message_id FROM quarantine ORDER BY id DESC LIMIT 1"
            )
        finally:
            await conn.close()

    import asyncio

    row = asyncio.run(last())
    assert bytes(row["body"]) == body
    assert row["message_id"] == headers["svix-id"]
    assert json.loads(row["h"])["svix-signature"] == headers["svix-signature"]


def test_oversized_body_with_content_length_is_413(server: RunningServer, module_db: str) -> None:
    body = json.dumps({"event_id": "big", "event_type": "x", "pad": "x" * MAX_BYTES}).encode()
    before = counts(module_db)
    reply = post(server, body, raw_signed(body))
    assert reply.status_code == 413
    assert reply.json()["error"]["code"] == "payload_too_large"
    assert counts(module_db) == before


def test_oversized_chunked_body_is_413(server: RunningServer, module_db: str) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(40):
            yield b"x" * 4096

    before = counts(module_db)
    reply = post(server, chunks(), raw_signed(b"irrelevant"))
    assert reply.status_code == 413
    assert counts(module_db) == before


def test_body_at_the_limit_is_accepted(server: RunningServer) -> None:
    head = json.dumps({"event_id": f"evt_{uuid.uuid4().hex}", "event_type": "x", "pad": ""})
    body = head[:-2] + "y" * (MAX_BYTES - len(head)) + '"}'
    assert len(body) == MAX_BYTES
    assert post(server, body.encode(), raw_signed(body.encode(), msg_id="m-limit")).status_code == 200


def test_never_500_and_wrong_method_is_405(server: RunningServer) -> None:
    assert httpx.get(server.url + "/webhooks/flex").status_code == 405
    assert httpx.get(server.url + "/healthz").json() == {"status": "ok"}
    spec = httpx.get(server.url + "/schema/openapi.json").json()
    assert "/webhooks/flex" in spec["paths"]
    assert "/v1/events" in spec["paths"]
    assert spec["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
