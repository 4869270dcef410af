"""Sensor hard examples on the edge: uncertain windows -> escalations + a capped sample upstream.

The sensor model is a real bundle run by the real onnxruntime: a hand-written
graph ``score = sigmoid(gain * x[0] + bias)`` over two metrics' window means,
so every score in these tests is known in advance. With a baseline of two
windows at 0 and the spec's scale floor of 1, a window whose metric ``a`` has
mean ``v`` is scored ``sigmoid(gain * sign(v) * log1p(|v|))``: 0 gives exactly
0.5 (uncertain), 10 gives 0.92 (an event), -10 gives 0.08 (confidently normal).
"""

from __future__ import annotations

import hashlib
import json
import math
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import paho.mqtt.client as paho
import pytest
from onnx import TensorProto, helper
from paho.mqtt.enums import CallbackAPIVersion

from edge_agent.config import AgentConfig, OutboxConfig, SensorConfig, WindowConfig
from edge_agent.models.features import FeatureSpec
from edge_agent.models.sensor_runtime import SensorModel, write_sensor_bundle
from edge_agent.pipeline.core import Pipeline
from edge_agent.protocol import messages as wire
from edge_agent.protocol import topics
from edgeloop_sim.broker import Broker
from edgeloop_sim.harness.agent import AgentProcess, agent_config

NODE = "n1"
DEVICE = "pump-1"
T0 = 1_700_000_000.0  # window-aligned event time of window 0 (1 s windows)
MODEL = "tiny-sensor@1"


