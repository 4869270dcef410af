"""Issue 13 point 1: what a failed, stale, duplicated or orphaned answer does to a dialogue session.

The first tests drive :class:`ChatFlow` alone (the pure core, no I/O): the
answers are built the way :class:`ChatAnswers` builds them. The last one runs
the real chain (ChatAnswers -> Escalator -> ChatFlow) with the escalation RPC
scripted, so a timeout, a teacher error and a stale response are each seen to
end in a rollback, not only assumed to.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest

from edge_agent.config import AgentConfig, ChatConfig
from edge_agent.escalation.answer_cache import AnswerCache
from edge_agent.escalation.budget import EscalationBudget
from edge_agent.escalation.escalator import Escalator
from edge_agent.ops.metrics import AgentMetrics
from edge_agent.pipeline.batching import Batcher
from edge_agent.pipeline.chat_flow import ChatAnswer, ChatFlow, ChatJob
from edge_agent.pipeline.core import Pipeline
from edge_agent.pipeline.counters import ModelCounters, PipelineCounters
from edge_agent.preprocess.dialogue import DialogueState
from edge_agent.protocol import messages as wire
from edge_agent.protocol.errors import MqttError
from edge_agent.protocol.escalation_wire import (
    DialogueStateWire,
    EscalationResponse,
    dialogue_state,
    parse_request,
)
from edge_agent.services.chat_answers import ChatAnswers
from edge_agent.transport.mqtt import Message

T0 = 1_700_000_000.0
DEV = "dev-1"


def flow(**chat: Any) -> tuple[ChatFlow, PipelineCounters]:
    counters = PipelineCounters()
    models = {"chat": ModelCounters(), "sensor": ModelCounters()}
    return ChatFlow(ChatConfig(**chat), counters, models, Batcher(counters)), counters


def job(f: ChatFlow, session: str, seq: int, text: str = "订一家餐馆", device: str = DEV) -> ChatJob:
    msg = wire.ChatIn(session_id=session, msg_id=f"{session}-{seq}", text=text, ts=T0, seq=seq)
    payload = wire.dumps(msg)
    return f.read(device, payload, 64 * 1024, T0)


def teacher(state: DialogueStateWire, turn: int, intent: str, slots: dict[str, str]) -> DialogueStateWire:
    """What a teacher returns: the received state with this turn merged in, at version ``turn``."""
    return dialogue_state(state.session, intent, {**state.slots, **slots}, state.step + 1, turn, T0)


def cloud_answer(f: ChatFlow, j: ChatJob, now: float, intent: str, slots: dict[str, str]) -> ChatAnswer:
    state, turn, base = f.turn_state(j, now)
    return ChatAnswer(intent, slots, 0.97, "cloud", True, state=teacher(state, turn, intent, slots),
                      base_version=base)


def failed_answer(f: ChatFlow, j: ChatJob, now: float) -> ChatAnswer:
    """A timed-out or refused escalation: the student's own answer, degraded, rolling the turn back."""
    _, _, base = f.turn_state(j, now)
    return ChatAnswer("student-guess", {"student-slot": "猜的"}, 0.4, "edge-degraded", True,
                      base_version=base, rolled_back=True)


def reply(f: ChatFlow) -> dict[str, Any]:
    (r,) = f.replies
    f.replies.clear()
    return json.loads(r.payload)


def committed(f: ChatFlow, session: str, device: str = DEV) -> DialogueState | None:
    return f.dialogue.get(device, session)


def two_turns(f: ChatFlow, session: str = "s1") -> DialogueState:
    for seq, (intent, slots) in enumerate(
        [("Inform+餐馆", {"餐馆-名称": "鲜鱼口老字号"}), ("Inform+餐馆", {"餐馆-人均消费": "100元"})], start=1
    ):
        j = job(f, session, seq)
        f.complete(j, cloud_answer(f, j, T0 + seq, intent, slots), T0 + seq)
        reply(f)
    st = committed(f, session)
    assert st is not None and st.version == 2 and st.step == 2
    return st


@pytest.mark.parametrize("why", ["timeout", "rejected"])
def test_failed_escalation_rolls_back_to_exactly_the_last_committed_state(why: str) -> None:
    f, counters = flow()
    before = two_turns(f)
    j = job(f, "s1", 3, "附近有什么景点")
    f.complete(j, failed_answer(f, j, T0 + 3), T0 + 3)
    after = committed(f, "s1")
    # Intent, slots, step, version and even the update time: the turn left no trace in the session.
    assert after == before
    out = reply(f)
    assert out["msg_id"] == "s1-3" and out["source"] == "edge-degraded"
    assert out["intent"] == "student-guess" and out["slots"] == {"student-slot": "猜的"}
    assert out["state"] == before.to_view().model_dump()
    assert counters.dialogue["rolled_back"] == 1 and counters.dialogue["merged"] == 2
    assert counters.chat_by_source["edge-degraded"] == 1
    # The next turn starts from the rolled-back state and the teacher's answer lands on it.
    j4 = job(f, "s1", 4, "好的谢谢")
    state, turn, base = f.turn_state(j4, T0 + 4)
    assert (state.intent, state.slots, state.step, state.version, turn, base) == (
        before.intent, before.slots, before.step, before.version, 4, 2
    )
    f.complete(j4, cloud_answer(f, j4, T0 + 4, "Thank", {}), T0 + 4)
    assert reply(f)["state"] == {"session_id": "s1", "intent": "Thank", "slots": before.slots,
                                 "step": 3, "version": 4}


