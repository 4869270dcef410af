"""Chat turns queued per session: one turn of a session in flight, other sessions never wait for it.

A dialogue turn reads the session's state, may wait seconds for the teacher,
then writes the state back. Two turns of one session answered at once would
both start from the same state and the second would overwrite (or be refused
as stale against) the first. A lock per session would fix the order but park a
worker on it, and with a few workers one chatty session would stall all
others. So turns wait here instead: a session is *ready* when it has queued
turns and none in flight; workers take the oldest ready session's next turn
and call :meth:`SessionQueue.done` when it is applied, which makes the session
ready again if more turns wait.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Hashable
from typing import Generic, TypeVar

__all__ = ["SessionQueue"]

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")


class SessionQueue(Generic[K, T]):
    """FIFO per key, fair across keys; ``maxsize`` bounds all waiting items together."""

    def __init__(self, maxsize: int) -> None:
        if maxsize < 1:
            raise ValueError("maxsize must be >= 1")
        self._max = maxsize
        self._waiting: dict[K, deque[T]] = {}  # a key is present while it has items or one in flight
        self._ready: asyncio.Queue[K] = asyncio.Queue()
        self._size = 0
        self._space = asyncio.Condition()
        self.max_waiting_per_key = 0

    def qsize(self) -> int:
        return self._size

    def in_flight_or_waiting(self, key: K) -> bool:
        return key in self._waiting

    async def put(self, key: K, item: T) -> None:
        """Queue ``item`` behind the key's earlier items (waits while the queue is full)."""
        async with self._space:
            await self._space.wait_for(lambda: self._size < self._max)
            self._size += 1
        q = self._waiting.get(key)
        if q is None:
            self._waiting[key] = deque([item])
            self._ready.put_nowait(key)
        else:
            q.append(item)
            self.max_waiting_per_key = max(self.max_waiting_per_key, len(q))

    async def get(self) -> tuple[K, T]:
        """The next item of the oldest ready key; that key is in flight until :meth:`done`."""
        key = await self._ready.get()
        item = self._waiting[key].popleft()
        async with self._space:
            self._size -= 1
            self._space.notify()
        return key, item

    def done(self, key: K) -> None:
        """The key's in-flight item is finished: its next item (if any) becomes ready."""
        q = self._waiting.get(key)
        if q is None:
            raise KeyError(key)
        if q:
            self._ready.put_nowait(key)
        else:
            del self._waiting[key]
