"""The log in memory: the same contract as ``ledger_append`` and ``read_batch`` over PostgreSQL,
for tests of what follows the log (the follower skeleton, its policies) that need no database.

* ``append`` gives contiguous positions from 1 in the batch's order, and answers an ``event_id``
  already logged (earlier, or earlier in the same batch) with its first position, as a duplicate;
* ``read_batch`` gives the events at ``after < position <= upto`` whose type matches one of the
  ``LIKE`` patterns, in log order, as records with ``position``, ``event_type`` and ``raw_body``.

It keeps no hash chain (``ledger verify`` is PostgreSQL's) and no quarantine.
``tests/store_contract.py`` runs the same cases against both.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

from ledger.log import AppendResult, NewEvent

__all__ = ["InMemoryLog"]


@lru_cache(maxsize=256)
def _like(pattern: str) -> re.Pattern[str]:
    """A SQL ``LIKE`` pattern (``%``, ``_``, backslash escapes) as a regular expression."""
    out, escaped = [], False
    for char in pattern:
        if escaped:
            out.append(re.escape(char))
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == "%":
            out.append(".*")
        elif char == "_":
            out.append(".")
        else:
            out.append(re.escape(char))
    return re.compile("".join(out), re.DOTALL)


class InMemoryLog:
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []  # position i + 1 at index i
        self._positions: dict[str, int] = {}

    async def append(self, events: Sequence[NewEvent]) -> list[AppendResult]:
        results = []
        for event in events:
            known = self._positions.get(event.event_id)
            if known is not None:
                results.append(AppendResult(known, True))
                continue
            position = len(self.events) + 1
            self.events.append(
                {
                    "position": position,
                    "event_id": event.event_id,
                    "event_type": event.event_type,
                    "raw_body": event.raw_body,
                }
            )
            self._positions[event.event_id] = position
            results.append(AppendResult(position, False))
        return results

    async def head(self) -> int:
        return len(self.events)

    async def read_batch(self, after: int, upto: int, patterns: Sequence[str]) -> list[dict[str, Any]]:
        compiled = [_like(p) for p in patterns]
        return [
            e for e in self.events[max(after, 0) : max(upto, 0)] if any(c.fullmatch(e["event_type"]) for c in compiled)
        ]
