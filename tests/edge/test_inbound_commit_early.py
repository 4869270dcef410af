"""The device reader wakes the commit tick at half the broker's window, not when the window is full.

The broker stops sending once our whole Receive Maximum is unacknowledged, and
acknowledgements go out only after a commit: a commit started at a full window
leaves the reader idle for all of it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from edge_agent.services.inbound import Inbound
from edge_agent.transport.mqtt import Message
from edge_agent.transport.redelivery import RedeliveryGuard


class _Client:
    max_incoming = 10

    def __init__(self, n: int) -> None:
        self.n = n

    async def messages(self) -> AsyncIterator[Message]:
        for i in range(self.n):
            yield Message("devices/d1/telemetry", b"{}", 1, False, i + 1, None)

    def ack(self, msg: Message) -> None:
        raise AssertionError("telemetry is acknowledged by the tick, after its commit")


class _Tick:
    def __init__(self) -> None:
        self.acks: list[Message] = []
        self.woken_at: list[int] = []

    def ack_after_commit(self, msg: Message) -> None:
        self.acks.append(msg)

    @property
    def unacked(self) -> int:
        return len(self.acks)

    def wake(self) -> None:
        self.woken_at.append(self.unacked)

    def readings_due(self) -> bool:
        return False  # the readings bound (tests/edge/test_memory_bounds.py) is not what this test is about


class _Pipeline:
    def handle(self, topic: str, payload: bytes) -> None:
        return None


async def test_commit_is_woken_at_half_the_receive_window() -> None:
    tick = _Tick()
    fakes: Any = (_Client(8), _Pipeline(), tick)
    inbound = Inbound("n1", fakes[0], fakes[0], fakes[1], RedeliveryGuard(), fakes[2], None, None)  # type: ignore[arg-type]
    await inbound.devices()
    assert len(tick.acks) == 8
    assert tick.woken_at and tick.woken_at[0] == 5  # half of max_incoming=10 (was: only at 2,000)
