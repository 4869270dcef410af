"""Escalation: budget, answer cache, and the MQTT 5 RPC to a real TeacherService on a real mosquitto.

The teacher model in these tests is a small deterministic model (a real
TeacherModel implementation), not a mock: everything between the Escalator and
the model (paho, mosquitto, the shared subscription, correlation data, the
batcher) is the production code path.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from cloud_controller.teachers.chat_service import TeacherService
from cloud_controller.teachers.teacher_backend import TeacherAnswer
from edge_agent.config import MqttConfig
from edge_agent.escalation.answer_cache import AnswerCache
from edge_agent.escalation.budget import EscalationBudget
from edge_agent.escalation.escalator import Escalator
from edge_agent.pipeline.outputs import hard_example_record
from edge_agent.protocol import escalation_wire as ew
from edge_agent.protocol import messages as wire
from edge_agent.protocol import topics
from edge_agent.protocol.errors import RejectedMessage
from edge_agent.transport.mqtt import Message, MqttClient
from edge_agent.transport.rpc import Rpc
from edgeloop_sim.broker import Broker
from edgeloop_sim.harness.mqtt_session import connected_client

NODE = "node-1"


# --------------------------------------------------------------------------- helpers


@dataclass(frozen=True)
class Student:
    intent: str
    confidence: float
    slots: dict[str, str] = field(default_factory=dict)


class KeywordTeacher:
    """Deterministic teacher: the intent is the text's last word, so every answer is checkable."""

    version = "kw-1"

    def __init__(self, compute_s: float = 0.0, gate: threading.Event | None = None) -> None:
        self.calls: list[int] = []
        self.compute_s = compute_s
        self.gate = gate
        self.entered = threading.Event()

    def predict_batch(self, texts: Sequence[str]) -> list[TeacherAnswer]:
        self.entered.set()
        if self.gate is not None:
            self.gate.wait(10)
        if self.compute_s:
            time.sleep(self.compute_s)  # stands for model compute inside the worker thread
        self.calls.append(len(texts))
        return [TeacherAnswer("intent_" + t.split()[-1], {"thing": t.split()[-1]}, 0.97) for t in texts]


@asynccontextmanager
async def teacher(cfg: MqttConfig, model: KeywordTeacher, **kw: object) -> AsyncIterator[TeacherService]:
    async with connected_client(cfg, "teacher-1") as c:
        svc = TeacherService(c, model, **kw)  # type: ignore[arg-type]
        await svc.start()
        try:
            yield svc
        finally:
            await svc.stop()


def escalator(c: MqttClient, timeout_s: float = 2.0, **budget_kw: object) -> Escalator:
    kw: dict[str, object] = {"mode": "threshold", "threshold_fallback": 0.8} | budget_kw
    return Escalator(c, NODE, EscalationBudget(**kw), AnswerCache(max_entries=100, ttl_s=60), timeout_s)  # type: ignore[arg-type]


async def until(pred: Callable[[], object], within: float, what: str) -> None:
    """Wait for a condition with a deadline (polls; nothing to await on across the broker)."""
    deadline = time.monotonic() + within
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what}")
        await asyncio.sleep(0.01)


# --------------------------------------------------------------------------- budget


def _windows_ok(decisions: list[bool], window: int, cap: int) -> int:
    worst = running = 0
    for i, d in enumerate(decisions):
        running += d
        if i >= window:
            running -= decisions[i - window]
        worst = max(worst, running)
    assert worst <= cap, f"{worst} escalations in a window of {window} > cap {cap}"
    return worst


def test_budget_holds_under_burst_of_unsure_inputs() -> None:
    b = EscalationBudget(max_rate=0.10, window=200)
    rng = random.Random(1)
    calm = [rng.uniform(0.6, 1.0) for _ in range(300)]
    burst = [rng.uniform(0.0, 0.3) for _ in range(1000)]
    after = [rng.uniform(0.6, 1.0) for _ in range(300)]
    decisions = [b.decide(c) for c in calm + burst + after]
    worst = _windows_ok(decisions, 200, 20)
    burst_decisions = decisions[300:1300]
    assert sum(burst_decisions) <= 100  # <= 10% of the burst
    assert worst >= 15  # and the budget is actually used, not starved
    assert b.stats.capped > 0  # the hard cap did the work during the burst


def test_budget_identical_unsure_inputs_still_capped() -> None:
    b = EscalationBudget(max_rate=0.10, window=100)
    decisions = [b.decide(0.01) for _ in range(1000)]
    _windows_ok(decisions, 100, 10)
    assert sum(decisions) == 100  # exactly the budget, evenly over the run


