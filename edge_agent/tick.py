"""The commit tick: what the pipeline produced goes to the outbox, then the broker gets its acks.

Exactly-once counting rests on one ordering rule: an inbound QoS 1 message is
acknowledged to the broker only after everything it changed (window state,
closed windows, summaries, dead letters) is committed to SQLite in the same
transaction. A crash before the commit means the broker redelivers; a crash
after it means the work is on disk. Summaries then leave the outbox at least
once (the uplink) and the cloud drops duplicates by id.

One reading's path: MQTT (inbound) -> pipeline -> this tick -> outbox -> uplink.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from edge_agent.config import AgentConfig
from edge_agent.outbox.agent_store import AgentStore
from edge_agent.outbox.dead_letters import DeadLetter
from edge_agent.outbox.records import CommitResult, OutboxRecord
from edge_agent.outbox.uplink import Uplink
from edge_agent.pipeline.core import Pipeline
from edge_agent.pipeline.outputs import Reply
from edge_agent.protocol.errors import OutboxError
from edge_agent.transport.mqtt import Message, MqttClient
from edge_agent.transport.redelivery import RedeliveryGuard

log = logging.getLogger(__name__)

# Readings absorbed since the last commit began: the tick is woken at this many, and the reader waits
# for the running commit at twice this many. It bounds how many closed windows one commit turns into
# summaries at once. Measured (bench/bench_agent.py --only memory, batched messages of 100 readings):
# with only the message bound, one commit took up to 2,000 such messages (200,000 readings) and built
# ~20 MB of summaries in one go, which the interpreter's allocator kept resident after the burst (idle
# 67 MB, peak 92-102 MB); with this bound idle 56 MB, peak 64 MB, and batched throughput unchanged
# within noise (live 102k vs 101k readings/s, backlog 134k vs 108k, medians of 3 interleaved runs).
COMMIT_MAX_READINGS = 20_000


@dataclass
class TickWork:
    """Work taken from the pipeline for one commit; kept for a retry when the commit fails."""

    records: list[tuple[int, OutboxRecord]] = field(default_factory=list)
    upserts: dict[str, bytes] = field(default_factory=dict)
    deletes: set[str] = field(default_factory=set)
    dead: list[DeadLetter] = field(default_factory=list)
    acks: list[Message] = field(default_factory=list)

    def merge_newer(self, other: TickWork) -> None:
        self.records.extend(other.records)
        for k in other.deletes:
            self.upserts.pop(k, None)
        self.deletes -= other.upserts.keys()
        self.deletes |= other.deletes
        self.upserts.update(other.upserts)
        self.dead.extend(other.dead)
        self.acks.extend(other.acks)

    def empty(self) -> bool:
        return not (self.records or self.upserts or self.deletes or self.dead)


class CommitTick:
    """Every ``commit_interval_s`` (or sooner when woken): one SQLite transaction, then the acks."""

    def __init__(
        self,
        pipeline: Pipeline,
        redelivery: RedeliveryGuard,
        store: AgentStore,
        client: MqttClient,
        uplink: Uplink,
        *,
        config: Callable[[], AgentConfig],
        send_reply: Callable[[Reply], None],
    ) -> None:
        self._pipeline = pipeline
        self._redelivery = redelivery
        self._store = store
        self._client = client
        self._uplink = uplink
        self._config = config
        self._send_reply = send_reply
        self._acks: list[Message] = []
        self._retry: TickWork | None = None
        self._now = asyncio.Event()
        self._lock = asyncio.Lock()
        self.last_commit = time.monotonic()
        self._readings_at_commit = 0
        self._asked = False

    def ack_after_commit(self, msg: Message) -> None:
        """Acknowledge ``msg`` to the broker once the next tick is on disk."""
        self._acks.append(msg)

    @property
    def unacked(self) -> int:
        return len(self._acks)

    def readings_due(self) -> bool:
        """Whether the reader should let the tick commit now for the readings it absorbed: at
        ``COMMIT_MAX_READINGS`` since the last commit began (asked once per commit, so the reader does
        not yield on every message while that commit runs), and again at twice that."""
        n = self._pipeline.windows.readings - self._readings_at_commit
        return n >= 2 * COMMIT_MAX_READINGS or (n >= COMMIT_MAX_READINGS and not self._asked)

    async def let_commit(self) -> None:
        """Called by the reader when :meth:`readings_due`: wake the tick and let it take what was read so
        far; when reading still outpaces committing by ``2 * COMMIT_MAX_READINGS``, wait for the running
        commit. This bounds the closed windows one commit turns into summaries at once (the memory bound)
        whatever the speed of the disk."""
        self._asked = True
        self._now.set()
        await asyncio.sleep(0)
        if self._pipeline.windows.readings - self._readings_at_commit >= 2 * COMMIT_MAX_READINGS:
            async with self._lock:
                pass

    def wake(self) -> None:
        """Commit now instead of at the end of the interval."""
        self._now.set()

    async def run(self) -> None:
        interval = self._config().outbox.commit_interval_s
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval):
                    await self._now.wait()
            self._now.clear()
            try:
                await self.commit()
            except OutboxError:
                log.exception("commit failed; will retry, inbound messages stay unacknowledged")
                await asyncio.sleep(min(5.0, interval * 20))

    async def final_commit(self, stop_loop: Callable[[], Awaitable[None]]) -> None:
        """Stop the loop between two commits, then flush every open window in one last commit."""
        # Never cancel a commit half-way: what it took from the pipeline would be lost.
        async with self._lock:
            await stop_loop()
        try:
            await self.commit(flush=True)
        except OutboxError:
            log.exception("final commit failed; unacknowledged input will be redelivered")

    async def commit(self, *, flush: bool = False) -> None:
        async with self._lock:
            await self._commit_locked(flush)

    async def _commit_locked(self, flush: bool) -> None:
        now = time.time()
        p = self._pipeline
        self._readings_at_commit = p.windows.readings
        self._asked = False
        p.poll_windows(now, flush=flush)
        work = TickWork(
            records=[
                (seq, OutboxRecord(id=r.id, topic=r.topic, payload=r.payload, created=r.created, kind=r.kind))
                for seq, r in p.take_records(now, self._store.reserve_seq, force=flush)
            ]
        )
        ups, dels = p.take_state()
        r_ups, r_dels = self._redelivery.take_state(now)
        ups.update(r_ups)
        work.upserts, work.deletes = ups, {*dels, *r_dels}
        work.dead = [
            DeadLetter(
                ts=d.ts, source=d.source, topic=d.topic, reason=d.reason, detail=d.detail, payload=d.payload
            )
            for d in p.take_dead_letters()
        ]
        work.acks, self._acks = self._acks, []
        for r in p.take_replies():
            self._send_reply(r)
        if self._retry is not None:
            self._retry.merge_newer(work)
            work, self._retry = self._retry, None
        if not work.empty():
            try:
                result = await self._store.commit_tick(work.records, work.upserts, work.deletes, work.dead)
            except OutboxError:
                self._retry = work
                raise
            self._note_commit(result)
        for m in work.acks:
            self._client.ack(m)
        self.last_commit = time.monotonic()
        if work.records:
            self._uplink.wake()

    def _note_commit(self, result: CommitResult) -> None:
        if result.dropped:
            log.warning(
                "outbox full: dropped records by policy",
                extra={"policy": self._config().outbox.when_full, "count": len(result.dropped)},
            )
