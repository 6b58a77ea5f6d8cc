"""Reading consistently across projections: every /v1 reply says through which log position its
projections had applied (Ledger-Position), and that position, passed as min_position to any other
route, gives a reply at least as fresh: an order seen fulfilled, then its sale in the inventory."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.test_fulfillment import complete
from tests.support import API_TOKEN, StandIn, flex_event, fulfillment_env, run_server, run_standin


@pytest.fixture
def standin() -> Iterator[StandIn]:
    with run_standin() as s:
        yield s


def test_an_order_seen_fulfilled_then_its_sale_in_the_inventory_at_least_as_fresh(
    db_dsn: str, tmp_path: Path, standin: StandIn
) -> None:
    # the inventory runner lets commits gather for a while: without the token it would lag the order
    env = {"LEDGER_DATABASE_URL": db_dsn, **fulfillment_env(standin.api_base), "LEDGER_RECONCILE_INTERVAL": "0"}
    with run_server(tmp_path, env) as server:
        for seed in range(3001, 3009):
            c, _ = complete(server, seed=seed)
            deadline = time.monotonic() + 60
            while True:
                reply = server.get(f"/v1/orders/{c.session_id}")
                if reply.status_code == 200 and reply.json()["fulfillment"]["status"] == "fulfilled":
                    break
                assert time.monotonic() < deadline, reply.text
                time.sleep(0.01)
            token = int(reply.headers["ledger-position"])
            assert token >= reply.json()["position"]
            feed = server.get("/v1/inventory/adjustments", params={"limit": 1000, "min_position": token})
            assert feed.headers["ledger-projection-fresh"] == "true"
            assert int(feed.headers["ledger-position"]) >= token
            sold = [a for a in feed.json()["data"] if a["checkout_session_id"] == c.session_id]
            assert sold, "the sale is in the feed read with the order's position"


@pytest.mark.parametrize(
    "path",
    [
        "/v1/orders",
        "/v1/orders/fcs_nope",
        "/v1/orders/fcs_nope/events",
        "/v1/customers/fcus_nope",
        "/v1/subscriptions/sub_nope",
        "/v1/inventory",
        "/v1/inventory/adjustments",
        "/v1/events",
        "/v1/projections",
        "/v1/reconcile",
    ],
)
def test_every_read_reply_carries_its_position_and_takes_one(server, path: str) -> None:  # type: ignore[no-untyped-def]
    head = server.post_event(flex_event()).json()["position"]
    reply = server.get(path, params={"min_position": head})
    assert "ledger-position" in reply.headers, reply.headers
    assert reply.headers["ledger-projection-fresh"] == "true"
    assert int(reply.headers["ledger-position"]) >= head
    plain = server.get(path)
    assert int(plain.headers["ledger-position"]) >= 0
    schema = httpx.get(server.url + "/schema/openapi.json", headers={"authorization": f"Bearer {API_TOKEN}"}).json()
    template = next(
        p
        for p in schema["paths"]
        if p.replace("{checkout_session_id}", "fcs_nope")
        .replace("{customer_id}", "fcus_nope")
        .replace("{subscription_id}", "sub_nope")
        == path
    )
    assert "Ledger-Position" in schema["paths"][template]["get"]["responses"]["200"]["headers"]
