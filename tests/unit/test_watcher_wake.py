"""Who the checkpoint watcher wakes: the log's followers when it grows, a read-model follower when
one of its projections commits a batch, and everyone after a reconnect."""

from __future__ import annotations

from ledger.log import NOTIFY_CHANNEL
from projections.freshness import CHECKPOINT_CHANNEL, CheckpointWatcher


def _watcher() -> CheckpointWatcher:
    return CheckpointWatcher("postgresql://unused")


async def test_the_log_growing_wakes_the_log_followers_only() -> None:
    watcher = _watcher()
    runner, delivery = watcher.subscribe(), watcher.subscribe(after=["orders", "customers"])
    watcher._on_notify(None, 0, NOTIFY_CHANNEL, "12")
    assert runner.is_set()
    assert not delivery.is_set()
    assert watcher.head == 12


async def test_a_projection_s_batch_wakes_who_follows_it() -> None:
    watcher = _watcher()
    runner, delivery = watcher.subscribe(), watcher.subscribe(after=["orders", "customers"])
    watcher._on_notify(None, 0, CHECKPOINT_CHANNEL, "inventory:5")
    assert not delivery.is_set(), "inventory is not one delivery reads"
    watcher._on_notify(None, 0, CHECKPOINT_CHANNEL, "orders:5")
    assert delivery.is_set()
    assert not runner.is_set()
    assert watcher.positions["orders"] == 5


async def test_a_reconnect_wakes_everyone() -> None:
    watcher = _watcher()
    runner, delivery = watcher.subscribe(), watcher.subscribe(after=["orders"])
    watcher._wake_subscribers("*")
    assert runner.is_set()
    assert delivery.is_set()