def test_budget_prefers_least_confident() -> None:
    b = EscalationBudget(max_rate=0.10, window=200)
    rng = random.Random(2)
    confs = [rng.random() for _ in range(3000)]
    decisions = [b.decide(c) for c in confs]
    _windows_ok(decisions, 200, 20)
    # After the warm-up (fixed threshold for the first min_history inputs), only the least confident.
    esc = [c for c, d in zip(confs[200:], decisions[200:], strict=True) if d]
    confs = confs[200:]
    assert 0.06 * len(confs) <= len(esc) <= 0.10 * len(confs)
    assert max(esc) < 0.2 and sum(esc) / len(esc) < 0.1
    assert 0.05 < b.threshold() < 0.15


def test_budget_threshold_mode_and_cache_hits_count_in_window() -> None:
    t = EscalationBudget(mode="threshold", threshold_fallback=0.5)
    assert [t.decide(c) for c in (0.1, 0.49, 0.5, 0.9)] == [True, True, False, False]
    b = EscalationBudget(max_rate=0.5, window=4, min_history=0, quantile_rate=1.0)
    for _ in range(3):
        b.observe(0.0)
    assert b.decide(0.0) and b.decide(0.0) and not b.decide(0.0)  # 2 per 4 consecutive utterances


# --------------------------------------------------------------------------- cache


def test_answer_cache_ttl_lru_and_normalized_keys() -> None:
    now = [0.0]
    c: AnswerCache[str] = AnswerCache(max_entries=2, ttl_s=10, clock=lambda: now[0])
    c.put("Play  ABBA", "a")
    assert c.get("play abba") == "a" and c.get("\uff30lay abba") == "a"  # fullwidth P normalizes alike
    c.put("b", "b")
    c.get("play abba")  # "b" is now least recently used
    c.put("c", "c")
    assert c.get("b") is None and c.get("c") == "c" and c.stats.evicted == 1
    now[0] = 10.0
    assert c.get("c") is None and c.stats.expired == 1
    assert c.stats.hits == 4 and c.stats.misses == 2


# --------------------------------------------------------------------------- wire


def test_wire_strict_and_topics() -> None:
    student = ew.StudentOutput(intent="x", confidence=0.2)
    req = ew.EscalationRequest(id="r1", node=NODE, text="hi", student=student, ts=1.0)
    assert ew.parse_request(wire.dumps(req)) == req
    for bad, reason in [(b"{", "malformed_json"), (b'{"id":"r"}', "missing_field"),
                        (wire.dumps(req).replace(b"0.2", b"2"), "invalid"),
                        (wire.dumps(req).replace(b'"hi"', b"1"), "wrong_type")]:
        with pytest.raises(RejectedMessage) as ei:
            ew.parse_request(bad)
        assert ei.value.reason == reason
    assert topics.escalation_request(NODE) == "edgeloop/v1/nodes/node-1/rpc/request/escalate"
    assert topics.rpc_response(NODE, "c1") == "edgeloop/v1/nodes/node-1/rpc/response/c1"
    assert topics.parse_escalation_request(topics.escalation_request(NODE)) == NODE
    with pytest.raises(RejectedMessage):
        topics.rpc_response(NODE, "a/#")


# --------------------------------------------------------------------------- over a real broker


async def test_round_trip_cache_and_hard_example(mqtt_cfg: MqttConfig) -> None:
    model = KeywordTeacher()
    async with teacher(mqtt_cfg, model) as svc, connected_client(mqtt_cfg, "edge-1") as c:
        esc = escalator(c)
        try:
            a = await esc.answer("play some abba", Student("PlayMusic", 0.3, {"artist": "abb"}))
            assert (a.source, a.intent, a.escalated, a.cached) == ("cloud", "intent_abba", True, False)
            assert a.slots == {"thing": "abba"} and a.teacher_version == "kw-1"
            he = a.hard_example
            assert he is not None and he.task == "chat" and he.node == NODE and he.text == "play some abba"
            assert he.student == {"intent": "PlayMusic", "confidence": 0.3, "slots": {"artist": "abb"}}
            assert he.teacher is not None and he.teacher["intent"] == "intent_abba"
            rec = hard_example_record(he)
            assert rec.topic == topics.hard_examples(NODE) and rec.kind == "hard_example"
            assert wire.validate(wire.HardExample, wire.loads(rec.payload)) == he

            # Same text, other spelling: answered from the cache, no RPC, no hard example.
            b = await esc.answer("  PLAY some\tABBA ", Student("PlayMusic", 0.3))
            assert (b.source, b.cached, b.escalated, b.hard_example) == ("cloud", True, False, None)
            assert svc.stats.received == 1

            # Confident student: local, no RPC.
            c2 = await esc.answer("turn on the light", Student("Lights", 0.95))
            assert (c2.source, c2.escalated) == ("edge", False)
            assert esc.stats.as_dict() == {"cache_hit": 1, "escalated": 1, "answered": 1,
                                           "degraded": 0, "local": 1}
            assert model.calls == [1]
        finally:
            await esc.stop()


