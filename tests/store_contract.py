"""One contract for the followers' store, run against PostgreSQL (tests/integration) and memory
(tests/unit): appends (contiguous positions, duplicates answered with the first position), reads
after a position by type, checkpoints moved by compare-and-set, and the follower skeleton on top
(batches, a checkpoint that reaches the head, a unit that is all or nothing)."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pytest

from ledger.log import AppendResult, NewEvent
from projections.apply import BatchResult, ProjectionFailed
from projections.base import LogRow
from projections.follower import CheckpointMoved, FollowerStore, follow_once

# A follower the PostgreSQL store knows (its checkpoint row is seeded by the schema's install).
NAME = "customers"


@dataclass
class Stores:
    append: Callable[[Sequence[NewEvent]], Awaitable[list[AppendResult]]]
    followers: FollowerStore
    move_generation: Callable[[str, int], Awaitable[None]]  # what a rebuild switch does


def ev(event_id: str, event_type: str = "customer.created") -> NewEvent:
    body = json.dumps({"event_id": event_id, "event_type": event_type}).encode()
    return NewEvent(event_id=event_id, event_type=event_type, raw_body=body)


class Recording:
    """A follower policy that keeps what it was handed; ``fail`` makes it raise, ``poison`` names
    positions it reports as failed."""

    def __init__(self, patterns: list[str], *, fail: bool = False, poison: frozenset[int] = frozenset()) -> None:
        self.name = NAME
        self.patterns = patterns
        self.fail = fail
        self.poison = poison
        self.seen: list[list[int]] = []

    async def apply(self, unit: Any, rows: list[LogRow]) -> BatchResult:
        if self.fail:
            raise RuntimeError("the policy failed")
        self.seen.append([r.position for r in rows])
        failures = [ProjectionFailed(NAME, r.position, "poison") for r in rows if r.position in self.poison]
        return BatchResult(applied=len(rows) - len(failures), failures=failures)


async def appends_are_contiguous_and_duplicates_answer_the_first_position(s: Stores) -> None:
    first = await s.append([ev("a"), ev("b"), ev("a")])
    assert [(r.position, r.duplicate) for r in first] == [(1, False), (2, False), (1, True)]
    second = await s.append([ev("c"), ev("b")])
    assert [(r.position, r.duplicate) for r in second] == [(3, False), (2, True)]
    assert (await s.followers.checkpoint(NAME)).head == 3


async def reads_give_the_types_asked_after_a_position_in_log_order(s: Stores) -> None:
    await s.append([ev("a", "customer.created"), ev("b", "invoice.paid"), ev("c", "customer.updated")])
    await s.append([ev("d", "customer.deleted"), ev("e", "checkout.session.completed")])
    rows = await s.followers.read(0, 5, ["customer.%"])
    assert [(r["position"], r["event_type"]) for r in rows] == [
        (1, "customer.created"),
        (3, "customer.updated"),
        (4, "customer.deleted"),
    ]
    assert [r["position"] for r in await s.followers.read(1, 3, ["customer.%", "invoice.paid"])] == [2, 3]
    assert json.loads(bytes((await s.followers.read(4, 5, ["%"]))[0]["raw_body"]))["event_id"] == "e"


async def checkpoints_move_by_compare_and_set(s: Stores) -> None:
    await s.append([ev(f"e{i}") for i in range(4)])
    start = await s.followers.checkpoint(NAME)
    assert (start.position, start.head) == (0, 4)
    async with s.followers.unit() as unit:
        assert await s.followers.advance(unit, NAME, 0, start.generation, 2, 2, 0)
    async with s.followers.unit() as unit:
        assert not await s.followers.advance(unit, NAME, 0, start.generation, 4, 4, 0)  # not where it is
        assert not await s.followers.advance(unit, NAME, 2, start.generation + 1, 4, 2, 0)  # not its generation
    assert (await s.followers.checkpoint(NAME)).position == 2


async def the_skeleton_follows_in_batches_to_the_head(s: Stores) -> None:
    await s.append([ev(f"c{i}", "customer.created" if i % 2 else "invoice.paid") for i in range(7)])
    policy = Recording(["customer.%"])
    moved = [await follow_once(s.followers, policy, 3) for _ in range(4)]
    assert moved == [3, 3, 1, 0]
    assert policy.seen == [[2], [4, 6], []]
    assert (await s.followers.checkpoint(NAME)).position == 7


async def a_unit_is_all_or_nothing(s: Stores) -> None:
    await s.append([ev(f"u{i}") for i in range(3)])
    with pytest.raises(RuntimeError, match="the policy failed"):
        await follow_once(s.followers, Recording(["%"], fail=True), 10)
    assert (await s.followers.checkpoint(NAME)).position == 0  # nothing moved
    poisoned = Recording(["%"], poison=frozenset({2}))
    assert await follow_once(s.followers, poisoned, 10) == 3  # the rest goes on
    assert (await s.followers.checkpoint(NAME)).position == 3


async def a_checkpoint_moved_under_a_follower_is_noticed(s: Stores) -> None:
    await s.append([ev(f"m{i}") for i in range(5)])

    class Racing(Recording):
        async def apply(self, unit: Any, rows: list[LogRow]) -> BatchResult:
            await s.move_generation(NAME, 5)  # a rebuild switched meanwhile
            return await super().apply(unit, rows)

    with pytest.raises(CheckpointMoved):
        await follow_once(s.followers, Racing(["%"]), 10)
    assert (await s.followers.checkpoint(NAME)).position == 5  # the switch's word stands
    assert await follow_once(s.followers, Recording(["%"]), 10) == 0  # and the follower goes on from there


CASES = [
    appends_are_contiguous_and_duplicates_answer_the_first_position,
    reads_give_the_types_asked_after_a_position_in_log_order,
    checkpoints_move_by_compare_and_set,
    the_skeleton_follows_in_batches_to_the_head,
    a_unit_is_all_or_nothing,
    a_checkpoint_moved_under_a_follower_is_noticed,
]