def test_failed_first_turn_leaves_no_session() -> None:
    f, counters = flow()
    j = job(f, "new", 1)
    f.complete(j, failed_answer(f, j, T0), T0)
    assert committed(f, "new") is None and len(f.dialogue) == 0
    out = reply(f)
    assert out["source"] == "edge-degraded" and out.get("state") is None
    assert counters.dialogue["rolled_back"] == 1


def test_stale_answer_for_a_session_that_moved_on_is_discarded_and_counted() -> None:
    f, counters = flow()
    two_turns(f)
    j = job(f, "s1", 3)
    stale = cloud_answer(f, j, T0 + 3, "Request+景点", {"景点-名称": "故宫"})  # base version 2
    j_other = job(f, "s1", 4)  # a turn that (wrongly) overtook it commits version 4 first
    f.complete(j_other, cloud_answer(f, j_other, T0 + 4, "Inform+酒店", {"酒店-名称": "如家"}), T0 + 4)
    reply(f)
    moved_on = committed(f, "s1")
    f.complete(j, stale, T0 + 5)
    assert committed(f, "s1") == moved_on and f.replies == []
    assert counters.dialogue["stale_answer"] == 1
    assert counters.dialogue["answer_for_gone_session"] == 0


def test_duplicated_answer_is_discarded_and_counted() -> None:
    f, counters = flow()
    two_turns(f)
    j = job(f, "s1", 3)
    ans = cloud_answer(f, j, T0 + 3, "Request+景点", {"景点-名称": "故宫"})
    f.complete(j, ans, T0 + 3)
    first = reply(f)
    applied = committed(f, "s1")
    assert first["state"]["version"] == 3 and applied is not None and applied.slots["景点-名称"] == "故宫"
    f.complete(j, ans, T0 + 3.5)  # the same answer again
    assert committed(f, "s1") == applied and f.replies == []
    assert counters.dialogue["duplicate_answer"] == 1 and counters.dialogue["merged"] == 3


@dataclass
class Gone:
    name: str
    make_gone: Callable[[ChatFlow], object]
    answer_at: float = T0 + 3
    chat: dict[str, Any] = field(default_factory=dict)


GONE = [
    Gone("ended", lambda f: f.dialogue.drop(DEV, "s1")),
    Gone("expired and swept", lambda f: f.dialogue.expire(T0 + 1000), T0 + 1000, {"session_ttl_s": 60}),
    # Past its TTL but not swept yet: the edge no longer has it either (begin() would start afresh).
    Gone("expired, not swept", lambda f: None, T0 + 1000, {"session_ttl_s": 60}),
    Gone("evicted", lambda f: f.complete(job(f, "other", 1), ChatAnswer("x", {}, 0.9, "edge"), T0 + 3),
         chat={"max_sessions": 1}),
]


@pytest.mark.parametrize("gone", GONE, ids=[g.name for g in GONE])
@pytest.mark.parametrize("kind", ["cloud", "rolled_back"])
def test_answer_for_a_session_the_edge_no_longer_has_is_counted_and_dropped(gone: Gone, kind: str) -> None:
    f, counters = flow(**gone.chat)
    two_turns(f)
    j = job(f, "s1", 3)
    ans = cloud_answer(f, j, T0 + 3, "Request+景点", {"景点-名称": "故宫"}) if kind == "cloud" else (
        failed_answer(f, j, T0 + 3))
    gone.make_gone(f)
    f.replies.clear()
    f.complete(j, ans, gone.answer_at)
    assert f.replies == [] and counters.dialogue["answer_for_gone_session"] == 1
    assert counters.dialogue["rolled_back"] == 0
    # Not resurrected with the teacher's slots (the answer carried the old session's state).
    st = committed(f, "s1")
    assert st is None or gone.answer_at - st.updated > 60