async def test_timeout_without_teacher_is_degraded_in_time(mqtt_cfg: MqttConfig) -> None:
    async with connected_client(mqtt_cfg, "edge-1") as c:
        esc = escalator(c, timeout_s=0.3)
        try:
            t0 = time.monotonic()
            a = await esc.answer("anybody there", Student("Greet", 0.2, {"x": "y"}))
            elapsed = time.monotonic() - t0
        finally:
            await esc.stop()
    assert (a.source, a.intent, a.slots) == ("edge-degraded", "Greet", {"x": "y"})
    assert a.degraded_reason == "timeout"
    assert a.escalated and a.hard_example is None
    assert 0.3 <= elapsed < 0.3 + 0.5, elapsed
    assert esc.stats.degraded == 1 and esc.stats.reasons == {"timeout": 1}


async def test_broker_stopped_mid_request_degrades_at_once(broker: Broker, mqtt_cfg: MqttConfig) -> None:
    gate = threading.Event()
    model = KeywordTeacher(gate=gate)
    try:
        async with teacher(mqtt_cfg, model), connected_client(mqtt_cfg, "edge-1") as c:
            esc = escalator(c, timeout_s=5.0)
            try:
                task = asyncio.create_task(esc.answer("hello there", Student("Greet", 0.1)), name="t-answer")
                assert await asyncio.to_thread(model.entered.wait, 5)  # the request reached the teacher
                t0 = time.monotonic()
                await asyncio.to_thread(broker.stop)
                a = await asyncio.wait_for(task, 5)
                elapsed = time.monotonic() - t0
                assert (a.source, a.degraded_reason) == ("edge-degraded", "disconnect")
                assert elapsed < 1.5, elapsed  # far below the 5 s timeout
                # Disconnected: the next escalation degrades immediately as well.
                t1 = time.monotonic()
                b = await esc.answer("still there", Student("Greet", 0.1))
                assert b.source == "edge-degraded" and time.monotonic() - t1 < 0.5
            finally:
                gate.set()
                await esc.stop()
    finally:
        gate.set()


async def test_teacher_batches_concurrent_requests(mqtt_cfg: MqttConfig) -> None:
    model = KeywordTeacher(compute_s=0.02)
    n = 40
    async with (
        teacher(mqtt_cfg, model, max_batch=16, max_wait_ms=5) as svc,
        connected_client(mqtt_cfg, "edge-1") as c,
    ):
        esc = escalator(c, timeout_s=5.0)
        try:
            answers = await asyncio.gather(
                *(esc.answer(f"request number w{i}", Student("X", 0.1)) for i in range(n))
            )
        finally:
            await esc.stop()
    assert [a.intent for a in answers] == [f"intent_w{i}" for i in range(n)]  # each to its own caller
    assert all(a.source == "cloud" for a in answers)
    assert sum(model.calls) == n and len(model.calls) < n / 2, model.calls
    assert max(model.calls) <= 16 and svc.stats.batches == len(model.calls)


async def test_bad_requests_get_errors_and_are_counted(mqtt_cfg: MqttConfig) -> None:
    model = KeywordTeacher()
    inbox: asyncio.Queue[Message] = asyncio.Queue()

    async def sink(msg: Message) -> bytes:
        inbox.put_nowait(msg)
        return b""

    async with teacher(mqtt_cfg, model) as svc, connected_client(mqtt_cfg, "probe") as c:
        reply_to = topics.rpc_response(NODE, "probe")
        await Rpc(c).serve(reply_to, sink)

        async def send(payload: bytes, rt: str | None = reply_to) -> None:
            props = Properties(PacketTypes.PUBLISH)
            if rt is not None:
                props.ResponseTopic = rt
            props.CorrelationData = b"c"
            await c.publish(topics.escalation_request(NODE), payload, qos=1, properties=props)

        good = ew.EscalationRequest(id="r-1", node="other-node", text="x",
                                    student=ew.StudentOutput(intent="a", confidence=0.1), ts=1.0)
        await send(b"not json")
        await send(wire.dumps(good))  # node in payload != node in topic
        await send(b'{"id": "r-2", "node": "node-1"}')
        errors = []
        for _ in range(3):
            msg = await asyncio.wait_for(inbox.get(), 5)
            assert getattr(msg.properties, "CorrelationData", None) == b"c"
            errors.append(ew.parse_response(msg.payload))
        assert sorted((e.id, e.error) for e in errors) == [
            ("", "malformed_json"), ("r-1", "node_mismatch"), ("r-2", "missing_field")]
        # No response topic, or one in another node's inbox: dropped, counted, never answered.
        await send(wire.dumps(good), rt=None)
        await send(wire.dumps(good), rt=topics.rpc_response("node-2", "probe"))
        await until(lambda: svc.stats.rejected_total == 5, 5, "5 rejected requests")
    assert svc.stats.rejected == {"malformed_json": 1, "node_mismatch": 1, "missing_field": 1,
                                  "no_response_topic": 1, "bad_response_topic": 1}
    assert model.calls == [] and inbox.empty()
