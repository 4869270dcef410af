"""The keyed work queue: dedup, one worker per key, dirty re-add, backoff, shutdown."""

from __future__ import annotations

import asyncio

import pytest

from cloud_controller.runtime.workqueue import WorkQueue


async def test_add_dedups_waiting_keys() -> None:
    q = WorkQueue()
    for key in ["a", "b", "a", "a", "c", "b"]:
        q.add(key)
    assert len(q) == 3
    assert q.metrics.adds == 3 and q.metrics.depth == 3
    got = [await q.get() for _ in range(3)]
    assert got == ["a", "b", "c"]  # FIFO of first adds
    assert q.metrics.depth == 0 and q.metrics.in_flight == 3


async def test_key_in_flight_is_not_handed_out_twice_and_dirty_readd_runs_after_done() -> None:
    q = WorkQueue()
    q.add("a")
    assert await q.get() == "a"
    q.add("a")  # re-added while processing: marked dirty, not queued
    assert len(q) == 0
    second = asyncio.create_task(q.get())
    await asyncio.sleep(0)  # let the second worker block
    assert not second.done()
    q.add("a")  # still deduplicated
    q.done("a")
    assert await asyncio.wait_for(second, 1.0) == "a"
    q.done("a")
    assert len(q) == 0 and not q.is_processing("a")


async def test_concurrent_workers_never_share_a_key() -> None:
    q = WorkQueue()
    active: set[str] = set()
    overlaps: list[str] = []
    processed: list[str] = []
    gate = asyncio.Event()

    async def worker() -> None:
        while (key := await q.get()) is not None:
            if key in active:
                overlaps.append(key)
            active.add(key)
            await asyncio.sleep(0)
            await asyncio.sleep(0)
            active.discard(key)
            processed.append(key)
            q.done(key)
            if len(processed) >= 40:
                gate.set()

    workers = [asyncio.create_task(worker()) for _ in range(4)]
    for i in range(40):
        q.add(f"k{i % 3}")  # three hot keys, re-added while being processed
        await asyncio.sleep(0)
    # Keep re-adding until enough work ran.
    while not gate.is_set():
        for i in range(3):
            q.add(f"k{i}")
        await asyncio.sleep(0)  # yield to the workers (not a wait for a condition)
    q.shutdown()
    await asyncio.wait_for(asyncio.gather(*workers), 2)
    assert overlaps == []


async def test_add_after_fires_later() -> None:
    q = WorkQueue()
    q.add_after("x", 0.05)
    assert len(q) == 0
    assert await asyncio.wait_for(q.get(), 2.0) == "x"


async def test_rate_limited_backoff_grows_caps_and_forget_resets() -> None:
    q = WorkQueue(base_delay=0.01, max_delay=0.08)
    delays = [q.when("k") for _ in range(6)]
    assert delays == pytest.approx([0.01, 0.02, 0.04, 0.08, 0.08, 0.08])
    assert q.num_requeues("k") == 6
    assert q.when("other") == pytest.approx(0.01)  # per key
    q.forget("k")
    assert q.num_requeues("k") == 0
    assert q.when("k") == pytest.approx(0.01)

    q.forget("k")
    q.add_rate_limited("k")
    assert q.metrics.retries == 1
    assert await asyncio.wait_for(q.get(), 2.0) == "k"


async def test_shutdown_wakes_waiters_and_drops_timers() -> None:
    q = WorkQueue()
    waiters = [asyncio.create_task(q.get()) for _ in range(3)]
    await asyncio.sleep(0)
    q.add_after("later", 0.01)
    q.shutdown()
    assert await asyncio.wait_for(asyncio.gather(*waiters), 1.0) == [None, None, None]
    q.add("new")
    assert len(q) == 0
    assert await q.get() is None


def test_bad_backoff_settings_are_refused() -> None:
    with pytest.raises(ValueError):
        WorkQueue(base_delay=0)
    with pytest.raises(ValueError):
        WorkQueue(base_delay=1.0, max_delay=0.5)
