"""Replay CrossWOZ dialogues through a real agent, a real mosquitto and a real teacher service.

What it measures is the dialogue-state protocol, not model quality, so both
models are stand-ins that make every turn checkable:

* the student is a tiny constant ONNX chat bundle that is never sure
  (confidence 0.5), so with ``mode: threshold`` every turn escalates;
* the teacher is an *oracle* (:class:`CrossWozOracle`): a
  :class:`~cloud_controller.teachers.model_backend.DialogueTeacherModel` that
  answers each turn with its CrossWOZ annotation (intent, the slots the turn
  informs). It finds the turn by the session in the state it receives and the
  redacted text, so a state that did not travel, or text mangled on the way
  (mojibake), shows up as a miss.

Between the teacher service and the broker sits :class:`ReplyFaults`, which
drops, duplicates, delays past the edge's timeout and reorders replies
(seeded). The device side publishes every turn of a dialogue at once (the
agent must queue them per session) and several dialogues concurrently.

Per turn it checks that the edge's state after the turn (the reply's
``state``) equals the cloud's: the state the teacher returned for that
session and version when the turn was answered; when the turn was rolled back,
the session's last consistent state, i.e. the state after its last
cloud-answered turn (what the teacher last returned and the edge adopted; no
state before the first). And that every request's state equals the edge's
state after some earlier turn. It checks that a session's turns reach the
teacher in order and that a session stuck on the teacher held up no other.
It counts turns lost (no reply) and compares the slots in the edge's state
with the annotations.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from cloud_controller.datasets.crosswoz import Dialogue
from cloud_controller.teachers.chat_service import TeacherService
from cloud_controller.teachers.teacher_backend import TeacherAnswer
from edge_agent.config import ChatConfig, MqttConfig
from edge_agent.models.bundle import write_bundle
from edge_agent.preprocess.pii import Redactor
from edge_agent.preprocess.text import normalize
from edge_agent.protocol import messages as wire
from edge_agent.protocol import topics
from edge_agent.protocol.escalation_wire import DialogueStateWire, parse_request, parse_response
from edge_agent.transport.mqtt import Message, MqttClient
from edge_agent.transport.rpc import Handler
from edgeloop_sim.harness.agent import AgentProcess, agent_config

__all__ = [
    "CrossWozOracle",
    "DialogueReplayConfig",
    "DialogueReplayResult",
    "ReplyFaults",
    "replay_dialogues",
    "unsure_chat_bundle",
]

DEVICE = "replay-dev"


# --------------------------------------------------------------------------- the stand-in models


def unsure_chat_bundle(directory: Path) -> Path:
    """A real chat bundle whose student always says intent ``unsure`` with confidence 0.5, no slots."""
    import onnx
    from onnx import TensorProto, helper

    nodes = [
        helper.make_node("Cast", ["word_ids"], ["wf"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["wf", "zero"], ["wz"]),  # [B, T] zeros
        helper.make_node("ReduceSum", ["wz", "axis1"], ["col"], keepdims=1),  # [B, 1]
        helper.make_node("Concat", ["col", "col"], ["intent_logits"], axis=1),  # [B, 2]: 50/50
        helper.make_node("Unsqueeze", ["wz", "axis2"], ["slot_logits"]),  # [B, T, 1]: tag O only
    ]
    graph = helper.make_graph(
        nodes,
        "unsure",
        [
            helper.make_tensor_value_info("word_ids", TensorProto.INT64, ["B", "T"]),
            helper.make_tensor_value_info("ngram_ids", TensorProto.INT64, ["B", "T", "K"]),
        ],
        [
            helper.make_tensor_value_info("intent_logits", TensorProto.FLOAT, ["B", 2]),
            helper.make_tensor_value_info("slot_logits", TensorProto.FLOAT, ["B", "T", 1]),
        ],
        [
            helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0]),
            helper.make_tensor("axis1", TensorProto.INT64, [1], [1]),
            helper.make_tensor("axis2", TensorProto.INT64, [1], [2]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    vocab = {"format": "edgeloop-chat-tokenizer/1", "words": [], "n_buckets": 16, "ngram_min": 2,
             "ngram_max": 3, "max_ngrams": 4, "max_len": 48}
    return write_bundle(
        directory,
        {
            "model.onnx": model.SerializeToString(),
            "labels.json": json.dumps({"intents": ["unsure", "unsure-too"], "tags": ["O"]}).encode(),
            "vocab.json": json.dumps(vocab).encode(),
        },
        {"name": "unsure", "task": "chat", "version": "unsure-1"},
    )


class CrossWozOracle:
    """Teacher backend that answers from the CrossWOZ annotations (an oracle, not a model).

    Annotation values are redacted with the edge's default redactor, as the
    teacher only ever sees redacted text.
    """

    version = "crosswoz-oracle-1"

    def __init__(self, dialogues: Sequence[Dialogue], chat: ChatConfig | None = None) -> None:
        red = Redactor(chat or ChatConfig())
        self.redact = lambda s: red.redact(s).text
        self._turns: dict[tuple[str, str], TeacherAnswer] = {}
        for d in dialogues:
            for t in d.turns:
                key = (d.id, normalize(self.redact(t.text))[:2000])
                slots = {k: self.redact(v) for k, v in t.informed.items()}
                self._turns.setdefault(key, TeacherAnswer(t.intent, slots, 0.99))
        self.misses = 0

    def predict_batch(self, texts: Sequence[str]) -> list[TeacherAnswer]:
        return self.predict_turns([(t, None) for t in texts])

    def predict_turns(self, turns: Sequence[tuple[str, DialogueStateWire | None]]) -> list[TeacherAnswer]:
        out = []
        for text, state in turns:
            hit = self._turns.get((state.session, text)) if state is not None else None
            if hit is None:
                self.misses += 1
                hit = TeacherAnswer("unknown", {}, 0.0)
            out.append(hit)
        return out


# --------------------------------------------------------------------------- faults on the teacher side


@dataclass
class FaultRates:
    drop: float = 0.0
    duplicate: float = 0.0
    delay: float = 0.0  # delayed past the edge's timeout: arrives late, after a retry
    reorder: float = 0.0  # held back until a later reply went out


@dataclass
class ReplyFaults:
    """Wraps the teacher's request handler; publishes replies itself so it can mangle their delivery."""

    client: MqttClient
    rates: FaultRates
    delay_s: float
    seed: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    # (session, version) -> the state the teacher returned for it; request id -> the state it received
    returned: dict[tuple[str, int], DialogueStateWire] = field(default_factory=dict)
    received: list[DialogueStateWire] = field(default_factory=list)
    received_turns: list[tuple[str, int]] = field(default_factory=list)  # (session, turn) in arrival order
    _held: list[tuple[str, bytes, Properties]] = field(default_factory=list)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)

    def wrap(self, inner: Handler) -> Handler:
        async def handler(msg: Message) -> bytes | None:
            with contextlib.suppress(Exception):
                req = parse_request(msg.payload)
                if req.state is not None:
                    self.received.append(req.state)
                    self.received_turns.append((req.state.session, req.turn or 0))
            body = await inner(msg)
            reply_to = getattr(msg.properties, "ResponseTopic", None)
            if body is None or not reply_to:
                return body
            with contextlib.suppress(Exception):
                resp = parse_response(body)
                if resp.state is not None:
                    self.returned[(resp.state.session, resp.state.version)] = resp.state
            props = Properties(PacketTypes.PUBLISH)
            corr = getattr(msg.properties, "CorrelationData", None)
            if corr is not None:
                props.CorrelationData = corr
            await self._deliver(str(reply_to), body, props)
            return None  # delivered (or not) here

        return handler

    def _fate(self) -> str:
        r = self._rng.random()
        for name in ("drop", "duplicate", "delay", "reorder"):
            p = getattr(self.rates, name)
            if r < p:
                return name
            r -= p
        return "ok"

    async def _deliver(self, topic: str, body: bytes, props: Properties) -> None:
        fate = self._fate()
        self.counts[fate] = self.counts.get(fate, 0) + 1
        if fate == "drop":
            return
        if fate == "delay":
            self._later(self.delay_s, [(topic, body, props)])
            return
        if fate == "reorder":
            self._held.append((topic, body, props))
            self._later(self.delay_s / 4, [])  # released by the next reply, or by this timer
            return
        await self.client.publish(topic, body, qos=1, properties=props)
        if fate == "duplicate":
            await self.client.publish(topic, body, qos=1, properties=props)
        held, self._held = self._held, []
        for t, b, p in held:  # now after a later reply: reordered
            await self.client.publish(t, b, qos=1, properties=p)

    def _later(self, delay: float, items: list[tuple[str, bytes, Properties]]) -> None:
        async def run() -> None:
            await asyncio.sleep(delay)
            if not items:
                items.extend(self._held)
                self._held.clear()
            for t, b, p in items:
                with contextlib.suppress(Exception):
                    await self.client.publish(t, b, qos=1, properties=p)

        task = asyncio.create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


