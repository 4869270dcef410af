"""The node's status, retained on ``nodes/{node}/status``: what the cloud's fleet view and rollouts read."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Mapping

from edge_agent import __version__
from edge_agent.outbox.uplink import Uplink, UplinkStats
from edge_agent.pipeline.core import Pipeline
from edge_agent.pipeline.counters import ModelCounters, PipelineCounters
from edge_agent.protocol import messages as wire
from edge_agent.protocol import topics
from edge_agent.protocol.errors import MqttError
from edge_agent.transport.mqtt import MqttClient


def status_payload(
    node: str,
    *,
    online: bool,
    counters: PipelineCounters,
    model_counters: dict[str, ModelCounters],
    models: dict[str, wire.ModelStatus],
    uplink: UplinkStats | None = None,
    applied_generation: int = 0,
    overrides: Mapping[str, str | float] | None = None,
) -> bytes:
    """The encoded status; with no uplink yet (the MQTT will, built first) its counters read zero."""
    c = counters
    out: dict[str, float] = {
        "readings_in": float(c.readings),
        "raw_equivalent_bytes": float(c.raw_equivalent_bytes),
        "bytes_sent": float(uplink.bytes) if uplink is not None else 0.0,
        "summaries_sent": float(uplink.acked) if uplink is not None else 0.0,
        "rejected": float(sum(c.rejected.values())),
        "chat_messages": float(c.chat_messages),
    }
    report: dict[str, wire.ModelStatus] = {}
    for task, st in models.items():
        mc = model_counters.get(task)
        if mc is not None and st.state == "active":
            st = st.model_copy(
                update={
                    "samples": mc.samples,
                    "escalated": mc.escalated,
                    "errors": mc.errors,
                    "confidence_sum": mc.confidence_sum,
                }
            )
        report[task] = st
    out["anomaly_events"] = float(c.anomaly_events)
    out["hard_examples"] = float(c.hard_examples)
    out["sensor_uncertain"] = float(c.sensor_uncertain)
    out["sensor_hard_examples_dropped"] = float(c.sensor_hard_examples_dropped)
    return wire.dumps(
        wire.Status(
            node=node,
            online=online,
            ts=time.time(),
            agent_version=__version__,
            models=report,
            counters=out,
            applied_generation=applied_generation,
            overrides=dict(overrides or {}),
        )
    )


class StatusReporter:
    def __init__(
        self,
        cloud: MqttClient,
        node: str,
        pipeline: Pipeline,
        uplink: Uplink,
        models: dict[str, wire.ModelStatus],
        applied_generation: Callable[[], int],
        overrides: Callable[[], Mapping[str, str | float]] = dict,
    ) -> None:
        self._cloud = cloud
        self._node = node
        self._pipeline = pipeline
        self._uplink = uplink
        self._models = models
        self._generation = applied_generation
        self._overrides = overrides

    def payload(self, *, online: bool) -> bytes:
        return status_payload(
            self._node,
            online=online,
            counters=self._pipeline.counters,
            model_counters=self._pipeline.model_counters,
            models=self._models,
            uplink=self._uplink.stats,
            applied_generation=self._generation(),
            overrides=self._overrides(),
        )

    async def publish(self) -> None:
        """Best effort: the next interval or reconnect publishes again."""
        with contextlib.suppress(MqttError, TimeoutError):
            await self._cloud.publish(
                topics.status(self._node), self.payload(online=True), qos=1, retain=True, timeout=5.0
            )
