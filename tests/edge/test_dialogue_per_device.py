"""Issue 15 point 8: chat sessions are keyed by (device, session), not by the session id alone.

Session ids are chosen by devices; two devices that both call their dialogue "s1" used to share
(and overwrite) one dialogue state: slots of one leaked into the other's replies.
"""

from __future__ import annotations

import json

from edge_agent.config import AgentConfig
from edge_agent.pipeline.chat_flow import ChatAnswer
from edge_agent.pipeline.core import Pipeline
from edge_agent.preprocess.dialogue import DialogueState, DialogueStore

T0 = 1_700_000_000.0


def say(p: Pipeline, device: str, session: str, msg_id: str, seq: int, answer: ChatAnswer) -> dict:
    payload = json.dumps({"session_id": session, "msg_id": msg_id, "text": "hello", "ts": T0, "seq": seq})
    job = p.handle(f"devices/{device}/chat/in", payload.encode(), now=T0)
    assert job is not None
    p.complete_chat(job, answer, now=T0)
    (reply,) = p.take_replies()
    assert reply.topic == f"devices/{device}/chat/out"
    return json.loads(reply.payload)


def test_two_devices_with_one_session_id_have_independent_dialogues() -> None:
    p = Pipeline(AgentConfig(node_id="n1"))
    a = say(p, "d1", "s1", "m1", 1, ChatAnswer("BookRestaurant", {"city": "rome"}, 0.9, "edge"))
    b = say(p, "d2", "s1", "m1", 1, ChatAnswer("PlayMusic", {"artist": "abba"}, 0.9, "edge"))
    assert a["state"] == {
        "session_id": "s1",
        "intent": "BookRestaurant",
        "slots": {"city": "rome"},
        "step": 1,
        "version": 1,
    }
    # d2's first message is its own version 1 (not stale against d1's), with only its own slots.
    assert b["state"] == {
        "session_id": "s1",
        "intent": "PlayMusic",
        "slots": {"artist": "abba"},
        "step": 1,
        "version": 1,
    }
    a2 = say(p, "d1", "s1", "m2", 2, ChatAnswer(None, {"time": "8pm"}, 0.9, "edge"))
    assert (
        a2["state"]["slots"] == {"city": "rome", "time": "8pm"} and a2["state"]["intent"] == "BookRestaurant"
    )
    assert p.counters.stale_chat == 0
    # The checkpoint keeps them apart too, and a restored pipeline goes on where each left off.
    ups, dels = p.take_state()
    keys = {k for k in ups if k.startswith("dlg:")}
    assert keys == {"dlg:d1/s1", "dlg:d2/s1"} and dels == []
    fresh = Pipeline(AgentConfig(node_id="n1"))
    fresh.restore(ups)
    b2 = say(fresh, "d2", "s1", "m2", 2, ChatAnswer(None, {}, 0.9, "edge"))
    assert b2["state"]["slots"] == {"artist": "abba"} and b2["state"]["step"] == 2


def test_old_per_session_checkpoint_rows_load_and_are_deleted() -> None:
    # Rows written before sessions were keyed by device: "dlg:{session}" without a device field.
    legacy = json.dumps(
        {
            "session_id": "s1",
            "intent": "PlayMusic",
            "slots": {"a": "b"},
            "step": 1,
            "version": 1,
            "updated": 1.0,
        }
    ).encode()
    current = DialogueState("s2", "GetWeather", {}, 1, 1, 1.0, device="d1")
    store = DialogueStore(max_sessions=10, ttl_s=60)
    store.restore({"dlg:s1": legacy, "dlg:d1/s2": current.to_bytes()})
    assert store.legacy_dropped == 1 and len(store) == 1
    assert store.get("d1", "s2") == current
    assert store.take_dirty() == ({}, ["dlg:s1"])  # deleted with the next commit
    assert store.take_dirty() == ({}, [])
