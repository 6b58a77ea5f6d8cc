"""Verification of Flex webhooks as Svix / Standard Webhooks sign them.

Signed content is ``{id}.{timestamp}.{raw body}``; the signature is HMAC-SHA256 with the
secret's decoded key, base64-encoded, sent as a space-separated list of ``v1,<base64>``
entries (Flex's legacy ``flex-signature`` header holds bare base64). Any entry matching any
configured secret is enough. Every failure raises ``SignatureError``; nothing else escapes.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from collections.abc import Callable, Mapping, Sequence

import msgspec

from ledger.errors import SignatureError

__all__ = ["SignatureHeaders", "find_headers", "sign", "verify"]

# (id, timestamp, signature) header names, first found wins.
HEADER_SETS: tuple[tuple[str, str, str], ...] = (
    ("webhook-id", "webhook-timestamp", "webhook-signature"),
    ("svix-id", "svix-timestamp", "svix-signature"),
    ("flex-event-id", "flex-timestamp", "flex-signature"),
)
_LEGACY_SIGNATURE = "flex-signature"
_MAX_HEADER_LENGTH = 4096


class SignatureHeaders(msgspec.Struct, frozen=True, kw_only=True):
    """The three signature headers exactly as received, and the names they came under."""

    message_id: str
    timestamp: str
    signature: str
    names: tuple[str, str, str]

    def as_record(self) -> dict[str, str]:
        return dict(zip(self.names, (self.message_id, self.timestamp, self.signature), strict=True))


def _first(headers: Mapping[str, str], index: int) -> tuple[str, str] | None:
    for names in HEADER_SETS:
        value = headers.get(names[index])
        if value is not None:
            return names[index], value
    return None


def find_headers(headers: Mapping[str, str]) -> SignatureHeaders:
    """Picks the id, timestamp and signature headers (lower-case names expected)."""
    found = [_first(headers, i) for i in range(3)]
    missing = [("id", "timestamp", "signature")[i] for i, f in enumerate(found) if f is None or not f[1].strip()]
    if missing:
        raise SignatureError("missing_header", f"missing webhook {', '.join(missing)} header")
    (id_name, msg_id), (ts_name, ts), (sig_name, sig) = found  # type: ignore[misc]
    if max(len(msg_id), len(ts), len(sig)) > _MAX_HEADER_LENGTH:
        raise SignatureError("malformed_header", "a webhook signature header is too long")
    return SignatureHeaders(message_id=msg_id, timestamp=ts, signature=sig, names=(id_name, ts_name, sig_name))


def _parse_timestamp(raw: str) -> int:
    raw = raw.strip()
    if not raw.isascii() or not raw.isdigit() or len(raw) > 12:
        raise SignatureError("malformed_timestamp", "webhook timestamp is not a whole number of seconds")
    return int(raw)


def _candidates(header: SignatureHeaders) -> list[bytes]:
    """The decoded v1 signatures in the header; entries of other versions are skipped."""
    entries: list[str]
    if header.names[2] == _LEGACY_SIGNATURE and "," not in header.signature:
        entries = [header.signature.strip()]
    else:
        entries = [part.split(",", 1)[1] for part in header.signature.split() if part.startswith("v1,")]
    decoded = []
    for entry in entries:
        try:
            decoded.append(base64.b64decode(entry, validate=True))
        except (binascii.Error, ValueError):
            continue
    if not decoded:
        raise SignatureError("malformed_signature", "webhook signature header holds no v1 signature")
    return decoded


def sign(key: bytes, message_id: str, timestamp: str, body: bytes) -> bytes:
    """The raw HMAC-SHA256 of ``{id}.{timestamp}.{body}``."""
    return hmac.new(key, f"{message_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()


def verify(
    keys: Sequence[bytes],
    headers: Mapping[str, str],
    body: bytes,
    *,
    tolerance: int = 300,
    now: Callable[[], float] = time.time,
) -> SignatureHeaders:
    """Verifies a delivery over its exact raw bytes. Returns the headers it used."""
    found = find_headers(headers)
    if not found.message_id.isprintable():
        raise SignatureError("malformed_header", "webhook id header holds control characters")
    timestamp = _parse_timestamp(found.timestamp)
    if abs(now() - timestamp) > tolerance:
        raise SignatureError("timestamp_out_of_tolerance", "webhook timestamp is outside the allowed tolerance")
    candidates = _candidates(found)
    matched = False
    for key in keys:
        expected = sign(key, found.message_id, found.timestamp.strip(), body)
        for candidate in candidates:
            # Check every pair so the time taken says nothing about which one matched.
            matched |= hmac.compare_digest(expected, candidate)
    if not matched:
        raise SignatureError("signature_mismatch", "no webhook signature matches a configured secret")
    return found
