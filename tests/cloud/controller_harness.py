"""What the controller-runtime tests share, on either store (SQLite, the kube emulator)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class Signal:
    """Wake waiters whenever something changed; they re-check their predicate (no sleeping on time)."""

    def __init__(self) -> None:
        self._ev = asyncio.Event()

    def fire(self) -> None:
        self._ev.set()
        self._ev = asyncio.Event()

    async def wait_for(self, pred: Callable[[], bool], within_s: float = 5.0) -> None:
        async with asyncio.timeout(within_s):
            while not pred():
                await self._ev.wait()
