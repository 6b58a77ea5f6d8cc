from __future__ import annotations

from datetime import UTC, datetime

import pytest

from ledger.envelope import event_time, parse_envelope
from ledger.errors import ConfigError, UnusableEvent
from ledger.settings import load_settings


def test_parses_the_documented_envelope() -> None:
    env = parse_envelope(b'{"event_dt":1735689600,"event_id":"e1","event_type":"x.y","object":{}}')
    assert (env.event_id, env.event_type, env.event_dt) == ("e1", "x.y", 1735689600)
    assert env.occurred_at == datetime(2025, 1, 1, tzinfo=UTC)


def test_event_dt_in_milliseconds_is_read_as_such() -> None:
    assert event_time(1735689600000)[1] == datetime(2025, 1, 1, tzinfo=UTC)
    assert event_time("soon") == (None, None)
    assert event_time(True) == (None, None)


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"   ",
        b"\xff\xfe",
        b"not json",
        b"[1,2]",
        b'"string"',
        b"{}",
        b'{"event_id":"","event_type":"x"}',
        b'{"event_id":"e","event_type":""}',
        b'{"event_id":5,"event_type":"x"}',
        b'{"event_id":"e","event_type":null}',
        b'{"event_id":"e"}',
        b'{"event_id":"e","event_type":"x","a":"\\u0000"}',
        b"[" * 5000 + b"]" * 5000,
    ],
)
def test_unusable_bodies(body: bytes) -> None:
    with pytest.raises(UnusableEvent):
        parse_envelope(body)


def test_escaped_backslash_u0000_text_is_fine() -> None:
    parse_envelope(b'{"event_id":"e","event_type":"x","a":"\\\\u0000"}')


def test_settings_defaults_and_validation() -> None:
    s = load_settings(
        {"LEDGER_WEBHOOK_SECRETS": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw, fwhsec_MDEyMzQ1Njc4OWFiY2RlZg"}
    )
    assert len(s.webhook_secrets) == 2
    assert s.webhook_tolerance == 300
    assert s.webhook_max_bytes == 1_048_576
    assert s.flex_api_base_url == "https://api.withflex.com/v1"
    with pytest.raises(ConfigError, match="LEDGER_WEBHOOK_SECRETS"):
        load_settings({}, require_secrets=True)
    with pytest.raises(ConfigError, match="LEDGER_WEBHOOK_TOLERANCE"):
        load_settings({"LEDGER_WEBHOOK_TOLERANCE": "five"})
    assert load_settings({"LEDGER_API_TOKENS": "a, b,"}).api_tokens == ("a", "b")


@pytest.mark.parametrize(
    ("secrets", "said"),
    [
        ("nonsense", "entry 1 of 1 decodes to 6 bytes, fewer than 16"),
        ("whsec_c2hvcnQ=", "entry 1 of 1 decodes to 5 bytes"),
        ("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw whsec_YWJj", "entry 2 of 2 decodes to 3 bytes"),
        (
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw,whsec_not*base64",
            "entry 2 of 2: webhook secret 'whsec_…' is not valid",
        ),
    ],
)
def test_a_secret_that_is_no_key_is_refused_by_position_never_printed(secrets: str, said: str) -> None:
    with pytest.raises(ConfigError, match=said) as info:
        load_settings({"LEDGER_WEBHOOK_SECRETS": secrets})
    assert "MfKQ9r8" not in info.value.message
    assert "nonsense" not in info.value.message