# --------------------------------------------------------------------------- the replay


@dataclass
class DialogueReplayConfig:
    dialogues: Sequence[Dialogue]
    faults: FaultRates = field(default_factory=FaultRates)
    seed: int = 0
    concurrency: int = 8  # dialogues in flight at once
    timeout_s: float = 0.6  # the edge's escalation timeout
    retries: int = 3
    turn_deadline_s: float = 30.0  # a turn without a reply by then is lost


@dataclass
class DialogueReplayResult:
    turns: int = 0
    replies: int = 0
    lost: int = 0
    cloud_answered: int = 0
    rolled_back: int = 0
    in_sync: int = 0  # turns after which the edge's state equals the cloud's
    request_in_sync: int = 0  # requests whose state equals the edge's state after the previous turn
    requests: int = 0
    interleaved: int = 0  # a reply whose version went backwards within its session
    teacher_out_of_order: int = 0  # a request whose turn went backwards within its session, at the teacher
    stuck: int = 0  # rolled-back turns that waited out the timeout (no answer in time)
    stuck_others_progressed: int = 0  # ... during whose wait another session got a reply
    carried: int = 0  # earlier annotated slots present after an answered escalated turn
    carry_total: int = 0
    final_slots_hit: int = 0  # annotated slots (user informs) present in the final state
    final_slots_total: int = 0
    belief_hit: int = 0  # CrossWOZ belief-state values (sys_state) present in the final state
    belief_total: int = 0
    oracle_misses: int = 0
    mojibake: int = 0
    faults: dict[str, int] = field(default_factory=dict)
    edge_counters: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def sync_rate(self) -> float:
        return self.in_sync / self.turns if self.turns else 0.0

    @property
    def carried_rate(self) -> float:
        return self.carried / self.carry_total if self.carry_total else 1.0

    def as_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if k != "notes"}
        d.update(sync_rate=self.sync_rate, carried_rate=self.carried_rate)
        return d


