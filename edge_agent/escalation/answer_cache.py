"""Edge cache of teacher answers: TTL plus LRU, keyed by normalized text.

Why: chat traffic repeats ("turn on the lights"), and an utterance the student
is unsure about today it will be unsure about tomorrow until the next
distillation. Answering repeats from the cache saves the round trip, the
teacher's compute and escalation budget, and keeps answers stable while the
cloud is away. The TTL bounds staleness (a newer teacher may answer
differently); the size bound keeps memory fixed on a small device. The key is
:func:`edge_agent.preprocess.text.cache_key`, so texts that normalize alike
share one entry.

The clock is injectable (monotonic by default: wall-clock jumps must not
expire or resurrect entries) so tests control time without sleeping.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from edge_agent.preprocess.text import cache_key

__all__ = ["AnswerCache", "CacheStats"]

V = TypeVar("V")


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0  # includes expired lookups
    expired: int = 0
    evicted: int = 0  # dropped by the size bound


class AnswerCache(Generic[V]):
    def __init__(
        self,
        max_entries: int = 10_000,
        ttl_s: float = 3600.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_entries < 0:
            raise ValueError("max_entries must be >= 0")
        if ttl_s <= 0:
            raise ValueError("ttl_s must be > 0")
        self.max_entries = max_entries
        self.ttl_s = ttl_s
        self._clock = clock
        self.stats = CacheStats()
        # key -> (expires_at, value); order = recency of use, oldest first.
        self._data: OrderedDict[str, tuple[float, V]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._data)

    def get(self, text: str) -> V | None:
        """The cached answer for ``text`` (any spelling that normalizes alike), or None."""
        key = cache_key(text)
        entry = self._data.get(key)
        if entry is None:
            self.stats.misses += 1
            return None
        expires, value = entry
        if self._clock() >= expires:
            del self._data[key]
            self.stats.expired += 1
            self.stats.misses += 1
            return None
        self._data.move_to_end(key)
        self.stats.hits += 1
        return value

    def put(self, text: str, value: V) -> None:
        if self.max_entries == 0:
            return
        key = cache_key(text)
        self._data[key] = (self._clock() + self.ttl_s, value)
        self._data.move_to_end(key)
        while len(self._data) > self.max_entries:
            self._evict_one()

    def clear(self) -> None:
        self._data.clear()

    def _evict_one(self) -> None:
        _key, (expires, _) = self._data.popitem(last=False)
        if self._clock() >= expires:
            self.stats.expired += 1
        else:
            self.stats.evicted += 1
