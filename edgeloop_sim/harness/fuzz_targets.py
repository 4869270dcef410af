"""Fuzz targets: one hypothesis strategy and one entry point per inbound payload type.

Each target feeds generated input into the REAL parsing entry point of the side
that receives it (the agent's ``Pipeline.handle``, the cloud's
``Ingest.process`` (the summary receiver), the teacher's request handler, ...). Inputs are both
structure-aware (a valid payload with one field mutated: wrong types, NaN/Inf,
huge numbers, deep nesting, unicode, topic injection strings, oversize) and raw
bytes.

"Every reject counted" is checked twice: per call, the target classifies the
outcome as ``accepted`` or a short reason label and fails on anything else
(an exception other than the documented rejection type is a crash); per run,
``accepted + sum(rejected by reason) == cases`` in the harness's tally AND in
the component's own counters (pipeline counters, receiver counters and its
SQLite ``rejects`` table, teacher stats), so a reject the component forgets to
count is caught too. Every call is timed: no call may take longer than
``MAX_CALL_S`` (no hang).

The chunk target is the exception to "real entry point": the chunk check lives
inside a closure of ``Downloader._fetch_chunks`` and cannot be called without
a broker session, so :func:`check_chunk` mirrors it line by line on the real
primitives (``ArchiveInfo.chunk_length``, ``topics.chunk_prefix``, sha256). A pure
``check_chunk`` in ``edge_agent/updates/download.py`` would let this test call
the real thing; see the report.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import hashlib
import json
import math
import shutil
import tempfile
import time
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import strategies as st
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from cloud_controller.ingest.loop import Ingest, IngestConfig, summary_receiver
from cloud_controller.releases.signing import public_key_id, sign_manifest
from cloud_controller.teachers.chat_service import TeacherService
from edge_agent.config import AgentConfig, DevicesConfig, MqttConfig
from edge_agent.daemon import Agent
from edge_agent.pipeline.core import Pipeline
from edge_agent.protocol import escalation_wire as ew
from edge_agent.protocol import manifest as verify
from edge_agent.protocol import messages as wire
from edge_agent.protocol import topics
from edge_agent.protocol.errors import ModelRejected, RejectedMessage
from edge_agent.transport.mqtt import Message, MqttClient

__all__ = ["MAX_CALL_S", "TARGETS", "FuzzTarget", "Tally", "check_chunk", "make_target", "run_case"]

MAX_CALL_S = 0.5
NODE = "n1"
DEVICE = "d1"
TS = 1_700_000_000.0

# --------------------------------------------------------------------------- generic mutation

INJECTION = [
    "a/b",
    "+",
    "#",
    "\u0000",
    "a\u0000b",
    "../..",
    "$SYS/broker",
    "devices/+/telemetry",
    "",
    " ",
    "x" * 65,
    "x" * 3000,
    "é",
    "\u202e",
    "\ud800",
    "😀" * 10,
    "${jndi:ldap://x}",
    "'; DROP TABLE x;--",
    "nodes/n2",
    "NaN",
    "Infinity",
    "1e999",
    "0x10",
]
# MQTT topics are valid UTF-8 (the broker and paho refuse anything else): no lone surrogates there.
TOPIC_INJECTION = [s for s in INJECTION if s.encode("utf-8", "surrogatepass").decode("utf-8", "ignore") == s]
WEIRD_NUMBERS: list[Any] = [
    0,
    -1,
    -1e-300,
    1e300,
    1e308,
    2**53 + 1,
    2**63,
    -(2**63) - 1,
    2**200,
    10**4000,
    0.1,
    -0.0,
    True,
    False,
    math.nan,
    math.inf,
    -math.inf,
]


def _leaf() -> st.SearchStrategy[Any]:
    return st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.floats(allow_nan=True, allow_infinity=True),
        st.sampled_from(WEIRD_NUMBERS),
        st.text(max_size=40),
        st.sampled_from(INJECTION),
    )


def _extend(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4))


def weird_value() -> st.SearchStrategy[Any]:
    return st.recursive(_leaf(), _extend, max_leaves=12)


_DEEP = "\u0001DEEP\u0001"


def _encode(obj: Any, *, ascii_: bool, deep: int) -> bytes:
    text = json.dumps(obj, allow_nan=True, ensure_ascii=ascii_)  # NaN/Infinity tokens on purpose
    if deep:
        text = text.replace(json.dumps(_DEEP, ensure_ascii=ascii_), "[" * deep + "]" * deep, 1)
    return text.encode("utf-8", "surrogatepass")  # a lone surrogate becomes invalid UTF-8


@st.composite
def mutated_json(draw: st.DrawFn, base: st.SearchStrategy[dict[str, Any]]) -> bytes:
    """A valid-ish document with zero or more fields replaced, removed, added or nested deeply."""
    doc: Any = copy.deepcopy(draw(base))  # st.just() hands out the same object every time
    # About half the cases stay valid, so the checks past the parser (state, counters, replies) run too.
    op = st.sampled_from(["set", "del", "add", "deep", "wrap", "pad"])
    ops = draw(st.one_of(st.just([]), st.lists(op, min_size=1, max_size=3)))
    deep = 0
    paths = _paths(doc)
    for op in ops:
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent, key = _resolve(doc, path)
        if parent is None:
            continue
        if op == "set":
            parent[key] = draw(weird_value())
        elif op == "del" and isinstance(parent, dict):
            parent.pop(key, None)
        elif op == "add" and isinstance(parent, dict):
            parent[draw(st.sampled_from(INJECTION))] = draw(weird_value())
        elif op == "deep":
            parent[key] = _DEEP
            deep = draw(st.sampled_from([10, 200, 1000, 5000, 100_000]))
        elif op == "wrap":
            parent[key] = [parent[key]]
        elif op == "pad":
            parent[key] = "p" * draw(st.sampled_from([1000, 70_000, 300_000]))
        paths = _paths(doc)
    if draw(st.integers(0, 19)) == 0:
        doc = draw(st.sampled_from([[doc], "string", 1, None, [], {}]))
    return _encode(doc, ascii_=draw(st.booleans()), deep=deep)


def _paths(doc: Any, prefix: tuple[Any, ...] = (), depth: int = 0) -> list[tuple[Any, ...]]:
    out: list[tuple[Any, ...]] = []
    if depth > 4:
        return out
    if isinstance(doc, dict):
        for k, v in doc.items():
            out.append((*prefix, k))
            out.extend(_paths(v, (*prefix, k), depth + 1))
    elif isinstance(doc, list):
        for i, v in enumerate(doc[:4]):
            out.append((*prefix, i))
            out.extend(_paths(v, (*prefix, i), depth + 1))
    return out


def _resolve(doc: Any, path: tuple[Any, ...]) -> tuple[Any, Any]:
    cur = doc
    for p in path[:-1]:
        try:
            cur = cur[p]
        except (KeyError, IndexError, TypeError):
            return None, None
    if isinstance(cur, dict | list):
        return cur, path[-1]
    return None, None


def raw_bytes() -> st.SearchStrategy[bytes]:
    return st.one_of(
        st.binary(max_size=512),
        st.sampled_from(
            [
                b"",
                b"null",
                b"[]",
                b"{}",
                b"NaN",
                b"-Infinity",
                b"1e999",
                b"\xff\xfe{",
                b'{"a":1',
                b"[" * 100_000 + b"]" * 100_000,
                b"9" * 5000,
                b'"\\ud800"',
                b"\x00" * 64,
                b'{"ts": 1e400}',
                b" " * 300_000,
            ]
        ),
    )


def payloads(base: st.SearchStrategy[dict[str, Any]]) -> st.SearchStrategy[bytes]:
    """Mostly structure-aware, some raw bytes."""
    return st.one_of(mutated_json(base), mutated_json(base), mutated_json(base), raw_bytes())


# --------------------------------------------------------------------------- valid bases

ids = st.one_of(
    st.sampled_from(["d1", "s-1", "m.2", "A_b"]), st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9_.\-]{0,10}\Z")
)
finite = st.floats(allow_nan=False, allow_infinity=False, min_value=-1e9, max_value=1e9)
ts_s = st.floats(min_value=0, max_value=4e9, allow_nan=False)


def reading() -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {
            # Valid per the schema (finite, >= 0) but past what a window index can hold: a boundary.
            "ts": st.one_of(ts_s, ts_s, ts_s, st.sampled_from([1e19, 4.6e19, 1e300])),
            "values": st.dictionaries(st.sampled_from(["x", "temp", "p.1", "v-2"]), finite, min_size=1),
        }
    )


telemetry_base = st.one_of(
    reading(), st.fixed_dictionaries({"readings": st.lists(reading(), min_size=1, max_size=5)})
)
chat_base = st.fixed_dictionaries(
    {"session_id": ids, "msg_id": ids, "text": st.text(min_size=1, max_size=60), "ts": ts_s},
    optional={"seq": st.integers(0, 100)},
)


def window_summary() -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {
            "device": ids,
            "metric": st.sampled_from(["x", "temp"]),
            "start": ts_s,
            "end": ts_s,
            "count": st.integers(1, 1000),
            "min": finite,
            "max": finite,
            "mean": finite,
            "std": finite,
            "first": finite,
            "last": finite,
            "slope": finite,
        }
    )


summary_base = st.fixed_dictionaries(
    {
        "id": st.from_regex(r"\A[0-9a-f]{32}\Z"),
        "node": st.just(NODE),
        "seq": st.integers(0, 10**6),
        "created": ts_s,
        "windows": st.lists(window_summary(), max_size=3),
    },
    optional={
        "chat": st.fixed_dictionaries({"messages": st.integers(0, 9), "intents": st.just({"a": 1})}),
        "events": st.just([{"device": "d1", "start": 1.0, "end": 2.0, "score": 0.5}]),
    },
)
model_status = st.fixed_dictionaries(
    {"name": ids, "version": st.just("1.0.0"), "state": st.sampled_from(["active", "failed"])},
    optional={"samples": st.integers(0, 100), "confidence_sum": finite},
)
status_base = st.fixed_dictionaries(
    {"node": st.just(NODE), "online": st.booleans(), "ts": ts_s},
    optional={
        "agent_version": st.just("0.1.0"),
        "models": st.dictionaries(st.sampled_from(["chat", "sensor"]), model_status),
        "counters": st.dictionaries(st.sampled_from(["readings_in", "rejected"]), finite),
        "applied_generation": st.integers(0, 100),
    },
)
hard_base = st.fixed_dictionaries(
    {
        "id": st.from_regex(r"\A[0-9a-f]{32}\Z"),
        "node": st.just(NODE),
        "created": ts_s,
        "task": st.sampled_from(["chat", "sensor"]),
    },
    optional={
        "text": st.text(max_size=40),
        "features": st.lists(finite, max_size=4),
        "student": st.just({"intent": "a", "confidence": 0.3}),
    },
)
student = st.fixed_dictionaries(
    {"intent": st.sampled_from(["book", "play"]), "confidence": st.floats(0, 1)},
    optional={"slots": st.dictionaries(st.sampled_from(["city", "time"]), st.text(max_size=10), max_size=2)},
)
esc_request_base = st.fixed_dictionaries(
    {
        "id": ids,
        "node": st.just(NODE),
        "text": st.text(min_size=1, max_size=60),
        "student": student,
        "ts": ts_s,
    }
)
esc_response_base = st.fixed_dictionaries(
    {"id": ids},
    optional={
        "intent": st.just("book"),
        "slots": st.just({"city": "<LOC>"}),
        "confidence": st.floats(0, 1),
        "tags": st.just(["O", "B-city"]),
        "teacher_version": st.just("t1"),
        "error": st.just("overloaded"),
    },
)
model_ref = st.fixed_dictionaries(
    {
        "name": ids,
        "task": st.sampled_from(["chat", "sensor"]),
        "version": st.just("1.0.0"),
        "digest": st.just("sha256:" + "0" * 64),
        "size": st.integers(0, 10**6),
    },
    optional={"chunks": st.integers(0, 10)},
)
desired_base = st.fixed_dictionaries(
    {"node": st.just(NODE), "generation": st.integers(0, 10**6), "ts": ts_s},
    optional={
        "models": st.dictionaries(st.sampled_from(["chat", "sensor"]), model_ref, max_size=2),
        "pipeline": st.just({"windows": {"length_s": 5.0}}),
        "pipeline_name": st.just("p1"),
    },
)


# --------------------------------------------------------------------------- tally and harness


@dataclass
class Tally:
    name: str
    cases: int = 0
    accepted: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    crashes: list[str] = field(default_factory=list)
    times: list[float] = field(default_factory=list)

    def add(self, outcome: str, seconds: float) -> None:
        self.cases += 1
        self.times.append(seconds)
        if outcome == "accepted":
            self.accepted += 1
        else:
            self.rejected[outcome] += 1

    @property
    def max_s(self) -> float:
        return max(self.times, default=0.0)

    @property
    def p99_s(self) -> float:
        if not self.times:
            return 0.0
        ordered = sorted(self.times)
        return ordered[min(len(ordered) - 1, math.ceil(0.99 * len(ordered)) - 1)]

    def check(self) -> None:
        assert not self.crashes, f"{self.name}: crashes: {self.crashes[:3]}"
        assert self.accepted + sum(self.rejected.values()) == self.cases, self
        bad = [r for r in self.rejected if not _LABEL_OK(r)]
        assert not bad, f"{self.name}: reason labels are not short stable labels: {bad}"


def _LABEL_OK(reason: str) -> bool:
    return 0 < len(reason) <= 40 and reason.replace("_", "").isalnum() and reason.islower()


def run_case(target: FuzzTarget, tally: Tally, case: Any) -> None:
    """Feed one case; record the outcome and its time. A crash is recorded, then re-raised."""
    t0 = time.perf_counter()
    try:
        outcome = target.feed(case)
    except Exception as exc:
        tally.crashes.append(f"{type(exc).__name__}: {str(exc)[:200]} on {_short(case)}")
        raise
    dt = time.perf_counter() - t0
    tally.add(outcome, dt)
    assert dt < MAX_CALL_S, f"{target.name}: one call took {dt:.3f}s on {_short(case)}"


def _short(case: Any) -> str:
    r = repr(case)
    return r if len(r) <= 300 else f"{r[:300]}... ({len(r)} chars)"


class FuzzTarget:
    """One inbound payload type: ``strategy()`` makes cases, ``feed()`` classifies one."""

    name = ""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir

    def strategy(self) -> st.SearchStrategy[Any]:
        raise NotImplementedError

    def feed(self, case: Any) -> str:
        raise NotImplementedError

    def verify_counts(self, tally: Tally) -> None:
        """Compare the harness's tally with the component's own counters (default: nothing to compare)."""

    def close(self) -> None:
        pass


def _device_topic(kind: str) -> st.SearchStrategy[str]:
    good = topics.device_telemetry(DEVICE) if kind == "telemetry" else topics.device_chat_in(DEVICE)
    # The malformed ones are spelled out on purpose: topics.py would refuse to build them.
    return st.one_of(
        st.just(good),
        st.just(good),
        st.just(good),
        st.builds(lambda d: f"devices/{d}/{kind}", st.sampled_from(TOPIC_INJECTION)),
        st.sampled_from(
            ["devices//telemetry", "devices/d1", "devices/d1/chat/out", "other/d1/telemetry", ""]
        ),
    )


class _PipelineTarget(FuzzTarget):
    """The agent's inbound core. Never raises; counters and dead letters account for every input."""

    kind = ""
    base: st.SearchStrategy[dict[str, Any]] = st.just({})

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        cfg = AgentConfig(node_id=NODE, state_dir=workdir, devices=DevicesConfig(max_payload_bytes=64 * 1024))
        self.pipeline = Pipeline(cfg, clock=lambda: TS)
        self.dead = 0

    def strategy(self) -> st.SearchStrategy[Any]:
        return st.tuples(_device_topic(self.kind), payloads(self.base))

    def feed(self, case: Any) -> str:
        topic, payload = case
        c = self.pipeline.counters
        before_msgs, before_rej = sum(c.messages.values()), c.rejected.copy()
        job = self.pipeline.handle(topic, payload, now=TS)
        rej = c.rejected - before_rej
        msgs = sum(c.messages.values()) - before_msgs
        self.dead += len(self.pipeline.take_dead_letters())
        if self.pipeline.windows.pending or len(self.pipeline.windows) > 5000:
            self.pipeline.poll_windows(TS + 1e6, flush=True)
            self.pipeline.take_records(TS, lambda: 0, force=True)
        if rej:
            assert msgs == 0 and job is None and sum(rej.values()) == 1, (rej, msgs)
            return next(iter(rej))
        assert msgs == 1, "neither accepted nor counted as rejected"
        assert (job is not None) == (self.kind == "chat/in")
        if job is not None:
            assert len(job.msg.text) <= 2000
        return "accepted"

    def verify_counts(self, tally: Tally) -> None:
        c = self.pipeline.counters
        assert sum(c.messages.values()) == tally.accepted
        assert dict(c.rejected) == dict(tally.rejected)
        assert self.dead == sum(tally.rejected.values()), "every reject is dead-lettered"


