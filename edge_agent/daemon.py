"""The edge agent daemon: wires MQTT, the pipeline, the durable store and the uplink.

Exactly-once counting rests on one ordering rule: an inbound QoS 1 message is
acknowledged to the broker only after everything it changed (window state,
closed windows, summaries, dead letters) is committed to SQLite in the same
transaction. A crash before the commit means the broker redelivers; a crash
after it means the work is on disk. Summaries then leave the outbox at least
once and the cloud drops duplicates by id.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_agent import __version__
from edge_agent.config import AgentConfig, load_config, parse_config
from edge_agent.escalation.answer_cache import AnswerCache
from edge_agent.escalation.budget import EscalationBudget
from edge_agent.escalation.escalator import Escalator, hard_example_record
from edge_agent.ops.heap import HeapTrimmer
from edge_agent.ops.logs import setup_logging
from edge_agent.ops.metrics import AgentMetrics
from edge_agent.ops.sdnotify import Notifier, watchdog_interval
from edge_agent.ops.tasks import Supervisor
from edge_agent.outbox.agent_store import AgentStore, DeadLetter, OutboxRecord
from edge_agent.outbox.uplink import Uplink
from edge_agent.pipeline.core import ChatAnswer, ChatJob, ModelCounters, Pipeline
from edge_agent.protocol import messages as wire
from edge_agent.protocol import topics
from edge_agent.protocol.errors import ConfigError, MqttError, OutboxError, RejectedMessage
from edge_agent.protocol.manifest import key_id, load_public_key
from edge_agent.transport.mqtt import Message, MqttClient, Will
from edge_agent.transport.redelivery import RedeliveryGuard
from edge_agent.updates.manager import ModelManager, default_health_check, default_loaders

log = logging.getLogger(__name__)


@dataclass
class _Tick:
    """Work taken from the pipeline for one commit; kept for a retry when the commit fails."""

    records: list[tuple[int, OutboxRecord]] = field(default_factory=list)
    upserts: dict[str, bytes] = field(default_factory=dict)
    deletes: set[str] = field(default_factory=set)
    dead: list[DeadLetter] = field(default_factory=list)
    acks: list[Message] = field(default_factory=list)

    def merge_newer(self, other: _Tick) -> None:
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


def device_subscriptions(cfg: AgentConfig) -> list[tuple[str, int]]:
    """Enrolled devices only, when unknown devices are refused; every device otherwise.

    Subscribing per device keeps a node from even receiving traffic it must not
    process (several agents can then share one broker, as in the demo).
    """
    if not cfg.devices.subscribe_enrolled_only or not cfg.devices.allowed:
        return [(topics.DEVICE_TELEMETRY_SUB, 1), (topics.DEVICE_CHAT_IN_SUB, 1)]
    subs: list[tuple[str, int]] = []
    for device in cfg.devices.allowed:
        subs += [(topics.device_telemetry(device), 1), (topics.device_chat_in(device), 1)]
    return subs


class Agent:
    def __init__(
        self, cfg: AgentConfig, *, config_path: Path | None = None, environ: Mapping[str, str] | None = None
    ) -> None:
        self.cfg = cfg
        self.config_path = config_path
        self._environ = dict(os.environ if environ is None else environ)
        self.notifier = Notifier.from_env(self._environ)
        self.metrics = AgentMetrics(version=__version__)
        self.store = AgentStore(cfg.db_path, cfg.outbox)
        self.pipeline = Pipeline(cfg)
        self.redelivery = RedeliveryGuard()
        will = Will(topics.status(cfg.node_id), self._status_payload(online=False))
        desired_sub = (topics.desired(cfg.node_id), 1)
        separate = cfg.uplink.mqtt is not None
        # Devices talk to the edge's local broker; the cloud may be another broker (uplink.mqtt).
        self.client = MqttClient(
            cfg.mqtt,
            cfg.client_id,
            subscriptions=device_subscriptions(cfg) + ([] if separate else [desired_sub]),
            will=None if separate else will,
            manual_ack=True,
            # Receive Maximum: unacknowledged messages the broker may push at once. Acks go out every
            # commit tick, so 2,000 covers 40k msg/s while bounding the memory a backlog can take.
            max_incoming=2000,
            name="edge",
        )
        self.cloud = self.client
        if cfg.uplink.mqtt is not None:
            self.cloud = MqttClient(
                cfg.uplink.mqtt,
                cfg.uplink.mqtt.client_id or f"{cfg.client_id}-uplink",
                subscriptions=[desired_sub],
                will=will,
                manual_ack=True,
                name="cloud",
            )
        self.uplink = Uplink(
            self.store,
            self.cloud,
            max_inflight=cfg.uplink.max_inflight,
            publish_timeout_s=cfg.uplink.publish_timeout_s,
        )
        esc = cfg.chat.escalation
        self.escalator: Escalator | None = None
        if esc.enabled:
            self.escalator = Escalator(
                self.cloud,
                cfg.node_id,
                EscalationBudget(
                    max_rate=esc.max_rate, window=esc.window, threshold_fallback=esc.threshold, mode=esc.mode
                ),
                AnswerCache(max_entries=esc.cache_max_entries, ttl_s=esc.cache_ttl_s),
                timeout_s=esc.timeout_s,
            )
        self.models = ModelManager(
            cfg.state_dir, self.cloud, _trusted_keys(cfg), default_loaders(), default_health_check
        )
        self._desired_topic = topics.desired(cfg.node_id)
        self._file_cfg = cfg
        self.chat_model: Any = None
        self.model_status: dict[str, wire.ModelStatus] = {}
        self._chat_q: asyncio.Queue[tuple[ChatJob, Message]] = asyncio.Queue(maxsize=1000)
        self.tasks = Supervisor("edge-agent")
        self._stop = asyncio.Event()
        self._tick_now = asyncio.Event()
        self._acks: list[Message] = []
        self._retry: _Tick | None = None
        self._replies: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue(maxsize=10_000)
        self._last_commit = time.monotonic()
        self._commit_lock = asyncio.Lock()
        self._synced: dict[str, float] = {}
        self._synced_sensor: ModelCounters | None = None  # the object _synced["sensor_scored"] counts
        self.heap = HeapTrimmer(cfg.heap_trim_interval_s)
        self.exit_code = 0
        self.metrics_port: int | None = None
        self.applied_generation = 0

    # ------------------------------------------------------------------ lifecycle
    async def run(self) -> int:
        """Run until SIGTERM/SIGINT; returns the process exit code."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        loop.add_signal_handler(
            signal.SIGHUP,
            lambda: self.tasks.spawn(f"reload-{time.monotonic_ns()}", self.reload, restart=False),
        )
        try:
            await self.start()
            self.notifier.ready()
            self.notifier.status(f"running: node {self.cfg.node_id}, metrics port {self.metrics_port}")
            await self._stop.wait()
        finally:
            await self.shutdown()
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
        return self.exit_code

    def request_stop(self) -> None:
        self._stop.set()

    async def start(self) -> None:
        await self.store.open()
        states = await self.store.load_state()
        self.redelivery.restore(states)
        self.pipeline.restore(states)
        gen = await self.store.get_meta("applied_generation")
        self.applied_generation = int(gen) if gen else 0
        if self.cfg.metrics.enabled:
            self.metrics_port = self.metrics.start_http(self.cfg.metrics.host, self.cfg.metrics.port)
        await self._load_configured_models()
        await self.models.load_active()
        self._sync_models()
        self.client.add_on_connect(self._on_connect)
        await self.client.start()
        if self.cloud is not self.client:
            self.cloud.add_on_connect(self._on_cloud_connect)
            await self.cloud.start()
            self.tasks.spawn("cloud-ingest", self._cloud_ingest)
        if self.escalator is not None:
            await self.escalator.start()
        for i in range(self.cfg.chat.workers):
            self.tasks.spawn(f"chat-{i}", self._chat_worker)
        self.tasks.spawn("ingest", self._ingest)
        self.tasks.spawn("commit", self._commit_loop)
        self.tasks.spawn("uplink", self.uplink.run)
        self.tasks.spawn("replies", self._reply_loop)
        self.tasks.spawn("housekeeping", self._housekeeping)
        wd = self.cfg.watchdog_interval_s or watchdog_interval(self._environ)
        if wd:
            self.tasks.spawn("watchdog", lambda: self._watchdog(wd))
        log.info(
            "edge agent started",
            extra={"node": self.cfg.node_id, "db": str(self.cfg.db_path), "metrics_port": self.metrics_port},
        )

    async def shutdown(self) -> None:
        """Drain within ``shutdown_timeout_s``: stop taking input, flush windows, empty the outbox."""
        self.notifier.stopping()
        deadline = time.monotonic() + self.cfg.shutdown_timeout_s
        log.info("shutting down: flushing", extra={"timeout_s": self.cfg.shutdown_timeout_s})
        await self.tasks.cancel("ingest")
        # Never cancel a commit half-way: what it took from the pipeline would be lost.
        async with self._commit_lock:
            await self.tasks.cancel("commit")
        try:
            await self._commit(flush=True)
        except OutboxError:
            log.exception("final commit failed; unacknowledged input will be redelivered")
        drained = True
        if self.cloud.connected:
            drained = await self.uplink.wait_idle(max(0.0, deadline - time.monotonic()))
        if self.cloud.connected:
            with contextlib.suppress(MqttError, TimeoutError):
                await asyncio.wait_for(
                    self.cloud.publish(
                        topics.status(self.cfg.node_id),
                        self._status_payload(online=False),
                        qos=1,
                        retain=True,
                    ),
                    timeout=max(0.1, min(2.0, deadline - time.monotonic())),
                )
        await self.tasks.stop()
        await self.models.stop()
        if self.escalator is not None:
            await self.escalator.stop()
        await self.client.stop()
        if self.cloud is not self.client:
            await self.cloud.stop()
        await self.store.close()
        self.metrics.stop_http()
        log.info("stopped", extra={"outbox_drained": drained})

    async def reload(self) -> None:
        """SIGHUP: re-read the config; a broken file keeps the running config and says why."""
        if self.config_path is None:
            log.warning("SIGHUP ignored: no config file to reload")
            return
        self.notifier.reloading()
        try:
            new = await asyncio.to_thread(load_config, self.config_path)
        except ConfigError as exc:
            log.error(
                "config reload failed; keeping the running config",
                extra={"problems": [f"{p}: {m}" for p, m in exc.problems]},
            )
            self.metrics.config_reload_failures.inc()
            self.notifier.ready()
            return
        if (
            new.mqtt != self.cfg.mqtt
            or new.node_id != self.cfg.node_id
            or new.outbox.path != self.cfg.outbox.path
        ):
            log.warning("mqtt, node_id and outbox.path changes need a restart; applied the rest")
        self.pipeline.reconfigure(new)
        logging.getLogger().setLevel(new.log.level)
        self.cfg = new
        self.notifier.ready()
        log.info("config reloaded")

    # ------------------------------------------------------------------ tasks
    async def _ingest(self) -> None:
        handle = self.pipeline.handle
        guard = self.redelivery
        async for msg in self.client.messages():
            if msg.topic == self._desired_topic:
                self._on_desired(msg)
                self.client.ack(msg)  # retained: the current desired state comes again after any reconnect
                continue
            if topics.is_node_topic(msg.topic):
                self.client.ack(msg)  # a cloud topic on the device connection: not ours to process
                continue
            if not guard.is_duplicate(msg.mid, msg.dup, msg.topic, msg.payload):
                job = handle(msg.topic, msg.payload)
                if job is not None:
                    # Answered by a chat worker, which acknowledges it once the answer is applied.
                    await self._chat_q.put((job, msg))
                    continue
                guard.absorbed(msg.mid, msg.topic, msg.payload)
            # A redelivery of absorbed work is acknowledged after this tick's commit, like the original.
            self._acks.append(msg)
            if len(self._acks) >= 2000:
                self._tick_now.set()
                # Let the committer catch up instead of growing the unacknowledged set without bound.
                await asyncio.sleep(0)

    async def _commit_loop(self) -> None:
        interval = self.cfg.outbox.commit_interval_s
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval):
                    await self._tick_now.wait()
            self._tick_now.clear()
            try:
                await self._commit()
            except OutboxError:
                log.exception("commit failed; will retry, inbound messages stay unacknowledged")
                await asyncio.sleep(min(5.0, interval * 20))

    async def _commit(self, *, flush: bool = False) -> None:
        async with self._commit_lock:
            await self._commit_locked(flush)

    async def _commit_locked(self, flush: bool) -> None:
        now = time.time()
        p = self.pipeline
        p.poll_windows(now, flush=flush)
        tick = _Tick(records=p.take_records(now, self.store.reserve_seq, force=flush))
        ups, dels = p.take_state()
        r_ups, r_dels = self.redelivery.take_state(now)
        ups.update(r_ups)
        tick.upserts, tick.deletes = ups, {*dels, *r_dels}
        tick.dead = p.take_dead_letters()
        tick.acks, self._acks = self._acks, []
        for r in p.take_replies():
            with contextlib.suppress(asyncio.QueueFull):
                self._replies.put_nowait((r.topic, r.payload))
        if self._retry is not None:
            self._retry.merge_newer(tick)
            tick, self._retry = self._retry, None
        if not tick.empty():
            try:
                result = await self.store.commit_tick(tick.records, tick.upserts, tick.deletes, tick.dead)
            except OutboxError:
                self._retry = tick
                raise
            self._note_commit(result)
        for m in tick.acks:
            self.client.ack(m)
        self._last_commit = time.monotonic()
        if tick.records:
            self.uplink.wake()

    def _note_commit(self, result: object) -> None:
        dropped = getattr(result, "dropped", None) or getattr(result, "dropped_seqs", None)
        if dropped:
            log.warning(
                "outbox full: dropped records by policy",
                extra={"policy": self.cfg.outbox.when_full, "count": len(dropped)},
            )

    # ------------------------------------------------------------------ desired state
    def _on_desired(self, msg: Message) -> None:
        if not msg.payload:
            return
        try:
            desired = wire.parse_json(wire.DesiredState, msg.payload)
            if desired.node != self.cfg.node_id:
                raise RejectedMessage("node_mismatch", f"desired state for {desired.node!r}")
        except RejectedMessage as exc:
            log.error("desired state refused", extra={"reason": exc.reason, "detail": exc.detail[:200]})
            self.pipeline.counters.rejected[f"desired_{exc.reason}"] += 1
            return
        if desired.generation <= self.applied_generation and self.applied_generation:
            return
        self.tasks.spawn(f"apply-{desired.generation}", lambda: self._apply_desired(desired), restart=False)

    async def _apply_desired(self, desired: wire.DesiredState) -> None:
        """Level-triggered: converge on the desired state, then report the generation applied."""
        log.info(
            "applying desired state",
            extra={
                "generation": desired.generation,
                "models": {t: f"{r.name}@{r.version}" for t, r in desired.models.items()},
            },
        )
        if desired.pipeline:
            try:
                merged = _deep_merge(
                    self._file_cfg.model_dump(mode="json", exclude_none=True), desired.pipeline
                )
                new = parse_config(merged, f"desired generation {desired.generation}")
                self.pipeline.reconfigure(new)
                self.cfg = new
            except ConfigError as exc:
                log.error("desired pipeline settings refused", extra={"problems": exc.problems[:10]})
        if desired.models:
            await self.models.apply(desired)
            self._sync_models()
        self.applied_generation = max(self.applied_generation, desired.generation)
        await self.store.set_meta("applied_generation", str(self.applied_generation))
        await self._publish_status()

    def _sync_models(self) -> None:
        """Adopt what the model manager runs; its status (downloading, refused, rolled back) wins."""
        for task, st in self.models.status().items():
            cur = self.models.current(task)
            if cur is not None:
                name, version, model = cur
                running = self.model_status.get(task)
                if running is None or (running.name, running.version) != (name, version):
                    self.set_model(task, model, name, version, previous=st.previous)
            self.model_status[task] = st.model_copy(update={"samples": 0}) if cur is None else st

    # ------------------------------------------------------------------ models and chat
    async def _load_configured_models(self) -> None:
        """Bundles named in the config; one that fails to load leaves the agent running without it."""
        m = self.cfg.models
        if m.chat_bundle is not None:
            from edge_agent.models.chat_runtime import ChatModel

            try:
                model = await asyncio.to_thread(
                    ChatModel, m.chat_bundle, intra_op_num_threads=m.intra_op_threads
                )
                self.set_model("chat", model, model.bundle.manifest.name, model.version)
            except Exception as exc:
                self._model_failed("chat", m.chat_bundle, exc)
        if m.sensor_bundle is not None:
            from edge_agent.models.sensor_runtime import SensorModel

            bundle = m.sensor_bundle
            try:
                smodel = await asyncio.to_thread(
                    lambda: SensorModel(bundle, intra_op_num_threads=m.intra_op_threads).load()
                )
                assert smodel.bundle is not None
                man = smodel.bundle.manifest
                self.set_model("sensor", smodel, man.name, man.version)
            except Exception as exc:
                self._model_failed("sensor", m.sensor_bundle, exc)

    def set_model(self, task: str, model: Any, name: str, version: str, previous: str | None = None) -> None:
        """Swap the model for a task; in-flight calls finish on the old object (no lock needed)."""
        if task == "chat":
            self.chat_model = model
            self.pipeline.reset_model_counters("chat")
        else:
            self.pipeline.set_sensor_model(model, f"{name}@{version}")
        self.model_status[task] = wire.ModelStatus(
            name=name, version=version, state="active", previous=previous
        )
        self.metrics.set_model_loaded(name, version)
        log.info("model active", extra={"task": task, "model": name, "version": version})

    def _model_failed(self, task: str, path: Path, exc: BaseException) -> None:
        log.error(
            "model bundle failed to load; running without it",
            extra={"task": task, "bundle": str(path), "error": str(exc)[:300]},
        )
        self.model_status[task] = wire.ModelStatus(
            name=path.name, version="", state="failed", error=str(exc)[:300]
        )

    async def _chat_worker(self) -> None:
        while True:
            job, msg = await self._chat_q.get()
            answer = await self._answer(job)
            self.pipeline.complete_chat(job, answer)
            self.redelivery.absorbed(msg.mid, msg.topic, msg.payload)
            self._acks.append(msg)

    async def _answer(self, job: ChatJob) -> ChatAnswer:
        model = self.chat_model
        if model is None:
            return ChatAnswer(None, {}, 0.0, "none")
        t0 = time.perf_counter()
        try:
            pred = await asyncio.to_thread(model.predict, job.text)
        except Exception:
            log.exception("chat model failed on an input")
            self.pipeline.note_model_error("chat")
            return ChatAnswer(None, {}, 0.0, "none")
        self.metrics.inference_seconds.labels(model="chat").observe(time.perf_counter() - t0)
        if self.escalator is None:
            return ChatAnswer(pred.intent, dict(pred.slots), pred.confidence, "edge")
        ans = await self.escalator.answer(job.text, pred)
        rec = None
        if ans.hard_example is not None and self.cfg.chat.escalation.hard_examples:
            rec = hard_example_record(ans.hard_example)
        return ChatAnswer(ans.intent, dict(ans.slots), ans.confidence, ans.source, ans.escalated, rec)

    async def _reply_loop(self) -> None:
        while True:
            topic, payload = await self._replies.get()
            try:
                await self.client.publish(topic, payload, qos=1, timeout=5.0)
            except (MqttError, TimeoutError):
                self.metrics.uplink_errors.labels(kind="reply").inc()

    async def _on_connect(self) -> None:
        self.notifier.status(
            f"connected: node {self.cfg.node_id}, broker {self.cfg.mqtt.host}:{self.cfg.mqtt.port}, "
            f"metrics port {self.metrics_port}"
        )
        if self.cloud is self.client:
            await self._on_cloud_connect()

    async def _on_cloud_connect(self) -> None:
        await self._publish_status()
        self.uplink.wake()

    async def _cloud_ingest(self) -> None:
        """With a separate cloud connection, the only inbound cloud message is the desired state."""
        async for msg in self.cloud.messages():
            if msg.topic == self._desired_topic:
                self._on_desired(msg)
            self.cloud.ack(msg)

    async def _publish_status(self) -> None:
        with contextlib.suppress(MqttError, TimeoutError):
            await self.cloud.publish(
                topics.status(self.cfg.node_id),
                self._status_payload(online=True),
                qos=1,
                retain=True,
                timeout=5.0,
            )

    def _status_payload(self, *, online: bool) -> bytes:
        c = self.pipeline.counters
        counters = {
            "readings_in": float(c.readings),
            "raw_equivalent_bytes": float(c.raw_equivalent_bytes),
            "bytes_sent": float(self.uplink.stats.bytes) if hasattr(self, "uplink") else 0.0,
            "summaries_sent": float(self.uplink.stats.acked) if hasattr(self, "uplink") else 0.0,
            "rejected": float(sum(c.rejected.values())),
            "chat_messages": float(c.chat_messages),
        }
        models: dict[str, wire.ModelStatus] = {}
        for task, st in getattr(self, "model_status", {}).items():
            mc = self.pipeline.model_counters.get(task)
            if mc is not None and st.state == "active":
                st = st.model_copy(
                    update={
                        "samples": mc.samples,
                        "escalated": mc.escalated,
                        "errors": mc.errors,
                        "confidence_sum": mc.confidence_sum,
                    }
                )
            models[task] = st
        counters["anomaly_events"] = float(c.anomaly_events)
        counters["hard_examples"] = float(c.hard_examples)
        counters["sensor_uncertain"] = float(c.sensor_uncertain)
        counters["sensor_hard_examples_dropped"] = float(c.sensor_hard_examples_dropped)
        return wire.dumps(
            wire.Status(
                node=self.cfg.node_id,
                online=online,
                ts=time.time(),
                agent_version=__version__,
                models=models,
                counters=counters,
                applied_generation=getattr(self, "applied_generation", 0),
            )
        )

    async def _housekeeping(self) -> None:
        last_status = time.monotonic()
        while True:
            await asyncio.sleep(1.0)
            expired = await self.store.expire(time.time())
            if expired:
                log.warning("outbox records expired by age", extra={"count": expired})
            await self._sync_metrics()
            c = self.pipeline.counters
            self.heap.interval_s = self.cfg.heap_trim_interval_s  # follows a reload
            self.heap.maybe_trim(time.monotonic(), float(sum(c.messages.values()) + self.uplink.stats.acked))
            if time.monotonic() - last_status >= self.cfg.uplink.status_interval_s:
                last_status = time.monotonic()
                await self._publish_status()

    async def _sync_metrics(self) -> None:
        """Copy plain counters into Prometheus once a second: the hot path stays free of locks."""
        m, c, u = self.metrics, self.pipeline.counters, self.uplink.stats

        def bump(counter: object, key: str, value: float) -> None:
            delta = value - self._synced.get(key, 0.0)
            if delta > 0:
                counter.inc(delta)  # type: ignore[attr-defined]
                self._synced[key] = value

        for kind, n in c.messages.items():
            bump(m.messages_in.labels(kind=kind), f"msg:{kind}", n)
        for reason, n in c.rejected.items():
            bump(m.rejected.labels(reason=reason), f"rej:{reason}", n)
        bump(m.readings_in, "readings", c.readings)
        bump(m.raw_equivalent_bytes, "raw", c.raw_equivalent_bytes)
        bump(m.windows_emitted, "windows", c.windows_emitted)
        bump(m.summaries_enqueued, "summaries", c.summaries)
        bump(m.uplink_published, "pub", u.published)
        bump(m.uplink_acked, "acked", u.acked)
        bump(m.uplink_bytes, "ubytes", u.bytes)
        for source, n in c.chat_by_source.items():
            bump(m.chat_messages.labels(source=source), f"chat:{source}", n)
        # The sensor model's counters restart from zero, as a new object, with each model:
        # sync the new one from zero. Windows scored by the old model after the last sync are
        # not counted (at most a second's worth, once per swap).
        sensor = self.pipeline.model_counters["sensor"]
        if sensor is not self._synced_sensor:
            self._synced_sensor = sensor
            self._synced.pop("sensor_scored", None)
        bump(m.sensor_windows_scored, "sensor_scored", sensor.samples)
        bump(m.sensor_uncertain, "sensor_uncertain", c.sensor_uncertain)
        bump(m.hard_examples, "hard", c.hard_examples)
        bump(m.sensor_hard_examples_dropped, "sensor_hard_dropped", c.sensor_hard_examples_dropped)
        if self.escalator is not None:
            for outcome, n in self.escalator.stats.as_dict().items():
                bump(m.escalations.labels(outcome=outcome), f"esc:{outcome}", n)
        st = await self.store.stats()
        bump(m.outbox_dropped.labels(reason="full"), "drop:full", st.dropped_full_total)
        bump(m.outbox_dropped.labels(reason="age"), "drop:age", st.dropped_age_total)
        bump(m.outbox_dropped.labels(reason="refused"), "drop:refused", st.rejected_full_total)
        bump(m.dead_letters, "dead", st.dead_letters_total)
        m.outbox_rows.set(st.rows)
        m.outbox_bytes.set(st.bytes)
        m.outbox_oldest_age.set(time.time() - st.oldest_created if st.oldest_created else 0.0)
        m.uplink_inflight.set(u.inflight)
        m.mqtt_connected.set(1 if self.client.connected and self.cloud.connected else 0)

    async def _watchdog(self, interval: float) -> None:
        """Ping systemd only while commits make progress: a wedged loop must get restarted."""
        while True:
            await asyncio.sleep(interval / 2)
            if time.monotonic() - self._last_commit < max(interval, 5 * self.cfg.outbox.commit_interval_s):
                self.notifier.watchdog()


def _trusted_keys(cfg: AgentConfig) -> dict[str, bytes]:
    keys: dict[str, bytes] = {}
    for path in cfg.models.trusted_keys:
        raw = load_public_key(path.read_bytes())
        keys[key_id(raw)] = raw
    return keys


def _deep_merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), dict) else v
    return out


def run_agent(cfg: AgentConfig, config_path: Path | None = None) -> int:
    setup_logging(cfg.log, cfg.node_id)
    return asyncio.run(Agent(cfg, config_path=config_path).run())
