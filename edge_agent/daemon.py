"""The edge agent daemon: builds the objects of one node and runs them as supervised tasks.

It only wires. A reading's path does not come back through here: MQTT
(:mod:`.inbound`) -> pipeline (:mod:`.pipeline.core`) -> commit tick
(:mod:`.tick`) -> outbox -> uplink. The daemon owns the lifecycle: start in
order, drain on SIGTERM within ``shutdown_timeout_s``, reload on SIGHUP.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Mapping
from pathlib import Path

from edge_agent import __version__
from edge_agent.config import AgentConfig, load_config
from edge_agent.escalation.answer_cache import AnswerCache
from edge_agent.escalation.budget import EscalationBudget
from edge_agent.escalation.escalator import Escalator
from edge_agent.ops.gc_freeze import freeze_startup_heap
from edge_agent.ops.logs import setup_logging
from edge_agent.ops.metrics import AgentMetrics
from edge_agent.ops.sdnotify import Notifier, watchdog_interval
from edge_agent.ops.tasks import Supervisor
from edge_agent.ops.tracing import configure as configure_tracing
from edge_agent.outbox.agent_store import AgentStore
from edge_agent.outbox.uplink import Uplink
from edge_agent.pipeline.core import Pipeline
from edge_agent.protocol import topics
from edge_agent.protocol.errors import ConfigError, MqttError
from edge_agent.protocol.manifest import key_id, load_public_key
from edge_agent.services.active_models import ActiveModels
from edge_agent.services.chat_answers import ChatAnswers, ReplyPublisher
from edge_agent.services.desired_apply import DesiredStateApplier
from edge_agent.services.housekeeping import Housekeeping
from edge_agent.services.inbound import Inbound
from edge_agent.services.node_methods import NodeView, node_methods
from edge_agent.services.remote_methods import RemoteMethods
from edge_agent.services.runtime_overrides import RuntimeOverrides
from edge_agent.services.status import StatusReporter, status_payload
from edge_agent.tick import CommitTick
from edge_agent.transport.mqtt import MqttClient, Will
from edge_agent.transport.redelivery import RedeliveryGuard
from edge_agent.updates.activate import default_health_check, default_loaders
from edge_agent.updates.manager import ModelManager

log = logging.getLogger(__name__)


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
        # NOOP (nothing imported, nothing allocated) unless an OTLP endpoint is configured.
        self.tracing = configure_tracing(
            cfg.tracing.service_name,
            cfg.tracing.endpoint,
            environ=self._environ,
            attributes={"edgeloop.node": cfg.node_id, "service.instance.id": cfg.node_id},
        )
        self.store = AgentStore(cfg.db_path, cfg.outbox)
        self.pipeline = Pipeline(cfg)
        self.redelivery = RedeliveryGuard()
        self.tasks = Supervisor("edge-agent")
        config = self._config
        offline = status_payload(
            cfg.node_id,
            online=False,
            counters=self.pipeline.counters,
            model_counters=self.pipeline.model_counters,
            models={},
        )
        will = Will(topics.status(cfg.node_id), offline)
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
                retries=esc.retries,
                tracing=self.tracing,
            )
        self.model_manager = ModelManager(
            cfg.state_dir, self.cloud, _trusted_keys(cfg), default_loaders(), default_health_check
        )
        self.models = ActiveModels(self.pipeline, self.model_manager, self.metrics, config=config)
        self.replies = ReplyPublisher(self.client, self.metrics)
        self.tick = CommitTick(
            self.pipeline,
            self.redelivery,
            self.store,
            self.client,
            self.uplink,
            config=config,
            send_reply=self.replies.offer,
        )
        self.chat = ChatAnswers(
            self.pipeline,
            self.redelivery,
            self.tick,
            self.models,
            self.escalator,
            self.metrics,
            config=config,
            tracing=self.tracing,
        )
        self.overrides = RuntimeOverrides(self.store, self.escalator.budget if self.escalator else None)
        self.status = StatusReporter(
            self.cloud,
            cfg.node_id,
            self.pipeline,
            self.uplink,
            self.models.status,
            lambda: self.desired.applied_generation,
            self.overrides.snapshot,
        )
        self.desired = DesiredStateApplier(
            cfg.node_id,
            cfg,
            self.pipeline,
            self.models,
            self.model_manager,
            self.store,
            self.tasks,
            adopt_config=self._adopt_config,
            publish_status=self.status.publish,
        )
        self.housekeeping = Housekeeping(
            self.store,
            self.pipeline,
            self.uplink,
            self.escalator,
            self.metrics,
            self.status,
            (self.client, self.cloud),
            config=config,
        )
        self.inbound = Inbound(
            cfg.node_id,
            self.client,
            self.cloud,
            self.pipeline,
            self.redelivery,
            self.tick,
            self.chat,
            self.desired,
        )
        self.calls = RemoteMethods(
            cfg.node_id,
            self.cloud,
            lambda: self.cfg.calls,
            node_methods(
                NodeView(
                    cfg.node_id,
                    self.pipeline,
                    self.store,
                    self.uplink,
                    self.models.status,
                    self.overrides,
                    self.escalator.budget if self.escalator else None,
                    self.escalator.stats.as_dict if self.escalator else dict,
                    (self.client,) if self.cloud is self.client else (self.client, self.cloud),
                    self.status.publish,
                    lambda: self.calls.outcomes,
                )
            ),
            tracing=self.tracing,
        )
        self._stop = asyncio.Event()
        self.exit_code = 0
        self.metrics_port: int | None = None

    def _config(self) -> AgentConfig:
        return self.cfg

    def _adopt_config(self, cfg: AgentConfig) -> None:
        self.cfg = cfg

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
        await self.desired.load()
        await self.overrides.load()
        if self.cfg.metrics.enabled:
            self.metrics_port = self.metrics.start_http(self.cfg.metrics.host, self.cfg.metrics.port)
        await self.models.load_configured()
        await self.model_manager.load_active()
        self.models.sync_from_manager()
        if self.cfg.calls.enabled:
            await self.calls.start()  # subscribes with the first connect
        self.client.add_on_connect(self._on_connect)
        await self.client.start()
        if self.cloud is not self.client:
            self.cloud.add_on_connect(self._on_cloud_connect)
            await self.cloud.start()
            self.tasks.spawn("cloud-ingest", self.inbound.cloud)
        if self.escalator is not None:
            await self.escalator.start()
        for i in range(self.cfg.chat.workers):
            self.tasks.spawn(f"chat-{i}", self.chat.worker)
        self.tasks.spawn("ingest", self.inbound.devices)
        self.tasks.spawn("commit", self.tick.run)
        self.tasks.spawn("uplink", self.uplink.run)
        self.tasks.spawn("replies", self.replies.run)
        self.tasks.spawn("housekeeping", self.housekeeping.run)
        wd = self.cfg.watchdog_interval_s or watchdog_interval(self._environ)
        if wd:
            self.tasks.spawn("watchdog", lambda: self._watchdog(wd))
        freeze_startup_heap()  # everything built so far lives as long as the agent
        self.housekeeping.heap.trim_now()  # what imports and config parsing freed goes back to the OS
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
        await self.tick.final_commit(lambda: self.tasks.cancel("commit"))
        drained = True
        if self.cloud.connected:
            drained = await self.uplink.wait_idle(max(0.0, deadline - time.monotonic()))
        if self.cloud.connected:
            with contextlib.suppress(MqttError, TimeoutError):
                await asyncio.wait_for(
                    self.cloud.publish(
                        topics.status(self.cfg.node_id),
                        self.status.payload(online=False),
                        qos=1,
                        retain=True,
                    ),
                    timeout=max(0.1, min(2.0, deadline - time.monotonic())),
                )
        await self.tasks.stop()
        await self.model_manager.stop()
        if self.escalator is not None:
            await self.escalator.stop()
        await self.client.stop()
        if self.cloud is not self.client:
            await self.cloud.stop()
        await self.store.close()
        self.metrics.stop_http()
        await asyncio.to_thread(self.tracing.shutdown)  # export the last spans
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

    async def _on_connect(self) -> None:
        self.notifier.status(
            f"connected: node {self.cfg.node_id}, broker {self.cfg.mqtt.host}:{self.cfg.mqtt.port}, "
            f"metrics port {self.metrics_port}"
        )
        if self.cloud is self.client:
            await self._on_cloud_connect()

    async def _on_cloud_connect(self) -> None:
        await self.status.publish()
        self.uplink.wake()

    async def _watchdog(self, interval: float) -> None:
        """Ping systemd only while commits make progress: a wedged loop must get restarted."""
        while True:
            await asyncio.sleep(interval / 2)
            if time.monotonic() - self.tick.last_commit < max(
                interval, 5 * self.cfg.outbox.commit_interval_s
            ):
                self.notifier.watchdog()


def _trusted_keys(cfg: AgentConfig) -> dict[str, bytes]:
    keys: dict[str, bytes] = {}
    for path in cfg.models.trusted_keys:
        raw = load_public_key(path.read_bytes())
        keys[key_id(raw)] = raw
    return keys


def run_agent(cfg: AgentConfig, config_path: Path | None = None) -> int:
    setup_logging(cfg.log, cfg.node_id)
    return asyncio.run(Agent(cfg, config_path=config_path).run())
