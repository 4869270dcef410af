"""Labelled chat traffic and a status tap for the demo (and the end-to-end test).

Why not :func:`edgeloop_sim.replay.replay` for chat: the loop's proof needs the
true label of every utterance that reaches a node, to score the answer that
comes back on ``devices/{device}/chat/out`` (the SNIPS label is ground truth,
the node never sees it). So this driver publishes ``ChatIn`` messages itself,
keeps each utterance's gold intent and whether it belongs to the held-back
part, and joins the reply by ``msg_id``. It bounds the utterances in flight so
the offered load matches what a few chat devices produce, not a flood.

The status tap records every retained ``status`` the nodes publish (model
version and state per task, traffic counters), which is what the report plots
as bytes raw against bytes sent and what the demo waits on for "every node
runs v2".
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from cloud_controller.datasets.snips import Example
from edge_agent.protocol import messages as wire
from edge_agent.protocol import topics


@dataclass
class Utterance:
    device: str
    phase: str
    intent: str  # gold label (SNIPS)
    held_back: bool
    text: str
    msg_id: str = ""
    sent: float = 0.0
    answered: float | None = None
    answer: str | None = None
    source: str | None = None
    confidence: float | None = None

    @property
    def correct(self) -> bool:
        return self.answer == self.intent

    @property
    def escalated(self) -> bool:
        """Answered by the cloud teacher (a fresh escalation or the node's cache of one)."""
        return self.source == "cloud"


@dataclass
class NodeSample:
    t: float
    node: str
    online: bool
    chat_version: str | None
    chat_state: str | None
    counters: dict[str, float] = field(default_factory=dict)
    samples: int = 0
    escalated: int = 0
    sensor_version: str | None = None
    sensor_state: str | None = None
    sensor_samples: int = 0  # windows scored since the sensor model's activation
    sensor_escalated: int = 0  # of which inside the uncertainty band


class ChatTraffic:
    """Publishes labelled utterances, collects answers and node statuses (paho, MQTT 5, QoS 1)."""

    def __init__(self, host: str, port: int, client_id: str = "demo-chat") -> None:
        self.host, self.port, self.client_id = host, port, client_id
        self.utterances: list[Utterance] = []
        self.statuses: list[NodeSample] = []
        self.t0 = time.time()
        self._by_id: dict[str, Utterance] = {}
        self._lock = threading.Lock()
        self._answered = threading.Condition(self._lock)
        self._client: Any = None

    def start(self) -> None:
        import paho.mqtt.client as paho
        from paho.mqtt.enums import CallbackAPIVersion

        c = paho.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=paho.MQTTv5)
        c.on_message = self._on_message
        subscribed = threading.Event()
        c.on_subscribe = lambda *_a: subscribed.set()
        c.connect(self.host, self.port)
        c.loop_start()
        c.subscribe([(topics.DEVICE_CHAT_OUT_SUB, 1), (topics.all_nodes(topics.STATUS), 1)])
        if not subscribed.wait(10):
            raise TimeoutError("chat traffic: no SUBACK from the broker")
        self._client = c

    def close(self) -> None:
        if self._client is not None:
            self._client.loop_stop()
            self._client.disconnect()
            self._client = None

    # ------------------------------------------------------------------ inbound

    def _on_message(self, _c: Any, _u: Any, m: Any) -> None:
        now = time.time()
        try:
            data = json.loads(m.payload)
        except ValueError:
            return
        if m.topic.endswith("/chat/out"):
            with self._lock:
                u = self._by_id.get(str(data.get("msg_id")))
                if u is not None and u.answered is None:
                    u.answered, u.answer = now, data.get("intent")
                    u.source, u.confidence = data.get("source"), float(data.get("confidence") or 0.0)
                    self._answered.notify_all()
            return
        try:
            st = wire.Status.model_validate(data)
        except ValueError:
            return
        chat, sensor = st.models.get("chat"), st.models.get("sensor")
        with self._lock:
            self.statuses.append(
                NodeSample(
                    now,
                    st.node,
                    st.online,
                    chat.version if chat else None,
                    chat.state if chat else None,
                    dict(st.counters),
                    chat.samples if chat else 0,
                    chat.escalated if chat else 0,
                    sensor_version=sensor.version if sensor else None,
                    sensor_state=sensor.state if sensor else None,
                    sensor_samples=sensor.samples if sensor else 0,
                    sensor_escalated=sensor.escalated if sensor else 0,
                )
            )

    # ------------------------------------------------------------------ queries

    def latest(self) -> dict[str, NodeSample]:
        with self._lock:
            out: dict[str, NodeSample] = {}
            for s in self.statuses:
                out[s.node] = s
            return out

    def pending(self) -> int:
        with self._lock:
            return sum(1 for u in self.utterances if u.answered is None)

    # ------------------------------------------------------------------ outbound

    def drive(
        self,
        plan: Sequence[tuple[str, Example, bool]],
        phase: str,
        *,
        rate: float = 20.0,
        max_inflight: int = 8,
        reply_timeout_s: float = 60.0,
        on_progress: Any = None,
    ) -> list[Utterance]:
        """Send ``(device, example, held_back)`` at ``rate`` per second (0: as fast as answers come back).

        Returns this phase's utterances once all are answered or ``reply_timeout_s``
        passed without progress (unanswered ones keep ``answer`` None and count as wrong).
        """
        assert self._client is not None, "start() first"
        sent: list[Utterance] = []
        gap = 1.0 / rate if rate > 0 else 0.0
        next_at = time.monotonic()
        last_progress = time.monotonic()
        for i, (device, ex, held) in enumerate(plan):
            with self._lock:
                while sum(1 for u in sent if u.answered is None) >= max_inflight:
                    if not self._answered.wait(reply_timeout_s):
                        break
            delay = next_at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            next_at = max(next_at + gap, time.monotonic())
            u = Utterance(device, phase, ex.intent, held, ex.text, msg_id=uuid.uuid4().hex, sent=time.time())
            msg = wire.ChatIn(session_id=f"s{u.msg_id[:16]}", msg_id=u.msg_id, text=ex.text, ts=u.sent)
            with self._lock:
                self._by_id[u.msg_id] = u
                self.utterances.append(u)
            sent.append(u)
            self._client.publish(topics.device_chat_in(device), wire.dumps(msg), qos=1)
            if on_progress is not None and time.monotonic() - last_progress >= 5.0:
                last_progress = time.monotonic()
                on_progress(i + 1, len(plan), sent)
        deadline = time.monotonic() + reply_timeout_s
        with self._lock:
            while any(u.answered is None for u in sent) and time.monotonic() < deadline:
                self._answered.wait(max(0.0, deadline - time.monotonic()))
        return sent


def score(us: Sequence[Utterance]) -> dict[str, float]:
    """Accuracy of the answers (vs SNIPS labels), share answered by the cloud, edge-only accuracy."""
    n = len(us)
    if not n:
        return {"n": 0}
    edge = [u for u in us if u.source not in ("cloud", None)]
    return {
        "n": n,
        "accuracy": round(100.0 * sum(u.correct for u in us) / n, 2),
        "escalation_rate": round(100.0 * sum(u.escalated for u in us) / n, 2),
        "edge_accuracy": round(100.0 * sum(u.correct for u in edge) / len(edge), 2) if edge else 0.0,
        "unanswered": sum(u.answered is None for u in us),
    }