def _view_state(view: dict[str, Any] | None) -> tuple[Any, ...] | None:
    if view is None:
        return None
    slots = dict(view.get("slots", {}))
    return (view["session_id"], view.get("intent"), slots, view["step"], view["version"])


def _wire_state(st: DialogueStateWire | None) -> tuple[Any, ...] | None:
    return None if st is None else (st.session, st.intent, dict(st.slots), st.step, st.version)


def _scrape(agent: AgentProcess) -> dict[str, float]:
    import re
    import urllib.request

    m = re.search(r'"metrics_port": (\d+)', agent.log_text())
    if m is None:
        return {}
    with urllib.request.urlopen(f"http://127.0.0.1:{m.group(1)}/metrics", timeout=5) as r:
        text = r.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if ("dialogue_events_total" in line or "escalations_total" in line) and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name.split("{", 1)[1].rstrip("}")] = float(value)
    return out


async def replay_dialogues(cfg: DialogueReplayConfig, tmp: Path, mqtt: MqttConfig) -> DialogueReplayResult:
    """Run the replay against the broker ``mqtt`` points at; the agent runs as a real process."""
    res = DialogueReplayResult()
    bundle = unsure_chat_bundle(tmp / "unsure-bundle")
    acfg = agent_config(
        tmp,
        "dlg-node",
        mqtt.port,
        chat={
            "workers": 4,
            "escalation": {"mode": "threshold", "threshold": 0.8, "max_rate": 1.0, "window": 10,
                           "timeout_s": cfg.timeout_s, "retries": cfg.retries, "cache_max_entries": 0,
                           "hard_examples": False},
        },
        models={"chat_bundle": str(bundle)},
    )
    oracle = CrossWozOracle(cfg.dialogues)
    t0 = time.monotonic()
    tclient = MqttClient(mqtt, "teacher-replay", name="teacher", clean_start=True)
    await tclient.start()
    await tclient.wait_connected(10)
    faults = ReplyFaults(tclient, cfg.faults, delay_s=cfg.timeout_s * 1.5, seed=cfg.seed)
    svc = TeacherService(tclient, oracle, wrap_handler=faults.wrap)
    await svc.start()
    agent = AgentProcess(tmp, acfg)
    replies: dict[str, list[dict[str, Any]]] = {}
    arrived: dict[str, float] = {}  # msg_id -> when its reply reached the device (monotonic)
    started: dict[str, float] = {}  # session -> when its first turn was published
    got = asyncio.Event()
    device = MqttClient(mqtt, "replay-device", name="device", clean_start=True,
                        subscriptions=[(topics.device_chat_out(DEVICE), 1)])
    try:
        await asyncio.to_thread(agent.start)
        await device.start()
        await device.wait_connected(10)

        async def reader() -> None:
            async for msg in device.messages():
                out = json.loads(msg.payload)
                replies.setdefault(out["session_id"], []).append(out)
                arrived.setdefault(out["msg_id"], time.monotonic())
                device.ack(msg)
                got.set()

        read_task = asyncio.create_task(reader())
        sem = asyncio.Semaphore(cfg.concurrency)

        async def run(d: Dialogue) -> None:
            async with sem:
                started[d.id] = time.monotonic()
                for i, turn in enumerate(d.turns):
                    msg = wire.ChatIn(session_id=d.id, msg_id=f"{d.id}-{i + 1}", text=turn.text,
                                      ts=time.time(), seq=i + 1)
                    await device.publish(topics.device_chat_in(DEVICE), wire.dumps(msg), qos=1)
                deadline = time.monotonic() + cfg.turn_deadline_s
                while len(replies.get(d.id, [])) < len(d.turns) and time.monotonic() < deadline:
                    got.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(got.wait(), deadline - time.monotonic())

        await asyncio.gather(*(run(d) for d in cfg.dialogues))
        read_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await read_task
        await asyncio.sleep(1.2)  # let the agent's metrics sync (once a second) before scraping
        res.edge_counters = await asyncio.to_thread(_scrape, agent)
    finally:
        await device.stop(timeout=1)
        await svc.stop()
        await tclient.stop(timeout=1)
        await asyncio.to_thread(agent.terminate)
        agent.close()
    res.seconds = time.monotonic() - t0
    res.faults = dict(faults.counts)
    res.oracle_misses = oracle.misses
    _score(cfg.dialogues, replies, faults, oracle, res)
    _score_isolation(cfg, replies, arrived, started, faults, res)
    return res


