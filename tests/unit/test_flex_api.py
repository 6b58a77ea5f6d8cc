"""The Flex API client against httpx.MockTransport: retries, Retry-After, permanent errors, parsing."""

from __future__ import annotations

import email.utils
import time

import httpx
import pytest

from projections.line_items import UnusableLineItems, parse_line_items
from reactors.flex_client import FlexClient, PermanentFlexError, TransientFlexError, retry_after_seconds

ITEM = {
    "line_item_id": "li_1",
    "quantity": 2,
    "amount_total": 1000,
    "description": "Thermometer",
    "price": {"price_id": "fprice_1", "product": {"product_id": "fprod_1", "upc_code": "0123"}},
}


def client(
    responses: list[httpx.Response | Exception], sleeps: list[float], **kwargs: object
) -> tuple[FlexClient, list[httpx.Request]]:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        step = responses.pop(0)
        if isinstance(step, Exception):
            raise step
        return step

    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)

    c = FlexClient("https://flex.test/v1", "fsk_test_x", transport=httpx.MockTransport(handler), sleep=sleep, **kwargs)  # type: ignore[arg-type]
    return c, seen


async def test_success_sends_the_key_and_parses() -> None:
    c, seen = client([httpx.Response(200, json={"line_items": [ITEM], "extra": 1})], [])
    raw, items = await c.line_items("fcs_1")
    await c.aclose()
    assert seen[0].url.path == "/v1/checkout/sessions/fcs_1/line_items"
    assert seen[0].headers["authorization"] == "Bearer fsk_test_x"
    assert raw == [ITEM]
    assert (items[0].price_id, items[0].product_id, items[0].upc_code, items[0].quantity) == (
        "fprice_1",
        "fprod_1",
        "0123",
        2,
    )


@pytest.mark.parametrize(
    "failure",
    [
        httpx.Response(429, headers={"retry-after": "3"}),
        httpx.Response(500),
        httpx.Response(503),
        httpx.ReadTimeout("slow"),
        httpx.ConnectError("refused"),
    ],
    ids=["429", "500", "503", "timeout", "refused"],
)
async def test_transient_failures_are_retried(failure: httpx.Response | Exception) -> None:
    sleeps: list[float] = []
    c, seen = client([failure, httpx.Response(200, json={"line_items": [ITEM]})], sleeps)
    _, items = await c.line_items("fcs_1")
    await c.aclose()
    assert len(seen) == 2
    assert len(items) == 1
    if isinstance(failure, httpx.Response) and failure.status_code == 429:
        assert sleeps == [3.0], "Retry-After is honoured"


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422])
async def test_permanent_failures_are_not_retried(status: int) -> None:
    c, seen = client([httpx.Response(status, json={"detail": "not_found"})], [])
    with pytest.raises(PermanentFlexError) as info:
        await c.line_items("fcs_1")
    await c.aclose()
    assert info.value.status == status
    assert len(seen) == 1


async def test_gives_up_after_its_attempts_with_backoff() -> None:
    sleeps: list[float] = []
    c, seen = client([httpx.Response(502)] * 3, sleeps, attempts=3, backoff_base=1.0, backoff_cap=8.0)
    with pytest.raises(TransientFlexError):
        await c.line_items("fcs_1")
    await c.aclose()
    assert len(seen) == 3
    assert len(sleeps) == 2
    assert all(0 <= s <= 1.0 * 2**i for i, s in enumerate(sleeps, start=1)), "full jitter, exponential cap"


def test_retry_after_as_seconds_or_http_date() -> None:
    assert retry_after_seconds("7") == 7.0
    when = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 25 <= (retry_after_seconds(when) or 0) <= 31
    assert retry_after_seconds("soon") is None
    assert retry_after_seconds(None) is None


def test_permissive_parsing() -> None:
    body = {
        "line_items": [
            {"line_item_id": "a", "quantity": 1, "price": "fprice_a", "product": "fprod_a", "new_field": [1]},
            {"line_item_id": "b", "quantity": 3, "price": {"price_id": "fprice_b", "product": "fprod_b"}},
            {"id": "c", "quantity": 1, "price": {}},
            "not an item",
        ],
        "has_more": False,
    }
    _, items = parse_line_items(body)
    assert [(i.line_item_id, i.price_id, i.product_id) for i in items] == [
        ("a", "fprice_a", "fprod_a"),
        ("b", "fprice_b", "fprod_b"),
        ("c", None, None),
    ]
    with pytest.raises(UnusableLineItems):
        parse_line_items({"line_items": [{"line_item_id": "x", "quantity": "two"}]})
    with pytest.raises(UnusableLineItems):
        parse_line_items({"items": []})


@pytest.mark.parametrize("body", [{"line_items": [{"line_item_id": "x", "quantity": "two"}]}, {"items": []}])
async def test_an_unusable_reply_is_a_permanent_failure(body: dict[str, object]) -> None:
    sleeps: list[float] = []
    c, seen = client([httpx.Response(200, json=body)], sleeps)
    with pytest.raises(PermanentFlexError):
        await c.line_items("fcs_1")
    await c.aclose()
    assert len(seen) == 1
    assert sleeps == []


async def test_a_post_is_attempted_once_even_when_flex_answers_503() -> None:
    # Flex documents no idempotency key: a POST retried after a lost answer could create twice
    c, seen = client([httpx.Response(503), httpx.Response(200, json={"webhook": {}})], [])
    with pytest.raises(TransientFlexError):
        await c.post("/webhooks", {"webhook": {"url": "https://x.test/h", "events": ["a.b"]}})
    await c.aclose()
    assert len(seen) == 1
    assert seen[0].method == "POST"
    assert seen[0].headers["content-type"] == "application/json"
    assert b'"url":"https://x.test/h"' in seen[0].content.replace(b" ", b"")


async def test_a_delete_is_retried_like_a_read_and_an_empty_answer_is_none() -> None:
    sleeps: list[float] = []
    c, seen = client([httpx.Response(503), httpx.Response(204)], sleeps)
    assert await c.delete("/webhooks/wh_1") is None
    await c.aclose()
    assert [r.method for r in seen] == ["DELETE", "DELETE"]
    assert len(sleeps) == 1