class DeviceTelemetry(_PipelineTarget):
    name, kind, base = "device_telemetry", "telemetry", telemetry_base


class DeviceChatIn(_PipelineTarget):
    name, kind, base = "device_chat_in", "chat/in", chat_base


def _msg(topic: str, payload: bytes, props: Properties | None = None) -> Message:
    return Message(topic=topic, payload=payload, qos=1, retain=False, mid=1, properties=props)


def _node_topic(leaf: str) -> st.SearchStrategy[str]:
    good = topics.node_topic(NODE, leaf)
    return st.one_of(
        st.just(good),
        st.just(good),
        st.just(good),
        st.just(topics.node_topic("n2", leaf)),
        st.builds(lambda n: f"edgeloop/v1/nodes/{n}/{leaf}", st.sampled_from(TOPIC_INJECTION)),
        st.sampled_from(["edgeloop/v1/nodes/n1", "edgeloop/v1/nodes/n1/other", "x/y", ""]),
    )


class _ReceiverTarget(FuzzTarget):
    """The cloud ingest loop's ``process`` (as ``cloud-controller receive`` runs it): never raises, every
    reject counted in memory and in SQLite."""

    leaf = ""

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        self.receiver = summary_receiver(IngestConfig(mqtt=MqttConfig(), db_path=workdir / "receiver.db"))
        self.receiver.summaries.open()
        self.non_finite_accepted = 0

    def feed(self, case: Any) -> str:
        topic, payload = case
        r = self.receiver
        before = dict(r.rejected), self._summaries()
        r.process([_msg(topic, payload)])
        delta = Counter(r.rejected) - Counter(before[0])
        if delta:
            assert sum(delta.values()) == 1 and self._summaries() == before[1]
            return next(iter(delta))
        if self.leaf == "summaries":
            assert self._summaries() == before[1] + 1, "summary neither stored nor rejected"
        elif payload and not _all_finite(_status(r, NODE).model_dump()):
            self.non_finite_accepted += 1
        return "accepted"

    def verify_counts(self, tally: Tally) -> None:
        assert self.receiver.rejected == dict(tally.rejected)
        assert self.receiver.summaries.rejects() == dict(tally.rejected), "SQLite rejects table"
        if self.leaf == "summaries":
            assert self._summaries() == tally.accepted

    def _summaries(self) -> int:
        """Summary batches taken: stored the first time or counted as duplicates."""
        return self.receiver.stats.summaries_stored + self.receiver.stats.duplicates

    def close(self) -> None:
        self.receiver.summaries.close()