def test_a_failed_turn_in_one_session_does_not_touch_another() -> None:
    f, counters = flow()
    a0 = two_turns(f, "a")
    b0 = two_turns(f, "b")
    ja = job(f, "a", 3)
    jb = job(f, "b", 3)
    failed = failed_answer(f, ja, T0 + 3)
    ok = cloud_answer(f, jb, T0 + 3, "Request+景点", {"景点-名称": "故宫"})
    f.complete(jb, ok, T0 + 3)  # b's turn completes while a's escalation is failing
    f.complete(ja, failed, T0 + 4)
    assert committed(f, "a") == a0
    b = committed(f, "b")
    assert b is not None and b.version == 3 and b.slots == {**b0.slots, "景点-名称": "故宫"}
    # The same session id on another device is another session, untouched as well.
    other_dev = job(f, "a", 1, device="dev-2")
    f.complete(other_dev, failed_answer(f, other_dev, T0 + 5), T0 + 5)
    assert committed(f, "a") == a0 and committed(f, "a", "dev-2") is None
    assert counters.dialogue["rolled_back"] == 2 and counters.dialogue["merged"] == 5


# --------------------------------------------------------------------------- the real chain, RPC scripted


@dataclass(frozen=True)
class Pred:
    intent: str
    slots: dict[str, str]
    confidence: float


class Student:
    def predict(self, text: str) -> Pred:
        return Pred("student-guess", {}, 0.3)  # never sure: every turn escalates


class ScriptedClient:
    """Just enough of MqttClient for an Escalator whose RPC is scripted (its watcher ends at once)."""

    client_id = "edge-test"
    connected = True

    def add_router(self, route: object) -> None: ...
    def add_on_connection_lost(self, cb: object) -> None: ...

    async def wait_connected(self, timeout: float | None) -> None:
        raise MqttError("stopped")


Script = Callable[[Any], EscalationResponse | None]  # None: no reply in time


def chain(script: Script) -> tuple[ChatAnswers, Pipeline, Escalator]:
    cfg = AgentConfig(node_id="n1")
    clock = [T0]
    pipeline = Pipeline(cfg, clock=lambda: clock[0])
    esc = Escalator(ScriptedClient(), "n1",  # type: ignore[arg-type]
                    EscalationBudget(max_rate=1.0, window=10, mode="threshold", threshold_fallback=0.8),
                    AnswerCache(max_entries=0), timeout_s=0.1, retries=0)

    async def request(payload: bytes, props: object) -> Message:
        resp = script(parse_request(payload))
        if resp is None:
            raise MqttError("no response within 0.1s")
        return Message("resp", wire.dumps(resp), 1, False, 0, None)

    esc._request = request  # type: ignore[method-assign]
    answers = ChatAnswers(pipeline, None, None, SimpleNamespace(chat_model=Student()), esc,  # type: ignore[arg-type]
                          AgentMetrics(), config=lambda: cfg)
    return answers, pipeline, esc


def good(req: Any) -> EscalationResponse:
    slots = {"餐馆-名称": f"第{req.turn}家"}
    return EscalationResponse(id=req.id, intent="Inform+餐馆", slots=slots, confidence=0.99,
                              state=teacher(req.state, req.turn, "Inform+餐馆", slots))


BAD: dict[str, Script] = {
    "timeout": lambda req: None,
    "teacher_error": lambda req: EscalationResponse(id=req.id, error="overloaded"),
    "stale_state": lambda req: good(req).model_copy(
        update={"state": good(req).state.model_copy(update={"version": req.turn - 1})}  # type: ignore[union-attr]
    ),
    "stale_state_no_state": lambda req: good(req).model_copy(update={"state": None}),
}


@pytest.mark.parametrize("what", list(BAD))
async def test_escalation_that_fails_rolls_the_session_back_through_the_real_chain(what: str) -> None:
    turns = [good, good, BAD[what], good]
    answers, pipeline, esc = chain(lambda req: turns[req.turn - 1](req))
    views = []
    for seq in range(1, 5):
        msg = wire.ChatIn(session_id="s1", msg_id=f"m{seq}", text=f"第{seq}句", ts=T0, seq=seq)
        payload = wire.dumps(msg)
        j = pipeline.handle(f"devices/{DEV}/chat/in", payload, now=T0)
        assert isinstance(j, ChatJob)
        pipeline.complete_chat(j, await answers.answer(j))
        (r,) = pipeline.take_replies()
        views.append(json.loads(r.payload))
    await esc.stop()
    assert [v["source"] for v in views] == ["cloud", "cloud", "edge-degraded", "cloud"]
    assert views[2]["state"] == views[1]["state"] and views[2]["intent"] == "student-guess"
    assert views[3]["state"]["version"] == 4
    assert views[3]["state"]["slots"] == {"餐馆-名称": "第4家"}
    reason = "stale_state" if what.startswith("stale_state") else what
    assert esc.stats.reasons == {reason: 1}
    assert pipeline.counters.dialogue["rolled_back"] == 1 and pipeline.counters.dialogue["merged"] == 3
