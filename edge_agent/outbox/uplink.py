"""Uplink: drains the durable outbox to the cloud with QoS 1.

A row leaves the outbox only after the broker's PUBACK for it. The number of
unacknowledged publishes is bounded (``max_inflight``): paho keys in-flight
messages by a 16-bit id, and an unbounded window would also hide backpressure.
On a lost connection every unacknowledged row simply stays in the outbox and is
sent again after the reconnect; the cloud drops the duplicates by message id.
A row the broker refuses for good (MQTT 5 reason >= 0x80) is removed and
counted, because retrying it forever would block everything behind it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from edge_agent.outbox.agent_store import AgentStore
from edge_agent.outbox.records import OutboxRow
from edge_agent.protocol.errors import MqttError, PublishDenied

log = logging.getLogger(__name__)


class Publisher(Protocol):
    @property
    def connected(self) -> bool: ...

    async def wait_connected(self, timeout: float | None = None) -> None: ...

    async def publish(
        self,
        topic: str,
        payload: bytes,
        qos: int = 1,
        retain: bool = False,
        properties: object | None = None,
        timeout: float | None = None,
    ) -> None: ...


@dataclass
class UplinkStats:
    published: int = 0
    acked: int = 0
    bytes: int = 0
    denied: int = 0
    errors: int = 0
    inflight: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)


class Uplink:
    def __init__(
        self,
        store: AgentStore,
        client: Publisher,
        *,
        max_inflight: int,
        publish_timeout_s: float,
        on_acked: Callable[[OutboxRow], None] | None = None,
    ) -> None:
        self._store = store
        self._client = client
        self._max_inflight = max_inflight
        self._timeout = publish_timeout_s
        self._on_acked = on_acked
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self.stats = UplinkStats()

    def wake(self) -> None:
        """New rows were committed: look at the outbox now instead of at the next poll."""
        self._wake.set()

    async def wait_idle(self, timeout: float) -> bool:
        """Wait until a pass found the outbox empty; False on timeout."""
        self._idle.clear()
        self.wake()
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
            return True
        except TimeoutError:
            return False

    async def run(self) -> None:
        while True:
            if not self._client.connected:
                try:
                    await self._client.wait_connected(timeout=5.0)
                except MqttError:
                    continue
            rows = await self._store.pending(limit=self._max_inflight)
            if not rows:
                self._idle.set()
                self._wake.clear()
                # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancellation.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(1.0):
                        await self._wake.wait()
                continue
            await self._send_window(rows)

    async def _send_window(self, rows: list[OutboxRow]) -> None:
        self.stats.inflight = len(rows)
        results = await asyncio.gather(*(self._send(r) for r in rows), return_exceptions=True)
        self.stats.inflight = 0
        done: list[OutboxRow] = []
        refused: list[int] = []
        failed = False
        for row, res in zip(rows, results, strict=True):
            if res is None:
                done.append(row)
            elif isinstance(res, PublishDenied):
                self.stats.denied += 1
                log.error(
                    "broker refused uplink record; removing it",
                    extra={"seq": row.seq, "topic": row.topic, "reason_code": res.reason_code},
                )
                refused.append(row.seq)
            elif isinstance(res, BaseException):
                failed = True
                self.stats.errors += 1
                if not isinstance(res, MqttError | TimeoutError):
                    log.error("uplink publish failed", exc_info=res)
        if refused:
            await self._store.discard(refused)
        if done:
            await self._store.ack([r.seq for r in done])
            for r in done:
                if self._on_acked is not None:
                    self._on_acked(r)
        if failed:
            # Leave the rest in the outbox; back off a little before the next pass.
            await asyncio.sleep(0.05)

    async def _send(self, row: OutboxRow) -> None:
        await self._client.publish(row.topic, row.payload, qos=1, timeout=self._timeout)
        self.stats.published += 1
        self.stats.acked += 1
        self.stats.bytes += len(row.payload)
        self.stats.by_kind[row.kind] = self.stats.by_kind.get(row.kind, 0) + 1