def _status(ingest: Ingest, node: str) -> wire.Status:
    state = ingest.fleet.get(node)
    assert state is not None and state.status is not None, "status neither stored nor rejected"
    return state.status


def _all_finite(obj: Any) -> bool:
    if isinstance(obj, float):
        return math.isfinite(obj)
    if isinstance(obj, dict):
        return all(_all_finite(v) for v in obj.values())
    if isinstance(obj, list):
        return all(_all_finite(v) for v in obj)
    return True


@st.composite
def summary_payloads(draw: st.DrawFn) -> bytes:
    choice = draw(st.integers(0, 9))
    if choice == 0:
        return draw(raw_bytes())
    if choice == 1:  # a zip bomb: tiny on the wire, far past the inflate bound
        return zlib.compress(b"{" + b" " * (3 * 1024 * 1024) + b"}", 9)
    if choice == 2:  # truncated zlib stream
        return zlib.compress(draw(mutated_json(summary_base)))[: draw(st.integers(0, 20))]
    return zlib.compress(draw(mutated_json(summary_base)))


class SummaryBatchTarget(_ReceiverTarget):
    name, leaf = "summary_batch", "summaries"

    def strategy(self) -> st.SearchStrategy[Any]:
        return st.tuples(_node_topic("summaries"), summary_payloads())


