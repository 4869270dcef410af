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


class PerDeviceCap:
    """At most ``burst`` answers per device in any ``window_s``, and ``global_per_s`` for all devices.

    So a broken (or hostile) device that sends junk in a loop gets a few answers
    telling it why, not one per message; and many device ids at once cannot turn
    the agent into an amplifier either. Memory: at most ``max_devices`` entries,
    the longest-idle dropped first.
    """

    def __init__(self, burst: int = 5, window_s: float = 10.0, global_per_s: float = 100.0,
                 max_devices: int = 10_000) -> None:
        self.burst, self.window_s, self.max_devices = burst, window_s, max_devices
        self._seen: dict[str, tuple[float, int]] = {}  # device -> (window start, answers in it)
        self._global = RateLimitedLog(global_per_s)
        self.suppressed = 0

    def allow(self, device: str, now: float) -> bool:
        start, n = self._seen.pop(device, (now, 0))
        if now - start >= self.window_s:
            start, n = now, 0
        ok = n < self.burst and self._global.allow("", now)
        self._seen[device] = (start, n + 1 if ok else n)  # re-inserted: dict order is least recent first
        if len(self._seen) > self.max_devices:
            del self._seen[next(iter(self._seen))]
        if not ok:
            self.suppressed += 1
        return ok
