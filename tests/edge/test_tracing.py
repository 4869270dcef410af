"""One trace per request: device -> agent -> broker -> teacher -> merge, on real processes and a real broker.

The agent runs as its own process with ``tracing.endpoint`` set; the teacher
service and the cloud-side caller run here with tracing to the same endpoint;
the endpoint is :class:`~edgeloop_sim.trace_collector.TraceCollector`, which
decodes the OTLP/HTTP protobuf the real exporters send. The dialogue is the
demo's (:mod:`edgeloop_sim.demo_dialogue`): three booking turns, the middle one
forced to the teacher by a ``config.set`` call.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path

import pytest

pytest.importorskip("opentelemetry.sdk")
pytest.importorskip("onnx")

from cloud_controller.calls.node_calls import NodeCalls
from cloud_controller.teachers.chat_service import TeacherService
from cloud_controller.teachers.teacher_backend import TeacherAnswer
from edge_agent.config import MqttConfig
from edge_agent.ops import tracing
from edge_agent.protocol import messages as wire
from edge_agent.protocol import topics
from edge_agent.transport.mqtt import MqttClient
from edgeloop_sim.broker import Broker
from edgeloop_sim.demo_dialogue import play_dialogue
from edgeloop_sim.dialogue_replay import unsure_chat_bundle
from edgeloop_sim.harness.agent import AgentProcess, agent_config
from edgeloop_sim.trace_collector import CollectedSpan, TraceCollector, render_tree

NODE = "node-t"
DEVICE = "dev-1"
FAST_EXPORT = {"OTEL_BSP_SCHEDULE_DELAY": "100"}


class BookingTeacher:
    """Fills one slot named after the utterance's first word, so what the teacher added is traceable."""

    version = "booking-1"

    def predict_batch(self, texts: Sequence[str]) -> list[TeacherAnswer]:
        return [TeacherAnswer("BookRestaurant", {f"said_{t.split()[0]}": t.split()[-1]}, 0.95) for t in texts]