class StatusTarget(_ReceiverTarget):
    name, leaf = "status", "status"

    def strategy(self) -> st.SearchStrategy[Any]:
        return st.tuples(_node_topic("status"), payloads(status_base))


class HardExampleTarget(FuzzTarget):
    """No cloud component consumes hard examples yet: the contract parse a consumer must use."""

    name = "hard_example"

    def strategy(self) -> st.SearchStrategy[Any]:
        return payloads(hard_base)

    def feed(self, case: Any) -> str:
        try:
            wire.validate(wire.HardExample, wire.loads(case))
        except RejectedMessage as exc:
            return exc.reason
        return "accepted"


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
                _node_topic(topics.ESCALATION_REQUEST_LEAF),
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
            asyncio.wait_for(self.service._handle(_msg(topic, payload, props)), 2.0)
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
        self.agent.desired.on_message(_msg(topics.desired(NODE), payload))
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


# ---- model manifests and chunks: a real signed release to mutate


_KEY = Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"edgeloop-fuzz").digest())
_PUB = _KEY.public_key().public_bytes_raw()
KEYS = {public_key_id(_KEY): _PUB}
CHUNK_SIZE = 1024
ARCHIVE = bytes(range(256)) * 10  # 2560 bytes: chunks of 1024, 1024, 512
CHUNKS = [ARCHIVE[i : i + CHUNK_SIZE] for i in range(0, len(ARCHIVE), CHUNK_SIZE)]


