"""Named, supervised background tasks.

A daemon that loses a background task silently keeps answering health checks
while doing nothing. Every task here has a name, an unexpected exit is logged
with its traceback and restarted with backoff, and ``stop()`` cancels all of
them and waits, so shutdown never leaves a task behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from edge_agent.transport.backoff import Backoff

log = logging.getLogger(__name__)

TaskFactory = Callable[[], Awaitable[None]]


class Supervisor:
    def __init__(self, name: str, *, restart_min_s: float = 0.1, restart_max_s: float = 10.0) -> None:
        self.name = name
        self._restart_min = restart_min_s
        self._restart_max = restart_max_s
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self.restarts: dict[str, int] = {}
        self._stopping = False

    def spawn(self, name: str, factory: TaskFactory, *, restart: bool = True) -> asyncio.Task[None]:
        """Run ``factory()`` as task ``name``; restart it with backoff if it dies unexpectedly."""
        if name in self._tasks and not self._tasks[name].done():
            raise RuntimeError(f"task {name!r} already running")
        task = asyncio.create_task(self._guard(name, factory, restart), name=f"{self.name}:{name}")
        self._tasks[name] = task
        return task

    async def _guard(self, name: str, factory: TaskFactory, restart: bool) -> None:
        backoff = Backoff(self._restart_min, self._restart_max)
        while True:
            try:
                await factory()
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("task %s crashed", name, extra={"task": name})
                if not restart or self._stopping:
                    return
                self.restarts[name] = self.restarts.get(name, 0) + 1
                await backoff.sleep()

    def running(self) -> list[str]:
        return [n for n, t in self._tasks.items() if not t.done()]

    async def cancel(self, name: str) -> None:
        task = self._tasks.pop(name, None)
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def stop(self) -> None:
        self._stopping = True
        tasks = [t for t in self._tasks.values() if not t.done()]
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()
