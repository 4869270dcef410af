"""Exponential backoff with jitter: the one retry delay every reconnect and restart loop uses.

The loops that use it (the MQTT supervisor, the model download's retries, the
task supervisor's restarts, the cloud informer's re-watch) are not "call this
until it succeeds": each retries around something long-lived and forgets its
failures on *progress* (a connection that came up, a watch event that arrived),
not on a return value. So the helper is a small stateful delay source the loop
keeps, asks for the next delay and resets when it sees progress.

Why not tenacity: its model is a decorator or ``AsyncRetrying`` around one call,
with the wait reset only when that call returns. Expressing "reset when a
watch event arrives in the middle of a call that never returns" or "sleep
slowly after a permanent CONNACK refusal, fast after a dropped socket" would
mean fighting it, and the edge image would carry a dependency for about forty
lines. Written once here, the jitter modes the loops had are kept exactly:

* ``"full"``: uniform between ``initial`` and the current ceiling, spreading a
  fleet's reconnects after a broker restart as widely as possible;
* ``"equal"``: uniform between half the ceiling and the ceiling, never much
  faster than planned;
* ``"none"``: the ceiling itself (one process, nobody to collide with).

The ceiling is ``initial * 2**attempt``, capped at ``maximum`` and never below
``initial``.
"""

from __future__ import annotations

import asyncio
import random
from typing import Literal

__all__ = ["Backoff", "Jitter"]

Jitter = Literal["full", "equal", "none"]


class Backoff:
    def __init__(self, initial: float, maximum: float, jitter: Jitter = "equal") -> None:
        if initial <= 0 or maximum <= 0:
            raise ValueError("backoff delays must be positive")
        self.initial = initial
        self.maximum = maximum
        self.jitter: Jitter = jitter
        self.attempt = 0

    def ceiling(self) -> float:
        """The longest delay the next attempt may wait."""
        return max(self.initial, min(self.maximum, self.initial * 2 ** min(self.attempt, 64)))

    def next(self, *, slow: bool = False) -> float:
        """The delay before the next attempt, and count the attempt.

        ``slow`` is for a refusal retrying cannot fix soon (bad credentials): wait
        between half the maximum and the maximum whatever the attempt, never spin.
        """
        if slow:
            delay = random.uniform(self.maximum / 2, self.maximum)
        else:
            cap = self.ceiling()
            if self.jitter == "full":
                delay = random.uniform(self.initial, cap)
            elif self.jitter == "equal":
                delay = random.uniform(cap / 2, cap)
            else:
                delay = cap
        self.attempt += 1
        return delay

    async def sleep(self, *, slow: bool = False) -> float:
        """Sleep for :meth:`next` and return how long that was (for the log line)."""
        delay = self.next(slow=slow)
        await asyncio.sleep(delay)
        return delay

    def reset(self) -> None:
        """Progress was made: the next failure starts again from ``initial``."""
        self.attempt = 0
