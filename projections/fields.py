"""Permissive reading of Flex objects inside logged events.

Flex adds fields without notice and documents several shapes for the same thing (an id or an
expanded object; epoch integers or ISO strings), so every accessor here tolerates what it does
not expect and returns ``None`` rather than failing.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

__all__ = [
    "as_bool",
    "as_int",
    "as_str",
    "dict_of",
    "epoch_micros",
    "event_micros",
    "id_of",
    "iso",
    "newest_first_key",
    "nulled",
    "resource",
    "ulid_millis",
]

_BIGINT = 2**63 - 1
_MILLISECONDS_FROM = 100_000_000_000
_MAX_MICROS = 253_402_300_799_000_000  # 9999-12-31T23:59:59Z: beyond it is not a time


def resource(payload: dict[str, Any], name: str, id_field: str) -> dict[str, Any] | None:
    """``object.<name>`` of an event (or ``object`` itself when it already is the resource)."""
    obj = payload.get("object")
    if not isinstance(obj, dict):
        return None
    inner = obj.get(name)
    if isinstance(inner, dict):
        return inner
    if id_field in obj:
        return obj
    return None


def dict_of(value: Any) -> dict[str, Any]:
    """``value`` when it is a JSON object, else an empty one."""
    return value if isinstance(value, dict) else {}


def as_str(value: Any) -> str | None:
    if isinstance(value, str) and value.strip():
        return value
    return None


def as_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int) and -_BIGINT <= value <= _BIGINT:
        return value
    if isinstance(value, float) and value.is_integer() and abs(value) <= _BIGINT:
        return int(value)
    return None


def as_bool(value: Any) -> bool | None:
    return value if isinstance(value, bool) else None


def id_of(value: Any, id_field: str) -> str | None:
    """An object's id, whether Flex sent the id itself or the expanded object."""
    if isinstance(value, dict):
        return as_str(value.get(id_field)) or as_str(value.get("id"))
    return as_str(value)


def epoch_micros(value: Any) -> int | None:
    """Microseconds since the epoch from epoch seconds/milliseconds or an ISO-8601 string."""
    number = as_int(value)
    if number is not None:
        micros = number * 1000 if abs(number) >= _MILLISECONDS_FROM else number * 1_000_000
        return micros if abs(micros) <= _MAX_MICROS else None
    text = as_str(value)
    if text is None:
        return None
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    try:
        return int(parsed.timestamp() * 1_000_000)
    except (OverflowError, OSError, ValueError):
        return None


def event_micros(payload: dict[str, Any]) -> int:
    """The event's own time (``event_dt``), 0 when Flex did not send a usable one."""
    micros = epoch_micros(payload.get("event_dt"))
    return micros if micros is not None else 0


_CROCKFORD = {c: i for i, c in enumerate("0123456789ABCDEFGHJKMNPQRSTVWXYZ")}


def ulid_millis(value: Any) -> int:
    """The millisecond time in a ULID-shaped id (``evt_01J…``, or the bare 26 characters); 0 if none."""
    text = as_str(value)
    if text is None:
        return 0
    body = text.rpartition("_")[2].upper()
    if len(body) != 26 or body[0] > "7" or any(c not in _CROCKFORD for c in body):
        return 0
    millis = 0
    for c in body[:10]:
        millis = millis * 32 + _CROCKFORD[c]
    return millis


def newest_first_key(payload: dict[str, Any], *, final: bool = False) -> list[Any]:
    """How snapshots are ordered, whatever order they arrived in: a state that can never be left
    (``final``) first, then the event's own time, then the millisecond time of a ULID-shaped
    ``event_id``, then the ``event_id`` itself. Never the log position (that is arrival order)."""
    event_id = payload.get("event_id")
    event_id = event_id if isinstance(event_id, str) else ""
    return [1 if final else 0, event_micros(payload), ulid_millis(event_id), event_id]


def nulled(obj: dict[str, Any], field: str) -> bool:
    """Whether ``obj`` says ``field`` is null (which clears it), as opposed to not saying."""
    return field in obj and obj[field] is None


def iso(micros: int | None) -> str | None:
    if micros is None:
        return None
    try:
        moment = datetime.fromtimestamp(micros / 1_000_000, UTC)
    except (OverflowError, OSError, ValueError):
        return None
    return moment.isoformat().replace("+00:00", "Z")
