"""Targets on both ends of escalation and on the desired state the agent receives."""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hypothesis import strategies as st
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from cloud_controller.teachers.chat_service import TeacherService
from edge_agent.config import AgentConfig, MqttConfig
from edge_agent.daemon import Agent
from edge_agent.protocol import escalation_wire as ew
from edge_agent.protocol import topics
from edge_agent.protocol.errors import RejectedMessage
from edge_agent.transport.mqtt import MqttClient
from edgeloop_sim.harness.fuzz.mutation import payloads
from edgeloop_sim.harness.fuzz.target_base import FuzzTarget, Tally, inbound_message, node_topic
from edgeloop_sim.harness.fuzz.valid_bases import NODE, desired_base, esc_request_base, esc_response_base


class _Teacher:
    """A deterministic stand-in for the ONNX teacher (the model is not under test, the handler is)."""

    version = "fuzz-teacher"

    def predict_batch(self, texts: Any) -> list[Any]:
        return [_Pred(t) for t in texts]


@dataclass
class _Pred:
    text: str
    confidence: float = 0.9

    @property
    def intent(self) -> str:
        return "long" if len(self.text) > 20 else "short"

    @property
    def slots(self) -> dict[str, str]:
        return {"first": self.text.split(" ")[0][:10]}


class EscalationRequestTarget(FuzzTarget):
    """The teacher's real request handler (``TeacherService._handle``) with its real batcher.

    Every answer must parse on the edge (``parse_response``): the edge would
    otherwise wait for its timeout instead of degrading at once.
    """

    name = "escalation_request"

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        self.loop = asyncio.new_event_loop()
        client = MqttClient(MqttConfig(), "fuzz-teacher", name="teacher")  # never connected
        self.service = TeacherService(client, _Teacher(), max_wait_ms=0.0)
        self.loop.run_until_complete(self.service.start())
        self.no_reply = 0

    def strategy(self) -> st.SearchStrategy[Any]:
        good_rt = topics.rpc_response(NODE, "c1")
        return st.tuples(
            st.one_of(
                st.just(topics.escalation_request(NODE)),
                st.just(topics.escalation_request(NODE)),
                node_topic(topics.ESCALATION_REQUEST_LEAF),
            ),
            st.one_of(
                st.just(good_rt),
                st.just(good_rt),
                st.none(),
                st.sampled_from(["edgeloop/v1/nodes/n2/x", "#"]),
            ),
            payloads(esc_request_base),
        )

    def feed(self, case: Any) -> str:
        topic, reply_to, payload = case
        props = Properties(PacketTypes.PUBLISH)
        if reply_to is not None:
            props.ResponseTopic = reply_to
        s = self.service.stats
        before = Counter(s.rejected), s.answered
        # None: the handler answers nothing (no or misdirected response topic; counted first).
        out = self.loop.run_until_complete(
            asyncio.wait_for(self.service._handle(inbound_message(topic, payload, props)), 2.0)
        ) or b""
        delta = Counter(s.rejected) - before[0]
        if out:
            resp = ew.parse_response(out)  # must not raise: the edge has to understand every answer
            assert (resp.error is None) == (not delta), (resp, delta)
        if delta:
            assert sum(delta.values()) == 1 and s.answered == before[1]
            return next(iter(delta))
        assert s.answered == before[1] + 1 and out
        return "accepted"

    def verify_counts(self, tally: Tally) -> None:
        s = self.service.stats
        assert s.received == tally.cases
        assert s.answered + s.rejected_total + s.model_errors == tally.cases
        assert s.rejected == dict(tally.rejected)

    def close(self) -> None:
        self.loop.run_until_complete(self.service.stop())
        self.loop.close()


class EscalationResponseTarget(FuzzTarget):
    name = "escalation_response"

    def strategy(self) -> st.SearchStrategy[Any]:
        return payloads(esc_response_base)

    def feed(self, case: Any) -> str:
        try:
            resp = ew.parse_response(case)
        except RejectedMessage as exc:
            return exc.reason
        assert math.isfinite(resp.confidence) and 0 <= resp.confidence <= 1
        return "accepted"


class DesiredStateTarget(FuzzTarget):
    """The agent's real ``_on_desired`` (constructed, not started: the constructor does no I/O)."""

    name = "desired_state"

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        self.loop = asyncio.new_event_loop()
        cfg = AgentConfig(node_id=NODE, state_dir=workdir / "agent")
        self.agent = Agent(cfg, environ={})
        self.spawned = 0
        self.cleared = 0

    def strategy(self) -> st.SearchStrategy[Any]:
        return payloads(desired_base)

    def feed(self, case: Any) -> str:
        return self.loop.run_until_complete(self._feed(case))

    async def _feed(self, payload: bytes) -> str:
        c = self.agent.pipeline.counters.rejected
        before = c.copy()
        self.agent.desired.on_message(inbound_message(topics.desired(NODE), payload))
        # Applying is another concern (model delivery tests): cancel it before it starts.
        started = [t for n, t in self.agent.tasks._tasks.items() if n.startswith("apply-") and not t.done()]
        for t in started:
            t.cancel()
        for t in started:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        self.agent.tasks._tasks.clear()
        delta = c - before
        if delta:
            assert sum(delta.values()) == 1 and not started
            (reason,) = delta
            assert reason.startswith("desired_")
            return reason
        if not payload:
            self.cleared += 1
            return "cleared_retained"  # an empty retained message clears the topic: not an error
        assert len(started) == 1, "accepted desired state was not applied"
        self.spawned += 1
        return "accepted"

    def verify_counts(self, tally: Tally) -> None:
        rej = {k: v for k, v in self.agent.pipeline.counters.rejected.items() if v}
        assert rej == {k: v for k, v in tally.rejected.items() if k != "cleared_retained"}
        assert self.spawned == tally.accepted

    def close(self) -> None:
        self.loop.close()
