"""Mergeable entity state: the reason projections give the same answer for any delivery order.

Every fact an event contributes is merged with a join that is commutative, associative and
idempotent, so replaying any permutation of the same events, with any number of duplicates and
in any batching, gives the same state:

* ``offer(field, value, key)``: the value with the largest ``key`` wins (last-writer-wins, where
  "last" is defined by the event's own content, never by arrival: ``newest_first_key``); an
  explicit null offered with ``clears`` wins like a value and clears the field;
* ``add(name, item)``: set union;
* ``earliest(name, when)`` / ``latest(name, when)``: min / max;
* ``flag(name)``: once true, true.

The whole state is kept as one JSON document per entity, next to a few indexed columns; this
module is the only one that knows its layout (``loads``/``dumps``, ``merge``, ``facts``).
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import msgspec

__all__ = ["Key", "Mergeable"]

Key = list[Any]  # compared as lists: the same types at each place (see projections.fields.newest_first_key)

_decode = msgspec.json.Decoder()
_encode = msgspec.json.Encoder()


class _Facts(msgspec.Struct):
    """A stored state's facts: its merge keys are skipped while decoding (most of its bytes)."""

    v: dict[str, Any] = {}
    s: dict[str, list[str]] = {}
    m: dict[str, Any] = {}


_decode_facts = msgspec.json.Decoder(_Facts)
_NO_KEYS: Mapping[str, Any] = MappingProxyType({})  # a state read for its facts: offering raises


class Mergeable:
    """One entity's state as a JSON document of mergeable facts."""

    __slots__ = ("_doc",)

    def __init__(self, doc: dict[str, Any] | None = None) -> None:
        self._doc: dict[str, Any] = doc if doc is not None else {"v": {}, "k": {}, "s": {}, "m": {}}

    @property
    def doc(self) -> dict[str, Any]:
        return self._doc

    @classmethod
    def loads(cls, text: str | bytes) -> Mergeable:
        """A state as stored (the ``state`` column's JSON)."""
        return cls(_decode.decode(text))

    @classmethod
    def for_reading(cls, text: str | bytes) -> Mergeable:
        """A stored state to read (a document, a payment status), never to merge or store: decoded
        without its merge keys, three times faster than ``loads``; ``offer`` on it raises."""
        facts = _decode_facts.decode(text)
        return cls({"v": facts.v, "k": _NO_KEYS, "s": facts.s, "m": facts.m})

    def dumps(self) -> str:
        """The state as stored."""
        return _encode.encode(self._doc).decode()

    def copy(self) -> Mergeable:
        return Mergeable.loads(_encode.encode(self._doc))

    def facts(self) -> tuple[Any, ...]:
        """What the state shows (values, sets, marks), without why (the merge keys)."""
        return (self._doc["v"], self._doc["s"], self._doc["m"])

    def merge(self, other: Mergeable) -> Mergeable:
        """Joins ``other`` into this state (commutative, associative, idempotent); returns it."""
        doc = other.doc
        for fld, value in doc["v"].items():
            self.offer(fld, value, doc["k"][fld], clears=True)
        for name, items in doc["s"].items():
            for item in items:
                self.add(name, item)
        for mark, value in doc["m"].items():
            kind, _, name = mark.partition(":")
            if kind == "min":
                self.earliest(name, value)
            elif kind == "max":
                self.latest(name, value)
            elif kind == "flag" and value:
                self.flag(name)
        return self

    # last-writer-wins fields ---------------------------------------------------------------
    def offer(self, field: str, value: Any, key: Key, *, clears: bool = False) -> None:
        """``value`` for ``field`` if ``key`` is the largest offered; ``None`` is "not said" unless
        ``clears`` (the snapshot said null), when it takes the field's place like any value."""
        if value is None and not clears:
            return
        keys = self._doc["k"]
        current = keys.get(field)
        if current is None or key > current:
            keys[field] = key
            self._doc["v"][field] = value

    def get(self, field: str, default: Any = None) -> Any:
        return self._doc["v"].get(field, default)

    # sets -----------------------------------------------------------------------------------
    def add(self, name: str, item: str | None) -> None:
        if item is None:
            return
        items: list[str] = self._doc["s"].setdefault(name, [])
        if item not in items:
            items.append(item)
            items.sort()

    def items(self, name: str) -> list[str]:
        return list(self._doc["s"].get(name, []))

    # min / max / flags ---------------------------------------------------------------------
    def earliest(self, name: str, value: int | None) -> None:
        if value is None:
            return
        marks = self._doc["m"]
        current = marks.get("min:" + name)
        if current is None or value < current:
            marks["min:" + name] = value

    def latest(self, name: str, value: int | None) -> None:
        if value is None:
            return
        marks = self._doc["m"]
        current = marks.get("max:" + name)
        if current is None or value > current:
            marks["max:" + name] = value

    def flag(self, name: str) -> None:
        self._doc["m"]["flag:" + name] = True

    def min_of(self, name: str) -> int | None:
        value = self._doc["m"].get("min:" + name)
        return int(value) if value is not None else None

    def max_of(self, name: str) -> int | None:
        value = self._doc["m"].get("max:" + name)
        return int(value) if value is not None else None

    def flagged(self, name: str) -> bool:
        return bool(self._doc["m"].get("flag:" + name, False))
