"""Give freed heap memory back to the OS after a burst (glibc ``malloc_trim``).

Why: after a flood of messages the agent's Python objects are freed, but
glibc keeps the freed pages in its heap, so the resident size of a device
daemon stays at its peak for good (measured: ~100 MB idle after a burst,
~52 MB right after start). ``malloc_trim(0)`` returns the free pages at the
top of the heap and inside it (``MADV_DONTNEED``), which brings the idle RSS
after a burst down by ~15-20 MB (``bench/bench_agent.py --only memory``). It
walks the heap (milliseconds), so it runs once when a burst ends and at most
every ``heap_trim_interval_s`` during sustained work, never while idle. Other C
libraries (musl, macOS) have no such call: then this is a no-op.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
from collections.abc import Callable

log = logging.getLogger(__name__)

__all__ = ["HeapTrimmer"]


def _load_malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        fn = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_size_t]
    fn.restype = ctypes.c_int
    return fn


class HeapTrimmer:
    """Calls ``malloc_trim(0)`` when a burst of work has just ended, and every ``interval_s`` under
    sustained work; never while idle (nothing new to give back).

    ``maybe_trim`` is called about once a second with a counter of work done
    (messages in + batches acknowledged). The C function is looked up on the
    first trim (the constructor does nothing).
    """

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self._fn: Callable[[int], int] | None = None
        self._resolved = False
        self._last_at = float("-inf")
        self._work_at_trim = 0.0
        self._work_seen = 0.0
        self.trims = 0

    @property
    def available(self) -> bool:
        if not self._resolved:
            self._fn = _load_malloc_trim()
            self._resolved = True
        return self._fn is not None

    def trim_now(self) -> bool:
        """Trim once, whatever the work counter says (start-up: imports and config parsing leave
        freed heap behind). Returns whether the C library has the call."""
        if not self.available:
            return False
        assert self._fn is not None
        self._fn(0)
        self.trims += 1
        return True

    def maybe_trim(self, now: float, work: float) -> bool:
        """Trim when the work counter stopped moving since the last call (a burst ended) or, while it
        keeps moving, when ``interval_s`` passed since the last trim. Returns whether it trimmed."""
        busy = work != self._work_seen
        self._work_seen = work
        if self.interval_s <= 0 or work == self._work_at_trim:
            return False
        if busy and now - self._last_at < self.interval_s:
            return False
        if not self.trim_now():
            return False
        self._last_at, self._work_at_trim = now, work
        return True