def tiny_sensor_onnx(n_features: int, gain: float, bias: float = 0.0) -> bytes:
    """``features[N, n] @ W[n, 1] + B -> sigmoid -> score[N, 1]``, W picking feature 0 with ``gain``."""
    w = np.zeros((n_features, 1), dtype=np.float32)
    w[0, 0] = gain
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["features", "W"], ["z"]),
            helper.make_node("Add", ["z", "B"], ["zb"]),
            helper.make_node("Sigmoid", ["zb"], ["score"]),
        ],
        "tiny-sensor",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", n_features])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["N", 1])],
        [
            helper.make_tensor("W", TensorProto.FLOAT, [n_features, 1], w.flatten().tolist()),
            helper.make_tensor("B", TensorProto.FLOAT, [1], [bias]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def tiny_sensor_bundle(
    directory: Path,
    *,
    name: str = "tiny-sensor",
    version: str = "1",
    metrics: tuple[str, ...] = ("a", "b"),
    gain: float = 1.0,
    threshold: float = 0.5,
) -> Path:
    """A real sensor bundle (mean of each metric, 2 baseline windows, scale floor 1) for the runtime."""
    spec = FeatureSpec(
        metrics=metrics, stats=("mean",), window_s=1.0, baseline_windows=2, scale_floor=(1.0,) * len(metrics)
    )
    return write_sensor_bundle(
        directory,
        tiny_sensor_onnx(spec.n_features, gain),
        spec,
        threshold,
        {"name": name, "version": version, "metrics": {}},
    )


def score_of(v: float, gain: float = 1.0) -> float:
    return 1.0 / (1.0 + math.exp(-gain * math.copysign(math.log1p(abs(v)), v)))


def telemetry(values: list[float], first_window: int = 0) -> bytes:
    """One reading per 1 s window: metric ``a`` = the value, ``b`` = 0."""
    readings = [
        {"ts": T0 + first_window + i + 0.5, "values": {"a": v, "b": 0.0}} for i, v in enumerate(values)
    ]
    return json.dumps({"readings": readings}).encode()


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_sensor_bundle(tmp_path_factory.mktemp("sensor") / "bundle")


def pipeline(bundle: Path, **sensor: Any) -> Pipeline:
    cfg = AgentConfig(
        node_id=NODE,
        windows=WindowConfig(length_s=1.0),
        outbox=OutboxConfig(batch_max_delay_s=0.2),
        sensor=SensorConfig(**sensor),
    )
    p = Pipeline(cfg, clock=lambda: 1000.0)
    p.set_sensor_model(SensorModel(bundle).load(), MODEL)
    return p


def feed(p: Pipeline, values: list[float], now: float, first_window: int = 0) -> list[wire.HardExample]:
    """Telemetry in, every window closed at wall time ``now``; the hard examples the tick emits."""
    assert p.handle(topics.device_telemetry(DEVICE), telemetry(values, first_window), now) is None
    p.poll_windows(now, flush=True)
    seq = iter(range(1, 1_000_000))
    recs = [r for _, r in p.take_records(now, lambda: next(seq), force=True)]
    out = []
    for r in recs:
        if r.kind == "hard_example":
            assert r.topic == topics.hard_examples(NODE)
            out.append(wire.parse_json(wire.HardExample, r.payload))
    return out


def expected_id(start: float, model: str = MODEL) -> str:
    return hashlib.sha256(json.dumps([NODE, DEVICE, start, model]).encode()).hexdigest()[:32]


# --------------------------------------------------------------------------- the pipeline


def test_uncertain_windows_become_escalations_and_hard_examples(bundle: Path) -> None:
    values = [0.0, 0.0, 0.2, 10.0, -0.2, -10.0, 0.5]
    p = pipeline(bundle)
    hard = feed(p, values, now=1000.0)
    # Window 0 calibrates; windows 1..6 are scored; 1, 2, 4, 6 fall inside (0.35, 0.65).
    uncertain = [i for i in range(1, len(values)) if 0.35 < score_of(values[i]) < 0.65]
    assert uncertain == [1, 2, 4, 6]
    mc = p.model_counters["sensor"]
    assert (mc.samples, mc.escalated, mc.errors) == (6, 4, 0)
    expected_conf = sum(max(score_of(v), 1 - score_of(v)) for v in values[1:])
    assert mc.confidence_sum == pytest.approx(expected_conf, rel=1e-4)
    assert p.counters.anomaly_events == 3  # over the 0.5 threshold: windows 2, 3 and 6
    assert (p.counters.hard_examples, p.counters.sensor_hard_examples_dropped) == (4, 0)
    assert p.counters.sensor_uncertain == 4

    assert [h.student["start"] for h in hard] == [T0 + i for i in uncertain]
    for h, i in zip(hard, uncertain, strict=True):
        assert h.task == "sensor" and h.node == NODE and h.text is None and h.teacher is None
        assert h.created == 1000.0
        assert h.features is not None and len(h.features) == 2
        x0 = math.copysign(math.log1p(abs(values[i])), values[i])
        assert h.features[0] == pytest.approx(x0, abs=1e-5) and h.features[1] == 0.0
        assert all(f == round(f, 5) for f in h.features)
        s = h.student
        assert 0.35 < s["score"] < 0.65 and s["score"] == pytest.approx(score_of(values[i]), abs=1e-6)
        assert (s["model"], s["device"], s["end"]) == (MODEL, DEVICE, T0 + i + 1)
        assert h.id == expected_id(T0 + i)

    # A replay of the same windows (a restart re-reading them) yields the same ids: the cloud dedups.
    again = feed(pipeline(bundle), values, now=2000.0)
    assert [h.id for h in again] == [h.id for h in hard]
    # Another model's scores of the same windows are other examples.
    other = pipeline(bundle)
    other.set_sensor_model(SensorModel(bundle).load(), "tiny-sensor@2")
    assert {h.id for h in feed(other, values, now=1000.0)}.isdisjoint(h.id for h in hard)


def test_band_is_strict_and_comes_from_config(bundle: Path) -> None:
    # Score exactly 0.5 (values 0) is on the edge of (0.5, 0.7): not uncertain. 0.2 -> 0.545 is.
    p = pipeline(bundle, uncertain_band=(0.5, 0.7))
    hard = feed(p, [0.0, 0.0, 0.0, 0.2, 0.5, 10.0], now=1000.0)
    assert [h.student["start"] for h in hard] == [T0 + 3, T0 + 4]
    assert p.model_counters["sensor"].escalated == 2


def test_per_minute_cap_drops_and_counts_the_excess(bundle: Path) -> None:
    p = pipeline(bundle, max_hard_examples_per_minute=3)
    # 10 windows at 0: window 0 calibrates, 9 uncertain; 3 go upstream.
    first = feed(p, [0.0] * 10, now=1000.0)
    assert len(first) == 3 and p.counters.sensor_hard_examples_dropped == 6
    # 59.9 s later the cap is still full.
    assert feed(p, [0.0] * 5, now=1059.9, first_window=10) == []
    assert p.counters.sensor_hard_examples_dropped == 11
    # 60 s after the first three, three more.
    third = feed(p, [0.0] * 5, now=1060.0, first_window=15)
    assert [h.student["start"] for h in third] == [T0 + 15, T0 + 16, T0 + 17]
    assert p.counters.sensor_hard_examples_dropped == 13
    assert p.counters.hard_examples == 6
    assert p.model_counters["sensor"].escalated == 19  # every uncertain window, sent or not


@pytest.mark.parametrize("sensor", [{"hard_examples": False}, {"max_hard_examples_per_minute": 0}])
def test_disabled_sends_none_but_still_counts_escalations(bundle: Path, sensor: dict[str, Any]) -> None:
    p = pipeline(bundle, **sensor)
    assert feed(p, [0.0] * 6, now=1000.0) == []
    assert p.counters.hard_examples == 0
    assert p.model_counters["sensor"].escalated == 5
    dropped = 0 if sensor.get("hard_examples") is False else 5
    assert p.counters.sensor_hard_examples_dropped == dropped


def test_config_validates_the_band() -> None:
    from edge_agent.config import parse_config
    from edge_agent.protocol.errors import ConfigError

    assert parse_config({"node_id": NODE}).sensor.uncertain_band == (0.35, 0.65)
    for band in ([0.6, 0.4], [0.5, 0.5], [-0.1, 0.5], [0.2, 1.5]):
        with pytest.raises(ConfigError, match=r"sensor\.uncertain_band"):
            parse_config({"node_id": NODE, "sensor": {"uncertain_band": band}})
    with pytest.raises(ConfigError, match="max_hard_examples_per_minute"):
        parse_config({"node_id": NODE, "sensor": {"max_hard_examples_per_minute": -1}})


# --------------------------------------------------------------------------- a real agent process


class Collector:
    """A paho subscriber that signals (no polling) once it holds ``want`` messages of a topic."""

    def __init__(self, broker: Broker, topic: str) -> None:
        self.topic = topic
        self.messages: dict[str, list[bytes]] = {}
        self._cond = threading.Condition()
        self._subscribed = threading.Event()
        self.c = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"collect-{topic}", protocol=paho.MQTTv5)
        self.c.on_message = self._on_message
        self.c.on_subscribe = lambda *_a: self._subscribed.set()
        self.c.connect(broker.host, broker.port)
        self.c.loop_start()

    def subscribe(self, *topics_: str) -> None:
        for t in topics_:
            self._subscribed.clear()
            self.c.subscribe(t, qos=1)
            assert self._subscribed.wait(5), f"no SUBACK for {t}"

    def _on_message(self, _c: Any, _u: Any, m: paho.MQTTMessage) -> None:
        with self._cond:
            self.messages.setdefault(m.topic, []).append(bytes(m.payload))
            self._cond.notify_all()

    def wait_for(self, pred: Any, timeout: float, what: str) -> None:
        with self._cond:
            assert self._cond.wait_for(lambda: pred(self.messages), timeout), f"timed out waiting for {what}"

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


def test_agent_process_sends_sensor_hard_examples_upstream(
    tmp_path: Path, broker: Broker, bundle: Path
) -> None:
    cfg = agent_config(
        tmp_path,
        NODE,
        broker.port,
        windows={"length_s": 1.0, "idle_close_s": 0.3},
        models={"sensor_bundle": str(bundle)},
        sensor={"max_hard_examples_per_minute": 3},
        uplink={"status_interval_s": 0.2},
    )
    agent = AgentProcess(tmp_path, cfg)
    col = Collector(broker, topics.hard_examples(NODE))
    try:
        col.subscribe(topics.hard_examples(NODE), topics.status(NODE))
        agent.start()
        t0 = math.floor(time.time()) - 60  # recent event time, window-aligned
        values = [0.0, 0.0, 0.2, 10.0, -0.2, 0.0, 0.0]  # scored: 1..6; uncertain: 1, 2, 4, 5, 6
        readings = [{"ts": t0 + i + 0.5, "values": {"a": v, "b": 0.0}} for i, v in enumerate(values)]
        pub = col.c.publish(
            topics.device_telemetry(DEVICE), json.dumps({"readings": readings}).encode(), qos=1
        )
        pub.wait_for_publish(5)
        hx = topics.hard_examples(NODE)
        col.wait_for(lambda m: len(m.get(hx, [])) >= 3, 15, "3 sensor hard examples")

        def sensor_status(m: dict[str, list[bytes]]) -> dict[str, Any] | None:
            for raw in reversed(m.get(topics.status(NODE), [])):
                st = json.loads(raw)
                if st["models"].get("sensor", {}).get("escalated") == 5:
                    return dict(st)
            return None

        col.wait_for(lambda m: sensor_status(m) is not None, 10, "a status with 5 sensor escalations")
        hard = [wire.parse_json(wire.HardExample, raw) for raw in col.messages[hx]]
        status = sensor_status(col.messages)
        assert status is not None
    finally:
        col.close()
        agent.close()
    assert len(hard) == 3  # the cap: windows 1, 2, 4 go; 5 and 6 are dropped
    model = MODEL
    assert [h.student["start"] for h in hard] == [t0 + 1, t0 + 2, t0 + 4]
    for h in hard:
        assert h.task == "sensor" and h.teacher is None and h.features is not None and len(h.features) == 2
        assert 0.35 < h.student["score"] < 0.65 and h.student["model"] == model
        key = json.dumps([NODE, DEVICE, h.student["start"], model]).encode()
        assert h.id == hashlib.sha256(key).hexdigest()[:32]
    assert status["models"]["sensor"]["samples"] == 6
    assert status["counters"]["hard_examples"] == 3
    assert status["counters"]["sensor_hard_examples_dropped"] == 2