def _score_isolation(
    cfg: DialogueReplayConfig,
    replies: dict[str, list[dict[str, Any]]],
    arrived: dict[str, float],
    started: dict[str, float],
    faults: ReplyFaults,
    res: DialogueReplayResult,
) -> None:
    """One turn in flight per session, and a session stuck on the teacher holds up no other.

    At the teacher a session's turns must arrive in order (a retry repeats a
    turn, never goes back). A rolled-back turn that took at least the edge's
    timeout since its session's previous reply (or its first publish) waited
    for the teacher: it counts as stuck, and as not blocking when some other
    session's reply reached the device within that wait.
    """
    last: dict[str, int] = {}
    for session, turn in faults.received_turns:
        res.teacher_out_of_order += int(turn < last.get(session, 0))
        last[session] = max(turn, last.get(session, 0))
    times = sorted((t, mid.rsplit("-", 1)[0]) for mid, t in arrived.items())
    for d in cfg.dialogues:
        since = started.get(d.id)
        for i in range(len(d.turns)):
            mid = f"{d.id}-{i + 1}"
            t = arrived.get(mid)
            if t is None or since is None:
                continue
            out = next((o for o in replies.get(d.id, []) if o["msg_id"] == mid), None)
            # Half the timeout: the previous reply reaches the device up to a commit tick after the
            # session is released, so a turn that timed out may show a little less than the timeout.
            if out is not None and out["source"] != "cloud" and t - since >= cfg.timeout_s / 2:
                res.stuck += 1
                res.stuck_others_progressed += int(any(since < u < t and s != d.id for u, s in times))
            since = t


