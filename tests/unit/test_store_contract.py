"""The followers' store contract (tests/store_contract.py) on the in-memory store: milliseconds."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest

from projections.memory import InMemoryFollowerStore
from tests.store_contract import CASES, Stores


def _stores() -> Stores:
    store = InMemoryFollowerStore()

    async def move(name: str, position: int) -> None:
        store.bump_generation(name, position)

    return Stores(append=store.log.append, followers=store, move_generation=move)


@pytest.mark.parametrize("case", CASES, ids=[c.__name__ for c in CASES])
async def test_in_memory(case: Callable[[Stores], Awaitable[None]]) -> None:
    await case(_stores())
