"""Verification against the official Standard Webhooks / Svix vectors, with an injected clock."""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from typing import Any

import pytest
from svix.webhooks import Webhook

from ledger.errors import ConfigError, SignatureError
from ledger.settings import decode_secret
from ledger.signing import verify

VECTOR_A: dict[str, Any] = {
    "secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
    "id": "msg_p5jXN8AQM9LWM0D4loKWxJek",
    "ts": "1614265330",
    "body": b'{"test": 2432232314}',
    "sig": "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
}
VECTOR_B: dict[str, Any] = {
    "secret": "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD",
    "id": "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk",
    "ts": "1649367553",
    "body": b'{"email":"test@example.com","username":"test_user"}',
    "sig": "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=",
}


def _headers(v: dict[str, Any], sig: str | None = None, prefix: str = "webhook") -> dict[str, str]:
    return {f"{prefix}-id": v["id"], f"{prefix}-timestamp": v["ts"], f"{prefix}-signature": sig or v["sig"]}


def _check(v: dict[str, Any], sig: str | None = None, *, now_offset: float = 0, prefix: str = "webhook") -> None:
    verify(
        [decode_secret(v["secret"])],
        _headers(v, sig, prefix),
        v["body"],
        now=lambda: int(v["ts"]) + now_offset,
    )


@pytest.mark.parametrize("vector", [VECTOR_A, VECTOR_B], ids=["A", "B"])
def test_official_vectors_verify(vector: dict[str, Any]) -> None:
    _check(vector)
    _check(vector, prefix="svix")


def test_vector_a_with_last_character_changed_is_rejected() -> None:
    with pytest.raises(SignatureError) as info:
        _check(VECTOR_A, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OA=")
    assert info.value.code == "signature_mismatch"


def test_vector_b_wrong_signature_is_rejected() -> None:
    with pytest.raises(SignatureError):
        _check(VECTOR_B, "v1,R3PTzyfHASBKHH98a7yexTwaJ4yNIcGhFQc1yuN+BPU=")


def test_one_valid_entry_among_decoys_is_enough() -> None:
    decoys = "v1,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc= v2,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc="
    _check(VECTOR_A, f"{decoys} {VECTOR_A['sig']}")


def test_decoys_alone_fail() -> None:
    decoys = (
        "v1,tFtCZ5RDCPxzWQRWXWPgrCgE2frDBe9gjpbWQxnVfsQ= v1,Mm7xgUVICxZfQ3bgf0h0Dof65L/IFx+PnZvnDWPCX6Q= "
        "v1,9DfC1c3eeOrXB6w/5dIDydLNQaEyww5KalE5jLBZucE="
    )
    with pytest.raises(SignatureError):
        _check(VECTOR_B, decoys)


@pytest.mark.parametrize("offset", [301, -301])
def test_timestamp_outside_tolerance_fails(offset: int) -> None:
    with pytest.raises(SignatureError) as info:
        _check(VECTOR_A, now_offset=offset)
    assert info.value.code == "timestamp_out_of_tolerance"


@pytest.mark.parametrize("offset", [300, -300])
def test_timestamp_at_the_tolerance_passes(offset: int) -> None:
    _check(VECTOR_A, now_offset=offset)


@pytest.mark.parametrize("missing", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_missing_header_fails(missing: str) -> None:
    headers = _headers(VECTOR_A)
    del headers[missing]
    with pytest.raises(SignatureError) as info:
        verify([decode_secret(VECTOR_A["secret"])], headers, VECTOR_A["body"], now=lambda: 1614265330)
    assert info.value.code == "missing_header"


def test_non_numeric_timestamp_fails() -> None:
    headers = _headers(VECTOR_A) | {"webhook-timestamp": "hello"}
    with pytest.raises(SignatureError) as info:
        verify([decode_secret(VECTOR_A["secret"])], headers, VECTOR_A["body"], now=lambda: 1614265330)
    assert info.value.code == "malformed_timestamp"


def test_webhook_headers_win_over_svix_headers() -> None:
    headers = _headers(VECTOR_A) | {"svix-id": "other", "svix-timestamp": "1", "svix-signature": "v1,AAAA"}
    verify([decode_secret(VECTOR_A["secret"])], headers, VECTOR_A["body"], now=lambda: 1614265330)


def test_legacy_flex_signature_is_bare_base64() -> None:
    bare = VECTOR_A["sig"].split(",", 1)[1]
    headers = {"flex-event-id": VECTOR_A["id"], "flex-timestamp": VECTOR_A["ts"], "flex-signature": bare}
    verify([decode_secret(VECTOR_A["secret"])], headers, VECTOR_A["body"], now=lambda: 1614265330)


def test_any_of_several_secrets_may_match() -> None:
    keys = [decode_secret(VECTOR_B["secret"]), decode_secret(VECTOR_A["secret"])]
    verify(keys, _headers(VECTOR_A), VECTOR_A["body"], now=lambda: 1614265330)


def test_fwhsec_prefix_and_unpadded_base64_decode() -> None:
    key = decode_secret(VECTOR_A["secret"])
    assert decode_secret("fwhsec_" + VECTOR_A["secret"].removeprefix("whsec_")) == key
    # the docs' example secret: base64 of a UUID string, no padding
    example = "fwhsec_" + base64.b64encode(b"ccad7306-412b-11ee-be56-0242ac120002").decode().rstrip("=")
    assert decode_secret(example) == b"ccad7306-412b-11ee-be56-0242ac120002"


@pytest.mark.parametrize("secret", ["whsec_", "whsec_!!!!", "whsec_abc$"])
def test_invalid_secret_is_a_config_error(secret: str) -> None:
    with pytest.raises(ConfigError):
        decode_secret(secret)


def test_agrees_with_the_official_signer_on_any_body() -> None:
    ts = datetime(2026, 1, 1, tzinfo=UTC)
    body = '{"event_id":"évt","event_type":"x","note":"ünïcode ✓"}'
    sig = Webhook(VECTOR_B["secret"]).sign("msg_x", ts, body)
    headers = {"svix-id": "msg_x", "svix-timestamp": str(int(ts.timestamp())), "svix-signature": sig}
    verify([decode_secret(VECTOR_B["secret"])], headers, body.encode(), now=ts.timestamp)
    with pytest.raises(SignatureError):
        verify([decode_secret(VECTOR_B["secret"])], headers, body.encode() + b" ", now=ts.timestamp)