def _manifest_dict() -> dict[str, Any]:
    return {
        "schema": "edgeloop.release/v1",
        "name": "intent",
        "task": "chat",
        "bundle_task": "chat",
        "version": "1.0.0",
        "created": "2024-01-01T00:00:00Z",
        "metrics": {"f1": 0.9},
        "files": [
            {"name": "model.onnx", "sha256": hashlib.sha256(ARCHIVE).hexdigest(), "size": len(ARCHIVE)}
        ],
        "archive": {
            "format": "concat-v1",
            "sha256": hashlib.sha256(ARCHIVE).hexdigest(),
            "size": len(ARCHIVE),
            "chunk_size": CHUNK_SIZE,
            "chunks": [hashlib.sha256(c).hexdigest() for c in CHUNKS],
        },
    }


SIGNED = sign_manifest(_manifest_dict(), _KEY)
SIGNED_BYTES = json.dumps(SIGNED).encode()
MANIFEST = verify.verify_manifest(SIGNED_BYTES, KEYS)


@st.composite
def manifest_payloads(draw: st.DrawFn) -> tuple[bytes, bool]:
    """(payload, re-signed?): mutations are re-signed half the time so checks past the signature run."""
    choice = draw(st.integers(0, 9))
    if choice == 0:
        return draw(raw_bytes()), False
    if choice == 1:
        return SIGNED_BYTES, False
    raw = draw(mutated_json(st.just(dict(SIGNED))))
    resign = draw(st.booleans())
    if resign:
        try:
            doc = json.loads(raw)
        except (ValueError, RecursionError):
            return raw, False
        if isinstance(doc, dict):
            try:
                return json.dumps(sign_manifest(doc, _KEY), allow_nan=True).encode(), True
            except (ValueError, TypeError, RecursionError):
                return raw, False
    return raw, False


