"""Once a second: expire old outbox rows, copy counters into Prometheus, trim the heap, report status."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from edge_agent.config import AgentConfig
from edge_agent.escalation.escalator import Escalator
from edge_agent.ops.heap import HeapTrimmer
from edge_agent.ops.metrics import AgentMetrics
from edge_agent.outbox.agent_store import AgentStore
from edge_agent.outbox.uplink import Uplink
from edge_agent.pipeline.core import Pipeline
from edge_agent.pipeline.counters import ModelCounters
from edge_agent.services.status import StatusReporter
from edge_agent.transport.mqtt import MqttClient

log = logging.getLogger(__name__)


class Housekeeping:
    def __init__(
        self,
        store: AgentStore,
        pipeline: Pipeline,
        uplink: Uplink,
        escalator: Escalator | None,
        metrics: AgentMetrics,
        status: StatusReporter,
        connections: tuple[MqttClient, MqttClient],
        *,
        config: Callable[[], AgentConfig],
    ) -> None:
        self._store = store
        self._pipeline = pipeline
        self._uplink = uplink
        self._escalator = escalator
        self._metrics = metrics
        self._status = status
        self._connections = connections
        self._config = config
        self.heap = HeapTrimmer(config().heap_trim_interval_s)
        self._synced: dict[str, float] = {}
        self._synced_sensor: ModelCounters | None = None  # the object _synced["sensor_scored"] counts

    async def run(self) -> None:
        last_status = time.monotonic()
        while True:
            await asyncio.sleep(1.0)
            expired = await self._store.expire(time.time())
            if expired:
                log.warning("outbox records expired by age", extra={"count": expired})
            await self.sync_metrics()
            c = self._pipeline.counters
            cfg = self._config()
            self.heap.interval_s = cfg.heap_trim_interval_s  # follows a reload
            self.heap.maybe_trim(time.monotonic(), float(sum(c.messages.values()) + self._uplink.stats.acked))
            if time.monotonic() - last_status >= cfg.uplink.status_interval_s:
                last_status = time.monotonic()
                await self._status.publish()

    async def sync_metrics(self) -> None:
        """Copy plain counters into Prometheus once a second: the hot path stays free of locks."""
        m, c, u = self._metrics, self._pipeline.counters, self._uplink.stats

        def bump(counter: object, key: str, value: float) -> None:
            delta = value - self._synced.get(key, 0.0)
            if delta > 0:
                counter.inc(delta)  # type: ignore[attr-defined]
                self._synced[key] = value

        for kind, n in c.messages.items():
            bump(m.messages_in.labels(kind=kind), f"msg:{kind}", n)
        for reason, n in c.rejected.items():
            bump(m.rejected.labels(reason=reason), f"rej:{reason}", n)
        for reason, n in c.device_errors.items():
            bump(m.device_errors.labels(reason=reason), f"deverr:{reason}", n)
        bump(m.device_errors_suppressed, "deverr_suppressed", c.device_errors_suppressed)
        bump(m.readings_in, "readings", c.readings)
        bump(m.raw_equivalent_bytes, "raw", c.raw_equivalent_bytes)
        bump(m.windows_emitted, "windows", c.windows_emitted)
        bump(m.windows_dead_lettered, "windows_dead", c.windows_dead_lettered)
        bump(m.readings_dead_lettered, "readings_dead", c.readings_dead_lettered)
        bump(m.summaries_enqueued, "summaries", c.summaries)
        bump(m.uplink_published, "pub", u.published)
        bump(m.uplink_acked, "acked", u.acked)
        bump(m.uplink_bytes, "ubytes", u.bytes)
        for event, n in c.dialogue.items():
            bump(m.dialogue_events.labels(event=event), f"dlg:{event}", n)
        for source, n in c.chat_by_source.items():
            bump(m.chat_messages.labels(source=source), f"chat:{source}", n)
        # The sensor model's counters restart from zero, as a new object, with each model:
        # sync the new one from zero. Windows scored by the old model after the last sync are
        # not counted (at most a second's worth, once per swap).
        sensor = self._pipeline.model_counters["sensor"]
        if sensor is not self._synced_sensor:
            self._synced_sensor = sensor
            self._synced.pop("sensor_scored", None)
        bump(m.sensor_windows_scored, "sensor_scored", sensor.samples)
        bump(m.sensor_uncertain, "sensor_uncertain", c.sensor_uncertain)
        bump(m.hard_examples, "hard", c.hard_examples)
        bump(m.sensor_hard_examples_dropped, "sensor_hard_dropped", c.sensor_hard_examples_dropped)
        if self._escalator is not None:
            for outcome, n in self._escalator.stats.as_dict().items():
                bump(m.escalations.labels(outcome=outcome), f"esc:{outcome}", n)
        st = await self._store.stats()
        bump(m.outbox_dropped.labels(reason="full"), "drop:full", st.dropped_full_total)
        bump(m.outbox_dropped.labels(reason="age"), "drop:age", st.dropped_age_total)
        bump(m.outbox_dropped.labels(reason="refused"), "drop:refused", st.rejected_full_total)
        bump(m.dead_letters, "dead", st.dead_letters_total)
        m.outbox_rows.set(st.rows)
        m.outbox_bytes.set(st.bytes)
        m.outbox_oldest_age.set(time.time() - st.oldest_created if st.oldest_created else 0.0)
        m.uplink_inflight.set(u.inflight)
        m.mqtt_connected.set(1 if all(conn.connected for conn in self._connections) else 0)
