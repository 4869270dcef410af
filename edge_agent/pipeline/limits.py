"""Caps that keep a flood of input from turning into a flood of output (uplink traffic, log lines)."""

from __future__ import annotations

from collections import deque


class MinuteCap:
    """At most ``limit`` admissions in any 60 s of the caller's clock; memory bounded by ``limit``.

    A sliding window rather than a per-minute bucket: a burst straddling a
    minute boundary still gets ``limit``, not ``2 * limit``.
    """

    def __init__(self) -> None:
        self._times: deque[float] = deque()

    def admit(self, now: float, limit: int) -> bool:
        times = self._times
        while times and (now - times[0] >= 60.0 or len(times) > limit):
            times.popleft()
        if len(times) >= limit:
            return False
        times.append(now)
        return True


class RateLimitedLog:
    """At most ``per_s`` log lines a second per reason, so a flood of junk cannot flood the journal."""

    def __init__(self, per_s: float = 5.0) -> None:
        self._per_s = per_s
        self._window: dict[str, tuple[float, int]] = {}
        self.suppressed = 0

    def allow(self, reason: str, now: float) -> bool:
        start, n = self._window.get(reason, (now, 0))
        if now - start >= 1.0:
            start, n = now, 0
        self._window[reason] = (start, n + 1)
        if n < self._per_s:
            return True
        self.suppressed += 1
        return False
