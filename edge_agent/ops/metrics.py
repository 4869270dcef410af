"""Prometheus metrics for the edge agent.

Each :class:`AgentMetrics` owns its own ``CollectorRegistry`` rather than using
the process-global one: tests (and the replay simulator) run several agents in
one process, and the global registry refuses a second metric of the same name.
Constructing it registers metrics in memory only; the HTTP endpoint is started
explicitly with :meth:`AgentMetrics.start_http`.
"""

from __future__ import annotations

import logging
import threading
from wsgiref.simple_server import WSGIServer

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    start_http_server,
)

log = logging.getLogger(__name__)

__all__ = ["PREFIX", "AgentMetrics"]

PREFIX = "edgeloop_agent_"

# Single-sample inference on a small ONNX model takes tens of microseconds up to
# a few hundred milliseconds for a sentence encoder on a weak CPU.
_INFERENCE_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)

# A chat turn: a local answer in milliseconds, an escalation up to its timeout (5 s by default, retries more).
_TURN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class AgentMetrics:
    """All agent metrics, in a private registry.

    Attributes are the prometheus_client metric objects themselves, so callers
    use the normal API: ``metrics.messages_in.labels(kind="telemetry").inc()``.
    """

    def __init__(self, version: str = "unknown") -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        p = PREFIX

        # Intake. prometheus_client appends _total to counters itself.
        self.messages_in = Counter(
            f"{p}messages_in", "MQTT messages received from devices", ["kind"], registry=r
        )
        self.readings_in = Counter(f"{p}readings_in", "Sensor readings accepted", registry=r)
        self.rejected = Counter(f"{p}rejected", "Inbound messages rejected", ["reason"], registry=r)
        self.device_errors = Counter(
            f"{p}device_errors", "Refusals answered on the device's error topic", ["reason"], registry=r
        )
        self.device_errors_suppressed = Counter(
            f"{p}device_errors_suppressed", "Refusals not answered (per-device or global cap)", registry=r
        )
        self.dead_letters = Counter(f"{p}dead_letters", "Messages stored as dead letters", registry=r)

        # Preprocessing.
        self.windows_emitted = Counter(f"{p}windows_emitted", "Aggregation windows closed", registry=r)
        self.windows_dead_lettered = Counter(
            f"{p}windows_dead_lettered", "Closed windows with no valid summary, dead-lettered", registry=r
        )
        self.readings_dead_lettered = Counter(
            f"{p}readings_dead_lettered", "Readings in dead-lettered windows", registry=r
        )
        self.summaries_enqueued = Counter(
            f"{p}summaries_enqueued", "Window summaries written to the outbox", registry=r
        )

        # Outbox.
        self.outbox_dropped = Counter(
            f"{p}outbox_dropped", "Outbox entries dropped (full, too old, refused)", ["reason"], registry=r
        )
        self.outbox_rows = Gauge(f"{p}outbox_rows", "Rows waiting in the outbox", registry=r)
        self.outbox_bytes = Gauge(f"{p}outbox_bytes", "Payload bytes waiting in the outbox", registry=r)
        self.outbox_oldest_age = Gauge(
            f"{p}outbox_oldest_age_seconds", "Age of the oldest outbox entry", registry=r
        )

        # Uplink.
        self.uplink_published = Counter(f"{p}uplink_published", "Batches published to the cloud", registry=r)
        self.uplink_acked = Counter(f"{p}uplink_acked", "Batches acknowledged by the broker", registry=r)
        self.uplink_bytes = Counter(f"{p}uplink_bytes", "Payload bytes published to the cloud", registry=r)
        self.uplink_inflight = Gauge(f"{p}uplink_inflight", "Published batches awaiting PUBACK", registry=r)
        self.uplink_errors = Counter(f"{p}uplink_errors", "Uplink errors", ["kind"], registry=r)
        self.raw_equivalent_bytes = Counter(
            f"{p}raw_equivalent_bytes",
            "Bytes that forwarding every reading as JSON would have cost (for the savings ratio)",
            registry=r,
        )

        # Connection.
        self.mqtt_connected = Gauge(f"{p}mqtt_connected", "1 while connected to the broker", registry=r)
        self.mqtt_reconnects = Counter(f"{p}mqtt_reconnects", "Broker reconnections", registry=r)

        # Chat and inference.
        self.chat_messages = Counter(f"{p}chat_messages", "Chat messages handled", ["source"], registry=r)
        self.escalations = Counter(
            f"{p}escalations", "Chat escalations to the cloud", ["outcome"], registry=r
        )
        # Dialogue state sync: merged (teacher state adopted), rolled_back, answer_for_gone_session,
        # duplicate_answer, stale_answer (the last three: answers dropped).
        self.dialogue_events = Counter(
            f"{p}dialogue_events", "Dialogue state outcomes of chat turns", ["event"], registry=r
        )
        self.inference_seconds = Histogram(
            f"{p}inference_seconds",
            "Local model inference latency",
            ["model"],
            buckets=_INFERENCE_BUCKETS,
            registry=r,
        )
        # Arrival to answer applied, per answer source. Traced turns attach their trace id as an exemplar
        # (shown by an OpenMetrics scrape), so the slow bucket of a p99 links to the trace that filled it.
        self.chat_turn_seconds = Histogram(
            f"{p}chat_turn_seconds",
            "Chat turn latency, utterance received to answer applied",
            ["source"],
            buckets=_TURN_BUCKETS,
            registry=r,
        )
        self.model_loaded = Gauge(
            f"{p}model_loaded", "1 for the model version currently loaded", ["model", "version"], registry=r
        )

        # Sensor escalation. Uncertain / scored is the sensor model's escalation rate; it is
        # counted whether or not a hard example is sent, so it measures the model, not the cap.
        self.sensor_windows_scored = Counter(
            f"{p}sensor_windows_scored", "Sensor windows scored by the anomaly model", registry=r
        )
        self.sensor_uncertain = Counter(
            f"{p}sensor_uncertain", "Sensor windows scored inside the uncertainty band", registry=r
        )
        # Unlabelled: the pipeline keeps one count for chat and sensor together, and a split
        # derived from the sensor counters would be wrong while sensor hard examples are off.
        self.hard_examples = Counter(
            f"{p}hard_examples", "Hard examples enqueued for the cloud (chat and sensor)", registry=r
        )
        self.sensor_hard_examples_dropped = Counter(
            f"{p}sensor_hard_examples_dropped",
            "Uncertain sensor windows not sent upstream (over the per-minute cap, or not representable)",
            registry=r,
        )
        # Agent lifecycle.
        self.config_reload_failures = Counter(
            f"{p}config_reload_failures", "SIGHUP reloads rejected (the running config was kept)", registry=r
        )
        self.build_info = Gauge(f"{p}build_info", "Agent build information", ["version"], registry=r)
        self.build_info.labels(version=version).set(1)

        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    def set_model_loaded(self, model: str, version: str) -> None:
        """Mark ``version`` as the loaded one, clearing the model's previous versions.

        Without the clearing an old version would keep exporting 1 forever after a swap.
        """
        for labels in list(self._label_sets(self.model_loaded)):
            if labels.get("model") == model and labels.get("version") != version:
                self.model_loaded.remove(model, labels["version"])
        self.model_loaded.labels(model=model, version=version).set(1)

    @staticmethod
    def _label_sets(metric: Gauge) -> list[dict[str, str]]:
        out: list[dict[str, str]] = []
        for family in metric.collect():
            for sample in family.samples:
                out.append(dict(sample.labels))
        return out

    def render(self) -> bytes:
        """The text exposition format, as a scrape would return it."""
        return generate_latest(self.registry)

    @property
    def port(self) -> int | None:
        return None if self._server is None else int(self._server.server_address[1])

    def start_http(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Serve /metrics from a daemon thread; return the bound port (``port=0`` picks one)."""
        if self._server is not None:
            raise RuntimeError(f"metrics endpoint already running on port {self.port}")
        # prometheus_client >= 0.20 returns the server and its thread; that is what
        # lets us learn the port the kernel picked and shut the server down again.
        server, thread = start_http_server(port, addr=host, registry=self.registry)
        self._server, self._thread = server, thread
        bound = int(server.server_address[1])
        log.info("metrics endpoint on http://%s:%d/metrics", host, bound)
        return bound

    def stop_http(self, timeout: float = 5.0) -> None:
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is None:
            return
        server.shutdown()  # blocks until serve_forever() returns
        server.server_close()
        if thread is not None:
            thread.join(timeout)
