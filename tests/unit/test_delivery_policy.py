"""Outbound delivery's pure parts: the schedule, signatures (checked by the official Standard
Webhooks library), which destination takes which message, message ids, and the address guard."""

from __future__ import annotations

import asyncio
import base64
import socket
from typing import Any

import pytest
from standardwebhooks.webhooks import Webhook

from ledger.errors import ConfigError
from ledger.settings import DEFAULT_DELIVERY_SCHEDULE, decode_secret, load_settings
from reactors.delivery import DestinationPolicy, next_delay, signature
from reactors.destinations import new_secret
from reactors.messages import Message, message_id, wanted
from reactors.outbound_guard import AddressRefused, resolve

SCHEDULE = (0.0, 5.0, 300.0, 1800.0)


def test_the_schedule_then_failed() -> None:
    assert [next_delay(n, SCHEDULE) for n in range(1, 5)] == [5.0, 300.0, 1800.0, None]


def test_retry_after_is_honoured_up_to_the_largest_delay() -> None:
    assert next_delay(1, SCHEDULE, retry_after=60) == 60
    assert next_delay(1, SCHEDULE, retry_after=10**9) == 1800.0
    assert next_delay(2, SCHEDULE, retry_after=1) == 300.0  # never sooner than the schedule
    assert next_delay(4, SCHEDULE, retry_after=1) is None


def test_the_default_schedule_is_standard_webhooks_and_settings_parse() -> None:
    assert load_settings({}).delivery_schedule == DEFAULT_DELIVERY_SCHEDULE
    assert load_settings({"LEDGER_DELIVERY_SCHEDULE": "0,5s,5m,2h"}).delivery_schedule == (0, 5, 300, 7200)
    with pytest.raises(ConfigError, match="LEDGER_DELIVERY_SCHEDULE"):
        load_settings({"LEDGER_DELIVERY_SCHEDULE": "0,soon"})
    with pytest.raises(ConfigError, match="LEDGER_DELIVERY_ALLOW_PRIVATE"):
        load_settings({"LEDGER_DELIVERY_ALLOW_PRIVATE": "maybe"})


def test_signatures_verify_with_the_official_library_one_or_two_secrets() -> None:
    old, new = new_secret(), new_secret()
    body = b'{"type":"inventory.adjusted","position":7}'
    import time

    now = int(time.time())
    headers = {
        "webhook-id": "msg_7_x",
        "webhook-timestamp": str(now),
        "webhook-signature": signature([decode_secret(new), decode_secret(old)], "msg_7_x", now, body),
    }
    for secret in (old, new):
        assert Webhook(secret).verify(body, headers) == {"type": "inventory.adjusted", "position": 7}
    assert len(base64.b64decode(new.removeprefix("whsec_"))) == 32
    from standardwebhooks.webhooks import WebhookVerificationError

    with pytest.raises(WebhookVerificationError):
        Webhook(new_secret()).verify(body, headers)


def test_types_and_modes_pick_the_messages() -> None:
    assert wanted("order.updated", [])
    assert wanted("order.updated", ["order.*"])
    assert not wanted("inventory.adjusted", ["order.*"])
    assert wanted("inventory.adjusted", ["order.updated", "inventory.adjusted"])
    live = Message(message_id="m", type="order.updated", position=1, test_mode=False, body=b"")
    test = Message(message_id="m", type="order.updated", position=1, test_mode=True, body=b"")
    assert DestinationPolicy("d", [], "live", 0).takes(live)
    assert not DestinationPolicy("d", [], "live", 0).takes(test)
    assert DestinationPolicy("d", [], "test", 0).takes(test)
    assert not DestinationPolicy("d", [], "test", 0).takes(live)
    assert DestinationPolicy("d", [], "all", 0).takes(live)
    assert DestinationPolicy("d", [], "all", 0).takes(test)


def test_a_message_id_depends_on_position_type_and_object_only() -> None:
    assert message_id(5, "order.updated", "fcs_1") == message_id(5, "order.updated", "fcs_1")
    assert (
        len(
            {
                message_id(5, "order.updated", "fcs_1"),
                message_id(6, "order.updated", "fcs_1"),
                message_id(5, "inventory.adjusted", "fcs_1"),
                message_id(5, "order.updated", "fcs_2"),
            }
        )
        == 4
    )


def _dns(answers: dict[str, list[str]]) -> Any:
    async def getaddrinfo(host: str, port: int, **_: Any) -> list[Any]:
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port)) for a in answers[host]]

    return getaddrinfo


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.0.0.5",
        "192.168.1.1",
        "172.16.3.4",
        "169.254.169.254",
        "::1",
        "fe80::1",
        "224.0.0.1",
        "0.0.0.0",  # noqa: S104 (an address refused, not bound)
        "100.64.0.1",
        "::ffff:127.0.0.1",
    ],
)
def test_private_addresses_are_refused_after_dns_unless_allowed(monkeypatch: pytest.MonkeyPatch, address: str) -> None:
    loop = asyncio.new_event_loop()
    try:
        monkeypatch.setattr(loop, "getaddrinfo", _dns({"hooks.example.com": [address]}))
        asyncio.set_event_loop(loop)
        with pytest.raises(AddressRefused, match="LEDGER_DELIVERY_ALLOW_PRIVATE"):
            loop.run_until_complete(resolve("https://hooks.example.com/x", allow_private=False))
        allowed = loop.run_until_complete(resolve("https://hooks.example.com/x", allow_private=True))
        assert allowed.address == address
    finally:
        asyncio.set_event_loop(None)
        loop.close()


def test_a_name_that_rebinds_to_a_private_address_is_refused_on_the_next_attempt(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    loop = asyncio.new_event_loop()
    answers = {"hooks.example.com": ["93.184.216.34"]}
    try:
        monkeypatch.setattr(loop, "getaddrinfo", _dns(answers))
        target = loop.run_until_complete(resolve("https://hooks.example.com:8443/x", allow_private=False))
        assert (target.address, target.host, target.port) == ("93.184.216.34", "hooks.example.com", 8443)
        answers["hooks.example.com"] = ["93.184.216.34", "127.0.0.1"]  # one private answer is enough
        with pytest.raises(AddressRefused):
            loop.run_until_complete(resolve("https://hooks.example.com:8443/x", allow_private=False))
    finally:
        loop.close()


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:9/x", "http://[::1]/x", "https://10.0.0.1/", "http://169.254.169.254/"]
)
def test_an_address_in_the_url_is_checked_without_dns(url: str) -> None:
    with pytest.raises(AddressRefused, match="LEDGER_DELIVERY_ALLOW_PRIVATE"):
        asyncio.run(resolve(url, allow_private=False))
    assert asyncio.run(resolve("http://93.184.216.34:8080/x", allow_private=False)).address == "93.184.216.34"
