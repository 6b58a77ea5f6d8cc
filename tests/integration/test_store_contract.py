"""The followers' store contract (tests/store_contract.py) on PostgreSQL: the store that runs."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import asyncpg
import pytest

from ledger.log import EventLog
from projections.follower import PostgresFollowerStore
from tests.store_contract import CASES, Stores


@pytest.mark.parametrize("case", CASES, ids=[c.__name__ for c in CASES])
async def test_postgres(pool: asyncpg.Pool, case: Callable[[Stores], Awaitable[None]]) -> None:
    async with pool.acquire() as conn:

        async def move(name: str, position: int) -> None:
            await pool.execute(
                "UPDATE projection_state SET position = $2, generation = generation + 1 WHERE name = $1", name, position
            )

        await case(Stores(append=EventLog(pool).append, followers=PostgresFollowerStore(conn), move_generation=move))