def _score(
    dialogues: Sequence[Dialogue],
    replies: dict[str, list[dict[str, Any]]],
    faults: ReplyFaults,
    oracle: CrossWozOracle,
    res: DialogueReplayResult,
) -> None:
    received_by_session: dict[str, list[DialogueStateWire]] = {}
    for sent in faults.received:
        received_by_session.setdefault(sent.session, []).append(sent)
    for d in dialogues:
        res.turns += len(d.turns)
        outs = replies.get(d.id, [])
        res.replies += len(outs)
        by_id = {o["msg_id"]: o for o in outs}
        res.lost += sum(1 for i in range(len(d.turns)) if f"{d.id}-{i + 1}" not in by_id)
        versions = [o["state"]["version"] for o in outs if o.get("state")]
        res.interleaved += sum(1 for a, b in itertools.pairwise(versions) if b < a)
        prev: tuple[Any, ...] | None = None
        edge_states: set[Any] = {None}
        for i in range(len(d.turns)):
            o = by_id.get(f"{d.id}-{i + 1}")
            if o is None:
                continue
            st: tuple[Any, ...] | None = _view_state(o.get("state"))
            if o["source"] == "cloud":
                res.cloud_answered += 1
                cloud = _wire_state(faults.returned.get((d.id, i + 1)))
                ok = st == cloud
                if ok and i > 0:
                    pre = {k: oracle.redact(v) for k, v in d.expected_slots(i - 1).items()}
                    slots = st[2] if st else {}
                    now = {k: oracle.redact(v) for k, v in d.expected_slots(i).items()}
                    res.carry_total += len(pre)
                    res.carried += sum(1 for k in pre if slots.get(k) == now[k])
            else:
                res.rolled_back += 1
                ok = st == prev or (st is None and prev is None)
            res.in_sync += int(ok)
            if ok:
                prev = st
            edge_states.add(json.dumps(st, ensure_ascii=False, sort_keys=True) if st else None)
            for ch in json.dumps(o, ensure_ascii=False):
                if "\u00c0" <= ch <= "\u00ff":  # Latin-1 letters in a Chinese dialogue: decoded twice
                    res.mojibake += 1
                    break
        for rst in received_by_session.get(d.id, []):
            res.requests += 1
            key = _wire_state(rst) if rst.version > 0 else None
            res.request_in_sync += int(
                (json.dumps(key, ensure_ascii=False, sort_keys=True) if key else None) in edge_states
            )
        final = prev[2] if prev else {}
        expected = {k: oracle.redact(v) for k, v in d.expected_slots(len(d.turns) - 1).items()}
        res.final_slots_total += len(expected)
        res.final_slots_hit += sum(1 for k, v in expected.items() if final.get(k) == v)
        belief = d.turns[-1].state if d.turns else {}
        res.belief_total += len(belief)
        res.belief_hit += sum(1 for k, v in belief.items() if final.get(k) == oracle.redact(v))
