"""The OpenAI-compatible teacher against a real HTTP server, behind a real TeacherService on mosquitto.

Nothing between the edge's request and the HTTP server is mocked: the edge-side
Escalator (or a raw RPC client, where the test reads the error reason), paho,
mosquitto, the service, the backend's aiohttp client, and an aiohttp server
that speaks the protocol (``tests/cloud/llm_server.py``) with one mode per
failure the backend must survive.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from cloud_controller.resources.kinds import OpenAITeacherSpec
from cloud_controller.resources.sqlite_store import SqliteResourceStore
from cloud_controller.teachers.chat_service import TeacherService
from cloud_controller.teachers.openai_compat import OpenAICompatBackend
from cloud_controller.teachers.serving import TeacherServing
from edge_agent.config import MqttConfig
from edge_agent.escalation.answer_cache import AnswerCache
from edge_agent.escalation.budget import EscalationBudget
from edge_agent.escalation.escalator import Escalator
from edge_agent.protocol import escalation_wire as ew
from edge_agent.protocol import messages as wire
from edge_agent.protocol import topics
from edge_agent.transport.mqtt import MqttClient
from edge_agent.transport.rpc import Rpc
from edgeloop_sim.harness.mqtt_session import connected_client
from tests.cloud.llm_server import FakeLlm

NODE = "node-1"
KEY_ENV = "EDGELOOP_TEST_TEACHER_KEY"
SECRET = "sk-test-9f3b1c7d-never-in-a-log"


@dataclass(frozen=True)
class Student:
    intent: str = "unsure"
    confidence: float = 0.2
    slots: dict[str, str] = field(default_factory=dict)


@pytest.fixture
async def llm() -> AsyncIterator[FakeLlm]:
    server = await FakeLlm().start()
    try:
        yield server
    finally:
        await server.stop()


def spec(server: FakeLlm, **kw: Any) -> OpenAITeacherSpec:
    base: dict[str, Any] = {"base_url": server.base_url, "model": "glm-4-test", "api_key_env": KEY_ENV,
                            "timeout_seconds": 2.0, "max_retries": 2}
    return OpenAITeacherSpec(**(base | kw))


def backend(server: FakeLlm, clock: Callable[[], float] | None = None, **kw: Any) -> OpenAICompatBackend:
    extra = {"clock": clock} if clock is not None else {}
    return OpenAICompatBackend(spec(server, **kw), environ={KEY_ENV: SECRET}, **extra)


@asynccontextmanager
async def service(cfg: MqttConfig, b: OpenAICompatBackend) -> AsyncIterator[TeacherService]:
    async with connected_client(cfg, "teacher-1") as c:
        svc = TeacherService(c, b)
        await svc.start()
        try:
            yield svc
        finally:
            await svc.stop()
            await b.close()


def state(slots: dict[str, str] | None = None, version: int = 2) -> ew.DialogueStateWire:
    return ew.DialogueStateWire(session="s-1", intent="book_hotel", slots=slots or {"city": "北京"},
                                step=version, version=version, updated_at=1.0)


_RPCS: weakref.WeakKeyDictionary[MqttClient, Rpc] = weakref.WeakKeyDictionary()


async def ask(c: MqttClient, text: str, st: ew.DialogueStateWire | None = None,
              node: str = NODE, timeout: float = 10.0) -> ew.EscalationResponse:
    """One raw escalation RPC, as the edge sends it; returns the parsed response (errors included)."""
    req = ew.EscalationRequest(id=wire.new_id(), node=node, text=text, ts=1.0,
                               student=ew.StudentOutput(intent="unsure", confidence=0.2), state=st,
                               turn=st.version + 1 if st is not None else None)
    rpc = _RPCS.get(c)
    if rpc is None:
        rpc = _RPCS[c] = Rpc(c)  # one per client: each Rpc claims the client's response topic
    msg = await rpc.request(topics.escalation_request(node), wire.dumps(req), timeout,
                               response_topic=topics.rpc_response(node, c.client_id))
    return ew.parse_response(msg.payload)


def escalator(c: MqttClient) -> Escalator:
    budget = EscalationBudget(mode="threshold", threshold_fallback=0.8)
    return Escalator(c, NODE, budget, AnswerCache(max_entries=100, ttl_s=60), 10.0)


# --------------------------------------------------------------------------- good answers


async def test_answer_with_dialogue_state_reaches_the_edge(
    mqtt_cfg: MqttConfig, llm: FakeLlm, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    b = backend(llm)
    async with service(mqtt_cfg, b) as svc, connected_client(mqtt_cfg, NODE) as c:
        esc = escalator(c)
        before = state({"city": "北京", "date": "周五"})
        ans = await esc.answer("good 订 一间 大床房", Student(), before, before.version + 1)
        await esc.stop()
    assert ans.source == "cloud" and ans.intent == "intent_大床房" and ans.slots == {"thing": "大床房"}
    assert ans.teacher_version == "openai:glm-4-test"
    # The slots filled before the escalated turn survive it, the new one is added, at the asked version.
    assert ans.state is not None and ans.state.version == before.version + 1 and ans.state.session == "s-1"
    assert ans.state.slots == {"city": "北京", "date": "周五", "thing": "大床房"}
    assert svc.stats.answered == 1 and b.stats.answered == 1
    [seen] = llm.requests
    assert seen.headers["Authorization"] == f"Bearer {SECRET}"
    assert seen.body["model"] == "glm-4-test" and seen.body["temperature"] == 0
    assert seen.body["response_format"] == {"type": "json_object"}
    assert "北京" in seen.body["messages"][-1]["content"]  # the state is in the prompt, unescaped
    # The key is in the header only: not in any log line, not in the backend's repr or stats.
    assert SECRET not in caplog.text and SECRET not in repr(b) and SECRET not in repr(b.stats)


async def test_fenced_json_and_a_server_without_json_mode(mqtt_cfg: MqttConfig, llm: FakeLlm) -> None:
    llm.refuse_response_format = True
    b = backend(llm, max_retries=0)
    async with service(mqtt_cfg, b), connected_client(mqtt_cfg, NODE) as c:
        first = await ask(c, "fenced play abba")
        second = await ask(c, "good play queen")
    assert first.error is None and first.intent == "intent_abba" and first.reply == "好的, abba"
    assert second.error is None and second.intent == "intent_queen"
    # Asked with response_format once, refused with 400, asked without, and never with it again.
    assert ["response_format" in r.body for r in llm.requests] == [True, False, False]


# --------------------------------------------------------------------------- bad answers


async def test_malformed_and_wrong_schema_are_counted_errors_and_the_edge_keeps_its_answer(
    mqtt_cfg: MqttConfig, llm: FakeLlm
) -> None:
    b = backend(llm)
    async with service(mqtt_cfg, b) as svc, connected_client(mqtt_cfg, NODE) as c:
        malformed = await ask(c, "malformed play abba")
        schema = await ask(c, "schema play abba")
        esc = escalator(c)
        local = await esc.answer("malformed turn on the lights", Student("lights_on", 0.3))
        await esc.stop()
        good = await ask(c, "good still serving")
    assert malformed.error == "bad_answer" and schema.error == "bad_answer"
    assert b.stats.errors["malformed_json"] == 2 and b.stats.errors["wrong_schema"] == 1
    assert svc.stats.refused["bad_answer"] == 3 and svc.stats.model_errors == 0
    assert local.source == "edge-degraded" and local.intent == "lights_on"
    assert good.error is None  # nothing crashed
    assert len(llm.requests) == 4  # a bad answer is not retried: temperature 0 would say it again


async def test_slow_endpoint_times_out_after_retries(mqtt_cfg: MqttConfig, llm: FakeLlm) -> None:
    b = backend(llm, timeout_seconds=0.3, max_retries=1)
    async with service(mqtt_cfg, b), connected_client(mqtt_cfg, NODE) as c:
        resp = await ask(c, "slow play abba")
    assert resp.error == "timeout"
    assert llm.by_text["slow play abba"] == 2 and b.stats.retries == 1


async def test_server_error_then_success_is_retried(mqtt_cfg: MqttConfig, llm: FakeLlm) -> None:
    b = backend(llm, max_retries=2)
    async with service(mqtt_cfg, b), connected_client(mqtt_cfg, NODE) as c:
        resp = await ask(c, "flaky play abba")
    assert resp.error is None and resp.intent == "intent_abba"
    assert llm.by_text["flaky play abba"] == 2 and b.stats.retries == 1


async def test_rate_limited_is_retried_then_refused(mqtt_cfg: MqttConfig, llm: FakeLlm) -> None:
    b = backend(llm, max_retries=2)
    async with service(mqtt_cfg, b) as svc, connected_client(mqtt_cfg, NODE) as c:
        resp = await ask(c, "limited play abba")
    assert resp.error == "rate_limited" and llm.by_text["limited play abba"] == 3
    assert svc.stats.refused == {"rate_limited": 1}


async def test_missing_api_key_is_refused_without_a_call(mqtt_cfg: MqttConfig, llm: FakeLlm) -> None:
    b = OpenAICompatBackend(spec(llm), environ={})
    async with service(mqtt_cfg, b), connected_client(mqtt_cfg, NODE) as c:
        resp = await ask(c, "good play abba")
    assert resp.error == "no_api_key" and llm.requests == []


# --------------------------------------------------------------------------- limits


async def test_concurrency_limit_is_respected(mqtt_cfg: MqttConfig, llm: FakeLlm) -> None:
    llm.hold_s = 0.3
    b = backend(llm, max_concurrency=2)
    async with service(mqtt_cfg, b), connected_client(mqtt_cfg, NODE) as c:
        answers = await asyncio.gather(*(ask(c, f"hold thing {i}") for i in range(8)))
    assert all(a.error is None for a in answers)
    assert len(llm.requests) == 8
    assert llm.max_in_progress == 2  # at the limit, never above it (and not serialized to one)


async def test_budget_exhausted_refuses_until_the_hour_rolls(mqtt_cfg: MqttConfig, llm: FakeLlm) -> None:
    now = [7200.0 + 10]
    b = backend(llm, clock=lambda: now[0], tokens_per_hour=100)  # the server bills 50 tokens a call
    async with service(mqtt_cfg, b) as svc, connected_client(mqtt_cfg, NODE) as c:
        spent = [await ask(c, f"good call {i}") for i in range(2)]
        refused = await ask(c, "good call 2")
        now[0] = 3 * 3600.0 + 1  # the next clock hour
        again = await ask(c, "good call 3")
    assert all(r.error is None for r in spent)
    assert refused.error == "budget" and svc.stats.refused == {"budget": 1}
    assert again.error is None
    assert len(llm.requests) == 3 and b.spend.total == 150


async def test_budget_estimates_tokens_without_usage(mqtt_cfg: MqttConfig, llm: FakeLlm) -> None:
    llm.usage_tokens = None
    b = backend(llm, tokens_per_hour=1)
    async with service(mqtt_cfg, b), connected_client(mqtt_cfg, NODE) as c:
        first = await ask(c, "good call one")
        second = await ask(c, "good call two")
    assert first.error is None and second.error == "budget" and b.spend.spent > 1


async def test_cache_hit_avoids_the_call_and_is_keyed_by_state(mqtt_cfg: MqttConfig, llm: FakeLlm) -> None:
    b = backend(llm)
    async with service(mqtt_cfg, b), connected_client(mqtt_cfg, NODE) as c:
        a = await ask(c, "good book a room", state())
        same = await ask(c, "good   Book a ROOM", state())  # normalizes alike, same dialogue content
        other_session = await ask(c, "good book a room", state().model_copy(update={"session": "s-2"}))
        other_state = await ask(c, "good book a room", state({"city": "上海"}))
    assert len(llm.requests) == 2 and b.stats.cache_hits == 2
    assert a.intent == same.intent == other_session.intent == "intent_room"
    # A cached answer is still merged into the asking session's own state at its own version.
    assert other_session.state is not None and other_session.state.session == "s-2"
    assert other_state.state is not None and other_state.state.slots["city"] == "上海"


# --------------------------------------------------------------------------- chosen by the resource


def _pipeline(name: str, app: str, teacher: dict[str, Any] | None) -> dict[str, Any]:
    esc: dict[str, Any] = {"threshold": 0.7}
    if teacher is not None:
        esc["teacher"] = teacher
    return {"apiVersion": "edgeloop.io/v1alpha1", "kind": "EdgePipeline",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"selector": {"matchLabels": {"app": app}}, "window": {"lengthSeconds": 10},
                     "features": ["count"], "escalation": esc}}


def _node(name: str, labels: dict[str, str]) -> dict[str, Any]:
    return {"apiVersion": "edgeloop.io/v1alpha1", "kind": "EdgeNode",
            "metadata": {"name": name, "namespace": "default", "labels": labels},
            "spec": {"enrollment": {"approved": True}}}


async def test_the_pipeline_that_selects_a_node_names_its_teacher(
    tmp_path: Path, mqtt_cfg: MqttConfig, llm: FakeLlm, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    store = SqliteResourceStore(tmp_path / "resources.db", poll_interval=0.05)
    try:
        await store.create(_node(NODE, {"app": "hotel"}))
        await store.create(_node("node-2", {"app": "other"}))
        await store.create(_pipeline("plain", "other", None))
        serving = TeacherServing(mqtt_cfg, "teacher-1", store, "default", None, environ={KEY_ENV: SECRET})
        await serving.start()
        try:
            await asyncio.sleep(0.3)
            assert serving.service is None  # nobody may answer yet: requests stay unanswered, as before
            teacher = {"backend": "openai",
                       "openai": {"baseUrl": llm.base_url, "model": "glm-4-test", "apiKeyEnv": KEY_ENV}}
            await store.create(_pipeline("hotel", "hotel", teacher))
            for _ in range(100):
                if serving.service is not None:
                    break
                await asyncio.sleep(0.05)
            assert serving.service is not None
            async with connected_client(mqtt_cfg, NODE) as c1, connected_client(mqtt_cfg, "node-2") as c2:
                hotel = await ask(c1, "good 订 房间", state())
                plain = await ask(c2, "good 订 房间", node="node-2")
            stored = [await store.get("EdgePipeline", "default", n) for n in ("hotel", "plain")]
        finally:
            await serving.stop()
    finally:
        await store.close()
    assert hotel.error is None and hotel.teacher_version == "openai:glm-4-test"
    assert hotel.state is not None and hotel.state.slots == {"city": "北京", "thing": "房间"}
    assert plain.error == "no_teacher"  # its pipeline names no teacher and there is no built-in model
    assert llm.requests[0].headers["Authorization"] == f"Bearer {SECRET}"
    assert SECRET not in caplog.text and SECRET not in repr(stored)
