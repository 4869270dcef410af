"""Dialogue state on the escalation wire, and one turn per session in flight."""

from __future__ import annotations

import asyncio
import json

import pytest

from edge_agent.protocol import escalation_wire as ew
from edge_agent.protocol import messages as wire
from edge_agent.protocol.errors import RejectedMessage
from edge_agent.services.session_queue import SessionQueue


def _req(**state: object) -> bytes:
    st = ew.dialogue_state("11290", "Inform+餐馆", {"餐馆-推荐菜": "驴杂汤"}, 1, 1, 1.0)
    req = ew.EscalationRequest(id="r1", node="n1", text="这家餐馆的周边有哪些景点啊",
                               student=ew.StudentOutput(intent="x", confidence=0.5), ts=1.0, state=st, turn=2)
    data = json.loads(wire.dumps(req))
    data["state"].update(state)
    return json.dumps(data, ensure_ascii=False).encode()


def test_state_round_trips_in_chinese_and_bad_state_is_refused_with_a_reason() -> None:
    req = ew.parse_request(_req())
    assert req.state is not None and req.state.slots == {"餐馆-推荐菜": "驴杂汤"} and req.turn == 2
    assert "驴杂汤".encode() in wire.dumps(req)  # UTF-8 on the wire, not escaped or mangled
    for bad in ({"slots": {str(i): "长" * 500 for i in range(20)}}, {"step": "one"}, {"version": -1}):
        with pytest.raises(RejectedMessage) as ei:
            ew.parse_request(_req(**bad))
        assert ei.value.reason == "bad_state"
    with pytest.raises(RejectedMessage) as ei:
        ew.dialogue_state("s", None, {str(i): "x" * 500 for i in range(30)}, 0, 0, 0.0)
    assert ei.value.reason == "bad_state"


async def test_session_queue_one_in_flight_per_session_others_proceed() -> None:
    q: SessionQueue[str, int] = SessionQueue(maxsize=10)
    for item in (1, 2, 3):
        await q.put("a", item)
    await q.put("b", 10)
    k1, i1 = await q.get()
    k2, i2 = await q.get()
    assert (k1, i1, k2, i2) == ("a", 1, "b", 10)  # a's second turn waits; b is not blocked by it
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(q.get(), 0.05)
    q.done("a")
    assert await q.get() == ("a", 2)
    q.done("b")
    q.done("a")
    assert await q.get() == ("a", 3)
    q.done("a")
    assert q.qsize() == 0 and not q.in_flight_or_waiting("a")