def _wait_spans(collector: TraceCollector, pred: object, what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():  # type: ignore[operator]
        if time.monotonic() > deadline:
            tree = "\n".join(render_tree(collector.snapshot()))
            raise AssertionError(f"timed out waiting for {what}; collected:\n{tree}")
        time.sleep(0.05)


def _one(spans: list[CollectedSpan], name: str, service: str | None = None) -> CollectedSpan:
    found = [s for s in spans if s.name == name and (service is None or s.service == service)]
    assert len(found) == 1, (name, service, [(s.name, s.service) for s in spans])
    return found[0]


def _metrics_port(agent: AgentProcess) -> int:
    for m in agent.notify.wait_for("STATUS=running*"):
        if "metrics port" in m:
            return int(m.rsplit("metrics port", 1)[1].split()[0].strip(","))
    raise AssertionError("no metrics port in the agent's status")


def test_one_trace_from_device_to_teacher_and_back(tmp_path: Path, broker: Broker) -> None:
    bundle = unsure_chat_bundle(tmp_path / "student")  # confidence 0.5, intent "unsure", no slots
    with TraceCollector() as collector:
        cfg = agent_config(
            tmp_path,
            NODE,
            broker.port,
            devices={"allowed": [DEVICE], "allow_unknown": False},
            models={"chat_bundle": str(bundle)},
            # Threshold 0.4: the student's 0.5 stays local unless a call raises the threshold.
            chat={"escalation": {"enabled": True, "mode": "threshold", "threshold": 0.4, "timeout_s": 5.0}},
            tracing={"endpoint": collector.endpoint},
        )
        agent = AgentProcess(tmp_path, cfg)
        agent.start(extra_env=FAST_EXPORT)
        try:
            cloud = tracing.configure("cloud-controller", collector.endpoint, environ=FAST_EXPORT)
            assert cloud.enabled
            result, untraced_msg = asyncio.run(_scenario(broker, cloud))
            cloud.shutdown()
            port = _metrics_port(agent)
            req = urllib.request.Request(
                f"http://127.0.0.1:{port}/metrics", headers={"Accept": "application/openmetrics-text"}
            )
            with urllib.request.urlopen(req, timeout=5) as resp:
                exposition = resp.read().decode()
        finally:
            assert agent.terminate() == 0
            agent.close()

        turns = result["turns"]
        assert [t["source"] for t in turns] == ["edge", "cloud", "edge"], turns
        assert result["middle_escalated"]
        assert [t["state"]["version"] for t in turns] == [1, 2, 3]
        # What the teacher filled in the escalated turn is still there after the next (local) turn.
        assert turns[1]["state"]["slots"] == {"said_actually": "colleagues"}
        assert turns[2]["state"]["slots"] == {"said_actually": "colleagues"}
        assert result["slots_survive"]

        middle = turns[1]["trace_id"]
        _wait_spans(
            collector,
            lambda: {"chat.merge", "teacher.predict"} <= {s.name for s in collector.trace(middle)},
            "the escalated turn's spans",
        )
        spans = collector.trace(middle)
        print("\n".join(render_tree(spans)))
        turn = _one(spans, "chat.turn", "edge-agent")
        assert turn.parent_id is not None and turn.parent_id not in {s.span_id for s in spans}  # the device's
        assert turn.attributes["source"] == "cloud" and turn.attributes["escalated"] is True
        for child in ("chat.validate", "chat.queue", "chat.student", "chat.escalate", "chat.merge"):
            assert _one(spans, child, "edge-agent").parent_id == turn.span_id, child
        esc = _one(spans, "chat.escalate")
        rpc = _one(spans, "escalation.rpc", "edge-agent")
        assert rpc.parent_id == esc.span_id
        hop = _one(spans, "broker.hop", "cloud-controller")
        teacher = _one(spans, "teacher.escalation", "cloud-controller")
        assert hop.parent_id == rpc.span_id and teacher.parent_id == rpc.span_id
        assert teacher.attributes["node"] == NODE
        for child in ("teacher.queue", "teacher.predict"):
            assert _one(spans, child, "cloud-controller").parent_id == teacher.span_id
        # Nested in time too: the teacher answered inside the edge's request, the merge came after it.
        assert rpc.start_ns <= teacher.start_ns and teacher.end_ns <= rpc.end_ns
        assert _one(spans, "chat.merge").start_ns >= rpc.end_ns

        # A local turn: the device's trace continued, no teacher in it.
        first = turns[0]["trace_id"]
        _wait_spans(collector, lambda: "chat.merge" in {s.name for s in collector.trace(first)}, "turn 1")
        names = {s.name for s in collector.trace(first)}
        assert "chat.turn" in names and not any(n.startswith("teacher.") for n in names)

        # An utterance without a traceparent: the agent starts a trace of its own.
        def own() -> list[CollectedSpan]:
            return [
                s
                for s in collector.snapshot()
                if s.name == "chat.turn" and s.attributes.get("msg_id") == untraced_msg
            ]

        _wait_spans(collector, lambda: bool(own()), "the untraced utterance's turn")
        assert own()[0].parent_id is None
        assert own()[0].trace_id not in {t["trace_id"] for t in turns}

        # The cloud's calls into the node are traced the same way: client span here, server span on the node.
        def calls(service: str) -> list[CollectedSpan]:
            return [s for s in collector.snapshot() if s.name == "call config.set" and s.service == service]

        _wait_spans(collector, lambda: len(calls("edge-agent")) == 2, "the node's call spans")
        client_spans = {s.span_id for s in calls("cloud-controller")}
        assert all(s.parent_id in client_spans for s in calls("edge-agent"))

        # Exemplars: the turn latency histogram links its buckets to trace ids (OpenMetrics scrape).
        assert f'trace_id="{middle}"' in exposition, exposition[-2000:]


async def _scenario(broker: Broker, cloud: tracing.Tracing) -> tuple[dict[str, object], str]:
    cfg = MqttConfig(host=broker.host, port=broker.port)
    tc = MqttClient(cfg, "teacher-1", clean_start=True, name="teacher")
    await tc.start()
    await tc.wait_connected(5)
    svc = TeacherService(tc, BookingTeacher(), tracing=cloud)  # type: ignore[arg-type]
    await svc.start()
    try:
        result = await play_dialogue(broker.host, broker.port, NODE, DEVICE, "s-book", cloud, 15.0)
        # One more utterance, sent without a traceparent.
        dev = MqttClient(cfg, "dev-plain", clean_start=True, name="dev")
        await dev.start()
        await dev.wait_connected(5)
        msg_id = "plain-1"
        await dev.publish(
            topics.device_chat_in(DEVICE),
            wire.dumps(wire.ChatIn(session_id="s-plain", msg_id=msg_id, text="hello", ts=time.time())),
            qos=1,
        )
        await dev.stop()
        # A traced read call too (NodeCalls on the teacher's connection: any client may carry it).
        await NodeCalls(tc, tracing=cloud).call(NODE, "model.info", timeout=5)
    finally:
        await svc.stop()
        await tc.stop()
    return result, msg_id


def test_tracing_off_imports_no_opentelemetry(tmp_path: Path) -> None:
    """The edge with tracing off (the default) never loads OpenTelemetry, even with it installed."""
    code = (
        "import sys\n"
        "from edge_agent.config import AgentConfig\n"
        "from edge_agent.daemon import Agent\n"
        f"cfg = AgentConfig(node_id='n1', state_dir={str(tmp_path)!r})\n"
        "a = Agent(cfg, environ={})\n"
        "assert not a.tracing.enabled\n"
        "bad = sorted(m for m in sys.modules if m.startswith('opentelemetry'))\n"
        "assert not bad, bad\n"
        "print('ok')\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


def test_configure_reads_the_standard_variables() -> None:
    assert tracing.configure("x", environ={}) is tracing.NOOP
    assert (
        tracing.endpoint_from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318/"})
        == "http://c:4318/v1/traces"
    )
    assert tracing.endpoint_from_env({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c/t"}) == "http://c/t"
    off = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_SDK_DISABLED": "true"}
    assert tracing.configure("x", environ=off) is tracing.NOOP
    on = tracing.configure("x", environ={"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9"})
    try:
        assert on.enabled
    finally:
        on.shutdown()


def test_noop_and_malformed_traceparents() -> None:
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    noop = tracing.NOOP
    with noop.start("x") as s:
        s.set("k", 1)
    assert s.trace_id is None and noop.inject(s) == [] and noop.extract(object()) is None

    exporter = InMemorySpanExporter()
    tr = tracing.configure("svc", exporter=exporter, environ={"OTEL_BSP_SCHEDULE_DELAY": "10"})

    class Props:
        UserProperty: list[tuple[str, str]] = []

    p = Props()
    for bad in ("garbage", "00-" + "0" * 32 + "-" + "0" * 16 + "-01", "00-xyz"):
        p.UserProperty = [("traceparent", bad)]
        assert tr.extract(p) is None, bad  # refused: the agent starts its own trace
    parent = tr.start("device")
    p.UserProperty = tr.inject(parent)
    assert dict(p.UserProperty)["traceparent"].split("-")[1] == parent.trace_id
    child = tracing.serve_span(tr, "served", p)
    child.end()
    parent.end()
    tr.shutdown()
    got = {s.name: s for s in exporter.get_finished_spans()}
    assert got["served"].context.trace_id == got["device"].context.trace_id
    assert got["served"].parent is not None and got["served"].parent.span_id == got["device"].context.span_id
    assert got["broker.hop"].parent is not None
