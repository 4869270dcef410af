"""The demo's scripted dialogue: a booking in three turns whose middle turn goes to the cloud teacher.

What it shows: the dialogue state travels with the escalated turn and comes
back merged, so the slots the first turn filled (on the edge) survive the
escalated middle turn and the third turn (on the edge again) builds on both.
The middle turn is made hard on purpose through the cloud-to-edge call
``config.set`` (threshold mode, threshold 1.0: the student is never sure
enough), and the node's own setting is put back after it, so the demo's other
figures do not depend on it.

Every turn starts a trace on the device side (a W3C ``traceparent`` user
property on the utterance), which the agent continues; with a collector the
report prints the escalated turn's trace as a tree (:mod:`edgeloop_sim.trace_collector`).
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from cloud_controller.calls.node_calls import NodeCalls
from edge_agent.config import MqttConfig
from edge_agent.ops.tracing import NOOP, TRACEPARENT, Tracing
from edge_agent.protocol import messages as wire
from edge_agent.protocol import topics
from edge_agent.transport.mqtt import Message, MqttClient

__all__ = ["BOOKING", "DialogueTurn", "markdown", "play_dialogue", "run_dialogue", "slots_survive"]

# A restaurant booking in SNIPS' words (the demo's student knows BookRestaurant and its slots).
BOOKING = (
    "book a table for four people at a sushi bar in boston",
    "actually i need it at a restaurant that serves sushi near the harbour for my colleagues",
    "make it tomorrow at eight pm",
)


@dataclass
class DialogueTurn:
    text: str
    forced_escalation: bool
    trace_id: str
    source: str | None = None
    intent: str | None = None
    state: dict[str, Any] = field(default_factory=dict)
    ms: float = 0.0


def new_traceparent() -> tuple[str, str]:
    """A device-side W3C trace context: (traceparent, trace id)."""
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return f"00-{trace_id}-{span_id}-01", trace_id


def slots_survive(turns: list[DialogueTurn]) -> bool:
    """Every slot name a turn's state holds is still held after every later turn."""
    seen: set[str] = set()
    for t in turns:
        names = set((t.state or {}).get("slots") or {})
        if not seen <= names:
            return False
        seen |= names
    return bool(turns)


async def play_dialogue(
    host: str, port: int, node: str, device: str, session: str, tracing: Tracing, timeout: float
) -> dict[str, Any]:
    cfg = MqttConfig(host=host, port=port)
    client = MqttClient(cfg, f"demo-dialogue-{secrets.token_hex(3)}", clean_start=True, name="dialogue")
    replies: asyncio.Queue[Message] = asyncio.Queue()
    out_topic = topics.device_chat_out(device)

    def route(msg: Message) -> bool:
        if msg.topic != out_topic:
            return False
        replies.put_nowait(msg)
        client.ack(msg)
        return True

    client.add_router(route)
    calls = NodeCalls(client, tracing=tracing)
    await client.start()
    turns: list[DialogueTurn] = []
    try:
        await client.wait_connected(10)
        await client.subscribe(out_topic, 1)
        before = (await calls.call(node, "diagnostics", timeout=timeout)).get("budget") or {}
        for i, text in enumerate(BOOKING, start=1):
            hard = i == 2
            if hard:  # the middle turn goes to the teacher, whatever the student thinks
                await calls.call(
                    node, "config.set", {"escalation.mode": "threshold", "escalation.threshold": "1"}
                )
            traceparent, trace_id = new_traceparent()
            turn = DialogueTurn(text, hard, trace_id)
            props = Properties(PacketTypes.PUBLISH)
            props.UserProperty = [(TRACEPARENT, traceparent)]
            msg = wire.ChatIn(session_id=session, msg_id=f"{session}-{i}", text=text, ts=time.time(), seq=i)
            t0 = time.perf_counter()
            await client.publish(topics.device_chat_in(device), wire.dumps(msg), qos=1, properties=props)
            reply = await asyncio.wait_for(replies.get(), timeout)
            turn.ms = round((time.perf_counter() - t0) * 1000, 1)
            out = json.loads(reply.payload)
            turn.source, turn.intent = out.get("source"), out.get("intent")
            turn.state = out.get("state") or {}
            turns.append(turn)
            if hard and before:  # the node's own setting again
                mode, threshold = str(before["mode"]), str(before["threshold"])
                await calls.call(
                    node, "config.set", {"escalation.mode": mode, "escalation.threshold": threshold}
                )
    finally:
        await client.stop()
    return {
        "node": node,
        "device": device,
        "session": session,
        "turns": [t.__dict__ for t in turns],
        "slots_survive": slots_survive(turns),
        "middle_escalated": len(turns) == 3 and turns[1].source == "cloud",
    }


def run_dialogue(
    host: str,
    port: int,
    node: str,
    device: str,
    *,
    session: str | None = None,
    tracing: Tracing = NOOP,
    timeout: float = 15.0,
) -> dict[str, Any]:
    """Play :data:`BOOKING` as ``device`` on ``node``; the result names each turn's source, state, trace."""
    sid = session or f"booking-{secrets.token_hex(4)}"
    return asyncio.run(play_dialogue(host, port, node, device, sid, tracing, timeout))


def markdown(r: dict[str, Any]) -> list[str]:
    """The report's section: the turns, whether the slots survived, the escalated turn's trace."""
    if r.get("error"):
        return [f"## A booking in three turns on node {r['node']}", "", f"Not run: {r['error']}", ""]
    tree = r.get("trace")
    lines = [
        f"## A booking in three turns on node {r['node']} (the middle one escalated)",
        "",
        "| turn | utterance | answered by | intent | slots after the turn | ms |",
        "|---|---|---|---|---|---|",
    ]
    for i, t in enumerate(r["turns"], start=1):
        slots = ", ".join(f"{k}={v}" for k, v in ((t["state"] or {}).get("slots") or {}).items())
        lines.append(f"| {i} | {t['text']} | {t['source']} | {t['intent']} | {slots or '-'} | {t['ms']} |")
    ok = "yes" if r["slots_survive"] else "NO"
    lines += ["", f"Slots filled before and after the escalated turn survive: **{ok}**.", ""]
    if tree:
        lines += ["### The escalated turn's trace (docs/tracing.md)", "", "```", *tree, "```", ""]
    elif "trace" not in r:
        lines += ["No trace: the demo runs untraced without the `tracing` extra (docs/tracing.md).", ""]
    return lines