class ModelManifestTarget(FuzzTarget):
    name = "model_manifest"

    def strategy(self) -> st.SearchStrategy[Any]:
        return st.tuples(manifest_payloads(), st.booleans())

    def feed(self, case: Any) -> str:
        (payload, _resigned), pin_digest = case
        digest = verify.manifest_digest(SIGNED_BYTES) if pin_digest else None
        try:
            m = verify.verify_manifest(payload, KEYS, digest)
        except ModelRejected as exc:
            return exc.reason
        assert m.archive.size == sum(f.size for f in m.files)
        return "accepted"


def check_chunk(topic: str, payload: bytes, m: verify.ReleaseManifest, have: set[int]) -> str:
    """Mirror of the ``on_message`` closure in ``Downloader._fetch_chunks`` (see module doc).

    Returns "accepted", "ignored" (the closure returns False: not a chunk of this
    release), "duplicate" or "file_hash_mismatch" (the closure drops the chunk, counts
    it and fetches it again later).
    """
    prefix = topics.chunk_prefix(m.name, m.version)
    total = len(m.archive.chunks)
    idx_s = topic.removeprefix(prefix)
    if not topic.startswith(prefix) or not (idx_s.isascii() and idx_s.isdigit()) or not payload:
        return "ignored"
    idx = int(idx_s)
    if idx >= total:
        return "ignored"
    if idx in have:
        return "duplicate"
    if (
        len(payload) != m.archive.chunk_length(idx)
        or hashlib.sha256(payload).hexdigest() != m.archive.chunks[idx]
    ):
        return "file_hash_mismatch"
    have.add(idx)
    return "accepted"


