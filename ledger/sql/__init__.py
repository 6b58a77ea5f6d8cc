"""SQL lives in ``.sql`` files next to its owner; this is the one loader of them.

Each package with SQL has a ``sql/`` folder whose ``__init__`` loads its files once with
``Queries.of_package``. A query starts at a ``-- name: x`` line and runs to the next one; its
parameters are ``$n``. Names are unique within a package.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from importlib import resources

__all__ = ["Queries", "log_queries"]

_NAME = re.compile(r"^-- name: *(\w+) *$", flags=re.MULTILINE)


class Queries:
    """Named queries, read as attributes (``log_queries.append``)."""

    def __init__(self, text: str, *, source: str = "<sql>") -> None:
        self._sql: dict[str, str] = {}
        self.add(text, source=source)

    @classmethod
    def of_package(cls, package: str) -> Queries:
        """Every ``.sql`` file of ``package``, in name order."""
        queries = cls("")
        for entry in sorted(resources.files(package).iterdir(), key=lambda e: e.name):
            if entry.name.endswith(".sql"):
                queries.add(entry.read_text(encoding="utf-8"), source=f"{package}/{entry.name}")
        return queries

    def add(self, text: str, *, source: str) -> None:
        parts = _NAME.split(text)
        for name, body in zip(parts[1::2], parts[2::2], strict=True):
            if name in self._sql:
                raise ValueError(f"{source}: the query name {name!r} is used twice")
            self._sql[name] = body.strip()

    def __getattr__(self, name: str) -> str:
        try:
            return self._sql[name]
        except KeyError:
            raise AttributeError(name) from None

    def __iter__(self) -> Iterator[tuple[str, str]]:
        """(name, sql) of every query: for tools that check them all (tests/integration/test_plans.py)."""
        return iter(self._sql.items())


log_queries = Queries.of_package(__name__)
