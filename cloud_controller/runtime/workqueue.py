"""A keyed work queue with the semantics of client-go's rate-limited workqueue.

Why keys and not events: reconcilers are level-triggered, so ten updates of one
object while it waits collapse into one reconcile of its latest state. Why one
worker per key: two reconciles of the same object at once would race on its
status and on the things they create. Why per-key exponential backoff: one
broken object must not hot-loop while the others keep flowing.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass


@dataclass
class QueueMetrics:
    adds: int = 0        # add() calls that put a key in the queue (deduplicated ones not counted)
    retries: int = 0     # add_rate_limited() calls
    depth: int = 0       # keys waiting right now (kept current by the queue)
    in_flight: int = 0   # keys handed out and not yet done()


class WorkQueue:
    """Deduplicating FIFO of keys; a key handed out by ``get()`` is owned until ``done()``.

    - ``add(key)``: no-op if the key already waits; if the key is being processed it is
      marked dirty and queued again only when ``done(key)`` is called.
    - ``add_after(key, delay)``: ``add`` later (timers are dropped on shutdown).
    - ``add_rate_limited(key)``: ``add_after`` with a per-key delay of
      ``base_delay * 2**failures`` capped at ``max_delay``; ``forget(key)`` resets it.
    - ``get()``: waits for a key; returns None once the queue is shut down, even if keys
      still wait (a shutting-down controller takes no new work).
    """

    def __init__(self, *, base_delay: float = 0.005, max_delay: float = 60.0, name: str = "") -> None:
        if base_delay <= 0 or max_delay < base_delay:
            raise ValueError("need 0 < base_delay <= max_delay")
        self.name = name
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.metrics = QueueMetrics()
        self._queue: deque[str] = deque()
        self._dirty: set[str] = set()        # keys that need processing (waiting or re-added while in flight)
        self._processing: set[str] = set()
        self._failures: dict[str, int] = {}
        self._timers: set[asyncio.TimerHandle] = set()
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._shutting_down = False

    # --- producers ---------------------------------------------------------------------------

    def add(self, key: str) -> None:
        if self._shutting_down or key in self._dirty:
            return
        self._dirty.add(key)
        self.metrics.adds += 1
        if key in self._processing:
            return  # re-queued by done()
        self._queue.append(key)
        self._update_depth()
        self._wake_one()

    def add_after(self, key: str, delay: float) -> None:
        if self._shutting_down:
            return
        if delay <= 0:
            self.add(key)
            return
        loop = asyncio.get_running_loop()
        handle: asyncio.TimerHandle

        def fire() -> None:
            self._timers.discard(handle)
            self.add(key)

        handle = loop.call_later(delay, fire)
        self._timers.add(handle)

    def add_rate_limited(self, key: str) -> float:
        """Requeue after this key's backoff; returns the delay used."""
        delay = self.when(key)
        self.metrics.retries += 1
        self.add_after(key, delay)
        return delay

    def when(self, key: str) -> float:
        """Next backoff delay for ``key`` (and count this failure)."""
        failures = self._failures.get(key, 0)
        self._failures[key] = failures + 1
        # Cap the exponent too, so a key failing for days does not overflow a float.
        return min(self.base_delay * (2 ** min(failures, 64)), self.max_delay)

    def forget(self, key: str) -> None:
        self._failures.pop(key, None)

    def num_requeues(self, key: str) -> int:
        return self._failures.get(key, 0)

    # --- consumers ---------------------------------------------------------------------------

    async def get(self) -> str | None:
        while not self._queue and not self._shutting_down:
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                # If we were woken for a key and cancelled at the same time, pass the wake-up on.
                if waiter.done() and not waiter.cancelled():
                    self._wake_one()
                raise
            finally:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
        if self._shutting_down:
            return None
        key = self._queue.popleft()
        self._processing.add(key)
        self._dirty.discard(key)
        self.metrics.in_flight = len(self._processing)
        self._update_depth()
        return key

    def done(self, key: str) -> None:
        self._processing.discard(key)
        self.metrics.in_flight = len(self._processing)
        if key in self._dirty and not self._shutting_down:
            self._queue.append(key)
            self._update_depth()
            self._wake_one()

    # --- lifecycle -----------------------------------------------------------------------------

    def shutdown(self) -> None:
        """Wake every waiting ``get()`` (it returns None) and drop pending timers."""
        self._shutting_down = True
        for handle in self._timers:
            handle.cancel()
        self._timers.clear()
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)

    @property
    def shutting_down(self) -> bool:
        return self._shutting_down

    def __len__(self) -> int:
        return len(self._queue)

    def is_processing(self, key: str) -> bool:
        return key in self._processing

    # --- internals ------------------------------------------------------------------------------

    def _update_depth(self) -> None:
        self.metrics.depth = len(self._queue)

    def _wake_one(self) -> None:
        # Synchronous on purpose: add() and done() are called from event handlers and finally
        # blocks. One key wakes one waiter; a woken waiter that finds the queue empty waits again.
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
