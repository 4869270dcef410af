"""Controller-side ingest: summaries (deduplicated, stored), statuses, node auto-registration.

Throughput comes from batching, not from concurrency: messages are drained
from the MQTT client in bursts (up to ``batch_max``, lingering ``linger_s`` for
more), every summary of the burst is stored in ONE SQLite transaction
(``SummaryStore.add_many``, the receiver's dedup by batch id), the fleet's
status rows in one more, and only then is the whole burst acknowledged. That
keeps store-before-ack (at-least-once on the wire + dedup = exactly-once
counting) at a fraction of the per-message commit cost.

Replicas: summaries may be split between replicas with a shared subscription
(``$share/GROUP/...``), and hard examples too when the replicas share one store
(PostgreSQL, ``store_dsn``); statuses are never shared, so every replica, and in
particular the leader whose reconcilers read the fleet, sees every node's
status. (With a shared group the summary counts are per replica; the node
reconciler then takes traffic counters from node-reported status instead.)

Registration: the first status or summary of an unknown node creates its
EdgeNode with ``spec.enrollment.approved`` = (enrollment == "auto"). It runs in
its own task so a slow API server never stalls ingest; create is idempotent
(AlreadyExists means someone, maybe another replica, was first).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from cloud_controller.ingest.contracts import HardExampleStoreProtocol, StoreUnavailable, SummaryStoreProtocol
from cloud_controller.ingest.fleet import Fleet, StatusChange
from cloud_controller.ingest.hard_examples import HandleResult, SensorLabeller, handle_hard_examples
from cloud_controller.ingest.summaries import SummaryStore
from cloud_controller.resources.store_protocol import API_VERSION, AlreadyExists, ResourceStore
from edge_agent.config import MqttConfig
from edge_agent.ops.gc_freeze import freeze_startup_heap
from edge_agent.protocol import messages as wire
from edge_agent.protocol import topics
from edge_agent.protocol.errors import RejectedMessage, TransientError
from edge_agent.transport.backoff import Backoff
from edge_agent.transport.mqtt import Message, MqttClient

log = logging.getLogger(__name__)

Enrollment = Literal["auto", "manual"]


HARD_EXAMPLE_REJECT_PREFIX = "hard_example_"


class IngestConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    mqtt: MqttConfig = Field(default_factory=MqttConfig)
    db_path: Path
    client_id: str = "edgeloop-controller"
    shared_group: str | None = None  # applies to summaries (and hard examples with shared_store)
    # The stores are shared by every replica (PostgreSQL): hard examples may then be split too.
    shared_store: bool = False
    namespace: str = "default"
    enrollment: Enrollment = "auto"
    max_payload_bytes: int = 8 * wire.DEFAULT_MAX_PAYLOAD
    batch_max: int = Field(default=1000, ge=1, le=50_000)
    linger_s: float = Field(default=0.002, ge=0, le=1)
    # MQTT Receive Maximum (= the client's inbound queue bound). On a reconnect with a session
    # backlog the broker sends this many messages ahead of the SUBACK, which must arrive within
    # connect_timeout_s: 10,000 at a loaded controller's ~1k/s missed it and looped (bench_fleet).
    receive_max: int = Field(default=2000, ge=1, le=65535)
    auto_register: bool = True


@dataclass
class IngestStats:
    messages: int = 0
    bursts: int = 0
    summaries_stored: int = 0
    duplicates: int = 0
    statuses: int = 0
    rejected: int = 0
    registered: int = 0
    registration_errors: int = 0
    hard_examples: int = 0
    hard_example_duplicates: int = 0
    hard_examples_labelled: int = 0  # sensor examples labelled by the sensor teacher on arrival
    hard_examples_unlabelled: int = 0  # sensor examples stored without a label
    seq_resets: int = 0  # nodes seen starting their sequence numbers again (a new epoch)


@dataclass
class _Parsed:
    """One burst, validated: what to store. Parsing runs once; storing may be retried."""

    now: float
    items: list[tuple[wire.SummaryBatch, float, int]] = field(default_factory=list)
    statuses: list[wire.Status] = field(default_factory=list)
    hard: list[Message] = field(default_factory=list)
    rejects: list[tuple[str, str]] = field(default_factory=list)


# (node, what changed) -> None; called on the event loop right after the burst is stored.
StatusHook = Callable[[str, StatusChange], None]
SummaryHook = Callable[[str], None]


class Ingest:
    def __init__(
        self,
        cfg: IngestConfig,
        store: ResourceStore | None,
        fleet: Fleet,
        *,
        on_status: StatusHook | None = None,
        on_summary: SummaryHook | None = None,
        clock: Callable[[], float] = time.time,
        hard_examples: HardExampleStoreProtocol | None = None,
        label_sensor: SensorLabeller | None = None,
        summaries: SummaryStoreProtocol | None = None,
    ) -> None:
        self.cfg = cfg
        self.store = store
        self.fleet = fleet
        self.on_status = on_status
        self.on_summary = on_summary
        self.clock = clock
        self.summaries: SummaryStoreProtocol = (
            summaries if summaries is not None else SummaryStore(cfg.db_path)
        )
        self.hard_examples = hard_examples
        self.label_sensor = label_sensor
        self.stats = IngestStats()
        self.rejected: dict[str, int] = {}
        subs = [(self._summaries_filter(), 1), (topics.all_nodes(topics.STATUS), 1)]
        if hard_examples is not None:
            # Each replica's own store must hold all of them (the leader's DistillationJobs read them);
            # a shared store holds what any replica stored, so then they are split like summaries.
            group = cfg.shared_group if cfg.shared_store else None
            subs.append((topics.shared(group, topics.all_nodes(topics.HARD_EXAMPLES)), 1))
        self.client = MqttClient(
            cfg.mqtt,
            cfg.client_id,
            subscriptions=subs,
            manual_ack=True,
            max_incoming=cfg.receive_max,
            name="ingest",
        )
        self._known: set[str] = set()
        self._registrations: asyncio.Queue[str] | None = None
        self._progress = asyncio.Condition()
        self.ready = asyncio.Event()

    def _summaries_filter(self) -> str:
        return topics.shared(self.cfg.shared_group, topics.all_nodes(topics.SUMMARIES))

    # ------------------------------------------------------------------ lifecycle

    async def run(self) -> None:
        """Ingest until cancelled. The MQTT session is persistent: what arrives while down is redelivered."""
        self.summaries.open()
        if self.hard_examples is not None:
            self.hard_examples.open()
        self.fleet.open()
        self.fleet.load_totals(self.summaries.totals())
        self._registrations = asyncio.Queue()
        registrar: asyncio.Task[None] | None = None
        try:
            if self.store is not None and self.cfg.auto_register:
                await self._load_known()
                registrar = asyncio.create_task(self._registrar(), name="ingest-registrar")
            await self.client.start()
            self.ready.set()
            # A drained backlog's bursts trigger full collections that walked the whole start-up
            # heap each time (bench/bench_ingest_cpu.py): frozen out of them once ingest runs.
            freeze_startup_heap()
            while True:
                burst = await self._next_burst()
                await self._process_until_stored(burst)
                for msg in burst:
                    self.client.ack(msg)  # after the commits
                async with self._progress:
                    self._progress.notify_all()
        finally:
            self.ready.clear()
            if registrar is not None:
                registrar.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await registrar
            await self.client.stop()
            self.fleet.flush()
            self.summaries.close()
            if self.hard_examples is not None:
                self.hard_examples.close()

    async def _next_burst(self) -> list[Message]:
        burst = [await self.client.receive()]
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.cfg.linger_s):
                while len(burst) < self.cfg.batch_max:
                    burst.append(await self.client.receive())
        return burst

    async def _load_known(self) -> None:
        assert self.store is not None
        while True:
            try:
                objs, _rv = await self.store.list("EdgeNode", self.cfg.namespace)
                self._known.update(o["metadata"]["name"] for o in objs)
                return
            except TransientError as exc:
                log.warning("ingest: cannot list EdgeNodes yet (%s); retrying", exc)
                await asyncio.sleep(1.0)

    # ------------------------------------------------------------------ processing

    def process(self, burst: list[Message]) -> None:
        """Store one burst (one summary transaction + one status transaction); never raises for bad input.

        Raises :class:`StoreUnavailable` when the store cannot commit: then nothing
        of the burst was counted in memory, and it must not be acknowledged.
        """
        self._commit(self._parse(burst))

    async def _process_until_stored(self, burst: list[Message]) -> None:
        """``process`` the burst, retrying while the store is unavailable: no ack before the commit."""
        parsed = self._parse(burst)
        backoff = Backoff(0.2, 5.0)
        while True:
            try:
                self._commit(parsed)
                return
            except StoreUnavailable as exc:
                delay = backoff.next()
                log.warning("ingest: store unavailable (%s); burst of %d kept unacknowledged, retry in %.1fs",
                            exc, len(burst), delay)
                await asyncio.sleep(delay)

    def _parse(self, burst: list[Message]) -> _Parsed:
        now = self.clock()
        parsed = _Parsed(now)
        for msg in burst:
            self.stats.messages += 1
            try:
                node, leaf = topics.parse_node_topic(msg.topic)
                if leaf == topics.SUMMARIES:
                    batch = wire.decode_summary(msg.payload, self.cfg.max_payload_bytes)
                    if batch.node != node:
                        raise RejectedMessage(
                            "node_mismatch", f"topic node {node!r} != batch node {batch.node!r}"
                        )
                    parsed.items.append((batch, now, len(msg.payload)))
                elif leaf == topics.STATUS:
                    if not msg.payload:  # a cleared retained status
                        self.fleet.clear_status(node)
                        continue
                    status = wire.parse_json(wire.Status, msg.payload)
                    if status.node != node:
                        raise RejectedMessage(
                            "node_mismatch", f"topic node {node!r} != status node {status.node!r}"
                        )
                    parsed.statuses.append(status)
                elif leaf == topics.HARD_EXAMPLES and self.hard_examples is not None:
                    parsed.hard.append(msg)
                else:
                    raise RejectedMessage("bad_topic", f"unexpected leaf {leaf!r}")
            except RejectedMessage as exc:
                self.stats.rejected += 1
                self.rejected[exc.reason] = self.rejected.get(exc.reason, 0) + 1
                log.warning("ingest: rejected message on %s: %s", msg.topic, exc)
                parsed.rejects.append((exc.reason, f"{msg.topic}: {exc.detail}"))
        return parsed

    def _commit(self, parsed: _Parsed) -> None:
        """Store, then count in memory: a store failure leaves memory as it was, so a retry counts once."""
        now, items, statuses, hard = parsed.now, parsed.items, parsed.statuses, parsed.hard
        res: HandleResult | None = None
        if hard:
            assert self.hard_examples is not None
            res = handle_hard_examples(self.hard_examples, hard, now, label_sensor=self.label_sensor)
        news = self.summaries.add_many(items) if items else []
        # Prefixed: a hard example's node_mismatch is not a summary's node_mismatch. Recomputed on a
        # retry (handle_hard_examples ran again), written with the burst's own rejects in one transaction.
        hard_rejects = [(f"{HARD_EXAMPLE_REJECT_PREFIX}{reason}", detail)
                        for reason, detail in (res.rejects if res is not None else [])]
        self.summaries.reject_many(parsed.rejects + hard_rejects)
        parsed.rejects.clear()  # written once: a retry does not count them twice
        if res is not None:
            self.stats.hard_examples += res.accepted
            self.stats.hard_example_duplicates += res.duplicates
            self.stats.hard_examples_labelled += res.labelled
            self.stats.hard_examples_unlabelled += sum(res.unlabelled.values())
            for reason, detail in hard_rejects:
                self.stats.rejected += 1
                self.rejected[reason] = self.rejected.get(reason, 0) + 1
                log.warning("ingest: rejected hard example: %s (%s)", detail[:300], reason)
        touched: set[str] = set()
        if items:
            for (batch, received, nbytes), new in zip(items, news, strict=True):
                self.fleet.observe_summary(
                    batch.node,
                    readings=batch.readings,
                    windows=len(batch.windows),
                    nbytes=nbytes,
                    received=received,
                    new=new,
                )
                if new:
                    self.stats.summaries_stored += 1
                    log.debug("stored batch %s from %s seq %d", batch.id, batch.node, batch.seq)
                else:
                    self.stats.duplicates += 1
                touched.add(batch.node)
            for node in touched:
                seq = self.summaries.sequence(node)
                if seq is not None and self.fleet.observe_sequence(node, seq.epoch, seq.gaps):
                    self.stats.seq_resets += 1
                    log.warning("ingest: %s started its sequence again (epoch %d): its state was lost?",
                                node, seq.epoch)
        changes: dict[str, StatusChange] = {}
        for status in statuses:
            self.stats.statuses += 1
            changes[status.node] = self.fleet.observe_status(status, now)
        try:
            self.fleet.flush()
        except StoreUnavailable as exc:  # still dirty in memory: the next burst's flush writes them
            log.warning("ingest: fleet statuses not persisted this burst (%s)", exc)
        if items or statuses:
            self.stats.bursts += 1

        for node in touched | set(changes):
            self._maybe_register(node)
        for node, change in changes.items():
            if self.on_status is not None:
                self.on_status(node, change)
        for node in touched - set(changes):
            if self.on_summary is not None:
                self.on_summary(node)

    def _maybe_register(self, node: str) -> None:
        if (
            node in self._known
            or self._registrations is None
            or self.store is None
            or not self.cfg.auto_register
        ):
            return
        self._known.add(node)
        self._registrations.put_nowait(node)

    async def _registrar(self) -> None:
        assert self._registrations is not None and self.store is not None
        while True:
            node = await self._registrations.get()
            obj = {
                "apiVersion": API_VERSION,
                "kind": "EdgeNode",
                "metadata": {"name": node, "namespace": self.cfg.namespace},
                "spec": {"enrollment": {"approved": self.cfg.enrollment == "auto"}},
            }
            try:
                await self.store.create(obj)
                self.stats.registered += 1
                log.info("registered EdgeNode %s (approved: %s)", node, self.cfg.enrollment == "auto")
            except AlreadyExists:
                pass
            except TransientError as exc:
                self.stats.registration_errors += 1
                log.warning("registering %s failed (%s); retrying", node, exc)
                await asyncio.sleep(0.5)
                self._registrations.put_nowait(node)
            except Exception:
                self.stats.registration_errors += 1
                log.exception("registering %s failed; it will be retried on its next message", node)
                self._known.discard(node)

    async def wait_processed(self, n: int, timeout: float) -> None:
        """Wait until ``n`` messages were processed in total (tests, benchmarks)."""
        async with asyncio.timeout(timeout), self._progress:
            await self._progress.wait_for(lambda: self.stats.messages >= n)


def summary_receiver(cfg: IngestConfig) -> Ingest:
    """The ingest loop without a resource store: summaries stored, statuses in memory, nothing registered.

    What ``cloud-controller receive`` runs (and the receiver tests and fuzz targets drive): the same
    parsing, dedup and store-then-ack as the controller, without a second copy of the loop.
    """
    return Ingest(cfg, None, Fleet(None))