@st.composite
def chunk_cases(draw: st.DrawFn) -> tuple[str, bytes]:
    prefix = topics.chunk_prefix(MANIFEST.name, MANIFEST.version)
    idx = draw(
        st.one_of(
            st.integers(0, 3).map(str),
            st.sampled_from(["-1", "00", "1 ", "", "x", "+", "#", "99999999999"]),
            st.text(max_size=4),
        )
    )
    topic = draw(st.one_of(st.just(prefix + idx), st.just(prefix + idx), st.text(max_size=30)))
    i = int(idx) if idx.isascii() and idx.isdigit() and int(idx) < len(CHUNKS) else 0
    payload = draw(
        st.one_of(
            st.just(CHUNKS[i]),
            st.just(CHUNKS[i][:-1]),
            st.just(CHUNKS[i] + b"x"),
            st.binary(max_size=64),
            st.just(b""),
            st.just(CHUNKS[i][:-1] + bytes([CHUNKS[i][-1] ^ 1])),
        )
    )
    return topic, payload


class ModelChunkTarget(FuzzTarget):
    name = "model_chunk"

    def strategy(self) -> st.SearchStrategy[Any]:
        return chunk_cases()

    def feed(self, case: Any) -> str:
        topic, payload = case
        try:
            out = check_chunk(topic, payload, MANIFEST, set())
        except ModelRejected as exc:
            return exc.reason
        return "accepted" if out == "accepted" else out


TARGETS: dict[str, Callable[[Path], FuzzTarget]] = {
    t.name: t
    for t in (
        DeviceTelemetry,
        DeviceChatIn,
        SummaryBatchTarget,
        StatusTarget,
        HardExampleTarget,
        EscalationRequestTarget,
        EscalationResponseTarget,
        DesiredStateTarget,
        ModelManifestTarget,
        ModelChunkTarget,
    )
}


def make_target(name: str, workdir: Path | None = None) -> FuzzTarget:
    """Build a target; without ``workdir`` a temporary one is made (and removed by ``close``)."""
    if workdir is not None:
        return TARGETS[name](workdir)
    tmp = Path(tempfile.mkdtemp(prefix=f"fuzz-{name}-"))
    target = TARGETS[name](tmp)
    inner = target.close

    def close() -> None:
        inner()
        shutil.rmtree(tmp, ignore_errors=True)

    target.close = close  # type: ignore[method-assign]
    return target
