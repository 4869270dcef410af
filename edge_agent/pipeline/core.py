"""The agent's processing core: inbound payload in, state and outbound records out.

It does no I/O. The daemon feeds it messages and, once per commit tick, takes
what it produced (closed windows batched into summaries, dead letters, changed
state for the checkpoint) and commits all of it in one SQLite transaction
before acknowledging the inbound messages. Keeping this pure makes the
exactly-once argument local: whatever the pipeline has absorbed is either in
the same transaction as its acknowledgement or will be redelivered.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from pydantic import ValidationError

from edge_agent.config import AgentConfig
from edge_agent.escalation.escalator import hard_example_record
from edge_agent.outbox.agent_store import DeadLetter, OutboxRecord
from edge_agent.preprocess.dialogue import DialogueStore
from edge_agent.preprocess.pii import Redactor
from edge_agent.preprocess.text import normalize
from edge_agent.preprocess.windows import WindowAggregator
from edge_agent.protocol import messages as wire
from edge_agent.protocol import topics
from edge_agent.protocol.errors import RejectedMessage

if TYPE_CHECKING:  # numpy is imported only when a sensor model is loaded
    from edge_agent.models.features import DeviceBaseline
    from edge_agent.models.sensor_runtime import Annotation, UncertainWindow

log = logging.getLogger(__name__)

PENDING_WINDOWS_KEY = "pend:windows"
PENDING_CHAT_KEY = "pend:chat"
PENDING_EVENTS_KEY = "pend:events"


@dataclass
class Reply:
    topic: str
    payload: bytes


@dataclass
class ChatJob:
    """A validated, redacted utterance waiting for the model (and maybe the teacher)."""

    device: str
    msg: wire.ChatIn
    text: str  # redacted and normalized: the only form that is ever stored or sent upstream
    received: float


@dataclass
class ChatAnswer:
    intent: str | None
    slots: dict[str, str]
    confidence: float
    source: str  # edge | cloud | edge-degraded | none
    escalated: bool = False
    hard_example: OutboxRecord | None = None


class SensorScorer(Protocol):
    """What the pipeline needs of a sensor model (see inference/sensor_runtime.py)."""

    def new_baseline(self) -> DeviceBaseline: ...

    def annotate(
        self,
        summaries: list[wire.WindowSummary],
        device: str,
        baseline: DeviceBaseline,
        band: tuple[float, float],
    ) -> Annotation: ...


@dataclass
class ModelCounters:
    """Per-task health since the active model was loaded: what a rollout's analysis reads."""

    samples: int = 0
    escalated: int = 0
    errors: int = 0
    confidence_sum: float = 0.0


@dataclass
class PipelineCounters:
    messages: Counter[str] = field(default_factory=Counter)
    readings: int = 0
    raw_equivalent_bytes: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    windows_emitted: int = 0
    summaries: int = 0
    chat_messages: int = 0
    pii_redactions: Counter[str] = field(default_factory=Counter)
    stale_chat: int = 0
    chat_by_source: Counter[str] = field(default_factory=Counter)
    anomaly_events: int = 0
    hard_examples: int = 0
    sensor_uncertain: int = 0  # windows scored inside the uncertainty band
    sensor_hard_examples_dropped: int = 0  # uncertain windows over the per-minute cap


class _MinuteCap:
    """At most ``limit`` admissions in any 60 s of the caller's clock; memory bounded by ``limit``.

    A sliding window rather than a per-minute bucket: a burst straddling a
    minute boundary still gets ``limit``, not ``2 * limit``.
    """

    def __init__(self) -> None:
        self._times: deque[float] = deque()

    def admit(self, now: float, limit: int) -> bool:
        times = self._times
        while times and (now - times[0] >= 60.0 or len(times) > limit):
            times.popleft()
        if len(times) >= limit:
            return False
        times.append(now)
        return True


class _RateLimitedLog:
    """At most ``per_s`` log lines a second per reason, so a flood of junk cannot flood the journal."""

    def __init__(self, per_s: float = 5.0) -> None:
        self._per_s = per_s
        self._window: dict[str, tuple[float, int]] = {}
        self.suppressed = 0

    def allow(self, reason: str, now: float) -> bool:
        start, n = self._window.get(reason, (now, 0))
        if now - start >= 1.0:
            start, n = now, 0
        self._window[reason] = (start, n + 1)
        if n < self._per_s:
            return True
        self.suppressed += 1
        return False


class Pipeline:
    def __init__(self, cfg: AgentConfig, *, clock: Callable[[], float] = time.time) -> None:
        self.cfg = cfg
        self._clock = clock
        self.windows = WindowAggregator(cfg.windows)
        self.redactor = Redactor(cfg.chat)
        self.dialogue = DialogueStore(cfg.chat.max_sessions, cfg.chat.session_ttl_s)
        self.counters = PipelineCounters()
        self._pending_windows: list[wire.WindowSummary] = []
        self._pending_since: float | None = None
        self._pending_dirty = False
        self._chat = _ChatAccumulator()
        self._dead: list[DeadLetter] = []
        self.replies: list[Reply] = []
        self._allowed = frozenset(cfg.devices.allowed)
        self._reject_log = _RateLimitedLog()
        self._events: list[wire.AnomalyEvent] = []
        self._hard: list[OutboxRecord] = []
        self._sensor_cap = _MinuteCap()
        self.sensor_model: SensorScorer | None = None
        self.sensor_model_name = ""
        self._baselines: dict[str, DeviceBaseline] = {}
        self.model_counters: dict[str, ModelCounters] = {"chat": ModelCounters(), "sensor": ModelCounters()}

    # ------------------------------------------------------------------ config
    def reconfigure(self, cfg: AgentConfig) -> None:
        """Apply a reloaded config to what can change live; open windows keep their length."""
        self.cfg = cfg
        self.windows.cfg = cfg.windows
        self.redactor = Redactor(cfg.chat)
        self._allowed = frozenset(cfg.devices.allowed)

    # ------------------------------------------------------------------ inbound
    def handle(self, topic: str, payload: bytes, now: float | None = None) -> ChatJob | None:
        """Absorb one inbound message.

        Telemetry is absorbed at once. A valid chat message comes back as a
        :class:`ChatJob` for the caller to answer (inference may escalate to the
        cloud) and finish with :meth:`complete_chat`. Rejected messages are
        counted and dead-lettered; the return value is then None.
        """
        now = self._clock() if now is None else now
        try:
            dt = topics.parse_device_topic(topic)
            if not self.cfg.devices.allow_unknown and dt.device not in self._allowed:
                raise RejectedMessage("unknown_device", f"device {dt.device!r} is not enrolled on this node")
            if dt.kind == "telemetry":
                self._telemetry(dt.device, payload, now)
                return None
            return self._chat_in(dt.device, payload, now)
        except RejectedMessage as exc:
            self._reject(topic, payload, exc, now)
            return None

    def _telemetry(self, device: str, payload: bytes, now: float) -> None:
        # The whole payload is validated before any reading is absorbed: a batch is taken whole or not at all.
        readings = wire.parse_telemetry(payload, self.cfg.devices.max_payload_bytes)
        self.counters.messages["telemetry"] += 1
        add = self.windows.add
        raw = 0
        n = 0
        base = 42 + len(device)
        if len(readings) < 8:
            for r in readings:
                ts = r.ts
                row = base + len(repr(ts))
                for metric, value in r.values.items():
                    # The schema bounds timestamps and values, so the aggregator accepts all of them.
                    add(device, metric, ts, value, now)
                    raw += row + len(metric) + len(repr(value))
                    n += 1
        else:
            # A batch: one series per metric, folded in by runs (same result, several times faster).
            series: dict[str, tuple[list[float], list[float]]] = {}
            for r in readings:
                ts = r.ts
                row = base + len(repr(ts))
                for metric, value in r.values.items():
                    sv = series.get(metric)
                    if sv is None:
                        sv = series[metric] = ([], [])
                    sv[0].append(ts)
                    sv[1].append(value)
                    raw += row + len(metric) + len(repr(value))
                    n += 1
            for metric, (tl, vl) in series.items():
                self.windows.add_many(device, metric, tl, vl, now)
        self.counters.readings += n
        self.counters.raw_equivalent_bytes += raw

    def _chat_in(self, device: str, payload: bytes, now: float) -> ChatJob:
        msg = wire.parse_chat_in(payload, self.cfg.devices.max_payload_bytes)
        self.counters.messages["chat"] += 1
        # Redact before anything else touches the text: nothing downstream ever sees raw PII.
        red = self.redactor.redact(msg.text)
        for kind, k in red.counts.items():
            self.counters.pii_redactions[kind] += k
        return ChatJob(device, msg.model_copy(update={"text": red.text}), normalize(red.text), now)

    def complete_chat(self, job: ChatJob, answer: ChatAnswer, now: float | None = None) -> None:
        """Apply an answered utterance: dialogue state, reply, statistics, hard example."""
        now = self._clock() if now is None else now
        msg = job.msg
        txn = self.dialogue.begin(msg.session_id, msg.seq, now)
        if txn is None:
            # An update older than the session's current version: dropped, and not answered.
            self.counters.stale_chat += 1
            return
        with txn as state:
            if answer.intent:
                state.intent = answer.intent
            state.slots.update(answer.slots)
            state.step += 1
        view = self.dialogue.get(msg.session_id)
        self.counters.chat_messages += 1
        self.counters.chat_by_source[answer.source] += 1
        degraded = answer.source == "edge-degraded"
        self._chat.add(
            intent=answer.intent,
            slots=answer.slots,
            confidence=answer.confidence if answer.source != "none" else None,
            escalated=answer.escalated,
            degraded=degraded,
        )
        if answer.source != "none":
            mc = self.model_counters["chat"]
            mc.samples += 1
            mc.escalated += int(answer.escalated)
            mc.confidence_sum += answer.confidence
        if answer.hard_example is not None:
            self._hard.append(answer.hard_example)
            self.counters.hard_examples += 1
        out = wire.ChatOut(
            session_id=msg.session_id,
            msg_id=msg.msg_id,
            intent=answer.intent,
            slots=answer.slots,
            confidence=answer.confidence,
            source=answer.source,  # type: ignore[arg-type]
            state=view.to_view() if view is not None else None,
        )
        self.replies.append(Reply(topics.device_chat_out(job.device), wire.dumps(out)))

    def note_model_error(self, task: str) -> None:
        self.model_counters[task].errors += 1

    def _reject(self, topic: str, payload: bytes, exc: RejectedMessage, now: float) -> None:
        self.counters.rejected[exc.reason] += 1
        self._dead.append(
            DeadLetter(
                ts=now,
                source="device",
                topic=topic[:256],
                reason=exc.reason,
                detail=exc.detail[:500],
                payload=payload[:1024],
            )
        )
        if self._reject_log.allow(exc.reason, now):
            log.warning(
                "rejected inbound message",
                extra={
                    "reason": exc.reason,
                    "detail": exc.detail[:200],
                    "topic": topic[:256],
                    "bytes": len(payload),
                },
            )

    # ------------------------------------------------------------------ tick output
    def poll_windows(self, now_wall: float, *, flush: bool = False) -> None:
        closed = self.windows.flush_all() if flush else self.windows.poll(now_wall)
        if closed and self.sensor_model is not None:
            closed = self._score(closed, now_wall)
        if closed:
            self._pending_windows.extend(closed)
            self.counters.windows_emitted += len(closed)
            self._pending_dirty = True
            if self._pending_since is None:
                self._pending_since = now_wall

    def _score(self, closed: list[wire.WindowSummary], now: float) -> list[wire.WindowSummary]:
        """Anomaly scores into the summaries, over-threshold windows into events, unsure ones upstream."""
        model = self.sensor_model
        assert model is not None
        band = self.cfg.sensor.uncertain_band
        out: list[wire.WindowSummary] = []
        by_device: dict[str, list[wire.WindowSummary]] = {}
        for w in closed:
            by_device.setdefault(w.device, []).append(w)
        mc = self.model_counters["sensor"]
        for device, ws in by_device.items():
            baseline = self._baselines.get(device)
            if baseline is None:
                baseline = self._baselines[device] = model.new_baseline()
            try:
                annotated, events, uncertain = model.annotate(ws, device, baseline, band)
            except Exception:
                log.exception("sensor model failed; windows sent unscored", extra={"device": device})
                mc.errors += 1
                out.extend(ws)
                continue
            out.extend(annotated)
            scores = {w.start: w.anomaly_score for w in annotated if w.anomaly_score is not None}
            mc.samples += len(scores)
            # Confidence of a binary score: how far from a coin flip (a rollout's minMeanConfidence).
            mc.confidence_sum += sum(max(s, 1.0 - s) for s in scores.values())
            ends = {w.start: w.end for w in annotated}
            for start, score in events:
                self._events.append(
                    wire.AnomalyEvent(
                        device=device,
                        start=start,
                        end=ends.get(start, start),
                        score=score,
                        model=self.sensor_model_name,
                    )
                )
            self.counters.anomaly_events += len(events)
            for u in uncertain:
                self._uncertain(device, u, now)
        return out

    def _uncertain(self, device: str, u: UncertainWindow, now: float) -> None:
        """An uncertain window is an escalation of the sensor model; a capped sample goes upstream.

        Counted as an escalation even when it is not sent (disabled, capped), so
        a rollout's escalation rate measures the model, not the sampling. The id
        is derived from (node, device, window, model): a window replayed after a
        restart yields the same id, which the cloud deduplicates.
        """
        self.model_counters["sensor"].escalated += 1
        self.counters.sensor_uncertain += 1
        sc = self.cfg.sensor
        if not sc.hard_examples:
            return
        if not self._sensor_cap.admit(now, sc.max_hard_examples_per_minute):
            self.counters.sensor_hard_examples_dropped += 1
            return
        node, model = self.cfg.node_id, self.sensor_model_name
        key = json.dumps([node, device, u.start, model]).encode()
        try:
            example = wire.HardExample(
                id=hashlib.sha256(key).hexdigest()[:32],
                node=node,
                created=now,
                task="sensor",
                text=None,
                features=[round(float(v), 5) for v in u.x],
                student={"score": u.score, "model": model, "device": device, "start": u.start, "end": u.end},
                teacher=None,
            )
        except ValidationError:  # a non-finite input cannot go on the wire; the window is still scored
            log.warning("sensor hard example not representable", extra={"device": device, "start": u.start})
            self.counters.sensor_hard_examples_dropped += 1
            return
        self._hard.append(hard_example_record(example))
        self.counters.hard_examples += 1

    def set_sensor_model(self, model: SensorScorer | None, name: str = "") -> None:
        """A new model starts new per-device baselines: scores of two models do not mix."""
        self.sensor_model = model
        self.sensor_model_name = name
        self._baselines.clear()
        self.model_counters["sensor"] = ModelCounters()

    def reset_model_counters(self, task: str) -> None:
        self.model_counters[task] = ModelCounters()

    def take_records(
        self, now: float, seq_source: Callable[[], int], *, force: bool = False
    ) -> list[tuple[int, OutboxRecord]]:
        """Cut pending windows (and chat stats) into summary batches when full or old enough."""
        out: list[tuple[int, OutboxRecord]] = []
        oc = self.cfg.outbox
        due = force or (self._pending_since is not None and now - self._pending_since >= oc.batch_max_delay_s)
        while self._pending_windows and (len(self._pending_windows) >= oc.batch_max_windows or due):
            chunk = self._pending_windows[: oc.batch_max_windows]
            del self._pending_windows[: oc.batch_max_windows]
            out.append(self._record(chunk, now, seq_source))
        if (due or force) and (self._chat.messages or self._events) and not out:
            out.append(self._record([], now, seq_source))
        for rec in self._hard:
            out.append((seq_source(), rec))
        self._hard.clear()
        if not self._pending_windows:
            self._pending_since = None
        if out:
            self._pending_dirty = True
        return out

    def _record(
        self, chunk: list[wire.WindowSummary], now: float, seq_source: Callable[[], int]
    ) -> tuple[int, OutboxRecord]:
        seq = seq_source()
        chat = self._chat.take()
        events, self._events = self._events, []
        batch = wire.SummaryBatch(
            id=wire.new_id(),
            node=self.cfg.node_id,
            seq=seq,
            created=now,
            windows=[_compact(w) for w in chunk],
            chat=chat,
            events=events,
        )
        self.counters.summaries += 1
        return seq, OutboxRecord(
            id=batch.id,
            topic=topics.summaries(self.cfg.node_id),
            payload=wire.encode_summary(batch),
            created=now,
            kind="summary",
        )

    def take_dead_letters(self) -> list[DeadLetter]:
        dead, self._dead = self._dead, []
        return dead

    def take_replies(self) -> list[Reply]:
        replies, self.replies = self.replies, []
        return replies

    def take_state(self) -> tuple[dict[str, bytes], list[str]]:
        ups, dels = self.windows.take_dirty()
        d_ups, d_dels = self.dialogue.take_dirty()
        ups.update(d_ups)
        dels = [*dels, *d_dels]
        if self._pending_dirty or self._chat.dirty:
            ups[PENDING_WINDOWS_KEY] = json.dumps(
                [w.model_dump(exclude_none=True) for w in self._pending_windows]
            ).encode()
            ups[PENDING_CHAT_KEY] = self._chat.to_bytes()
            ups[PENDING_EVENTS_KEY] = json.dumps([e.model_dump() for e in self._events]).encode()
            self._pending_dirty = False
            self._chat.dirty = False
        return ups, dels

    def restore(self, states: dict[str, bytes]) -> None:
        pend = states.pop(PENDING_WINDOWS_KEY, None)
        chat = states.pop(PENDING_CHAT_KEY, None)
        events = states.pop(PENDING_EVENTS_KEY, None)
        if events:
            self._events = [wire.AnomalyEvent.model_validate(e) for e in json.loads(events)]
        self.windows.restore({k: v for k, v in states.items() if k.startswith("win:")})
        self.dialogue.restore({k: v for k, v in states.items() if k.startswith("dlg:")})
        if pend:
            self._pending_windows = [wire.WindowSummary.model_validate(w) for w in json.loads(pend)]
            if self._pending_windows:
                self._pending_since = self._clock()
        if chat:
            self._chat = _ChatAccumulator.from_bytes(chat)


_STAT_FIELDS = ("min", "max", "mean", "std", "first", "last", "slope", "anomaly_score")


def _sig(x: float, digits: int = 7) -> float:
    return float(f"{x:.{digits}g}")


def _compact(w: wire.WindowSummary) -> wire.WindowSummary:
    """Round statistics to float32 precision (7 significant digits) for the wire.

    Full float64 reprs of derived statistics (17 digits of noise) are what zlib
    cannot compress; no sensor is that precise. Counts and window bounds stay exact.
    """
    return w.model_copy(update={f: _sig(v) for f in _STAT_FIELDS if (v := getattr(w, f)) is not None})


class _ChatAccumulator:
    """Chat statistics since the last summary; persisted with the tick like the windows."""

    def __init__(self) -> None:
        self.reset()
        self.dirty = False

    def reset(self) -> None:
        self.messages = 0
        self.intents: Counter[str] = Counter()
        self.slots: Counter[str] = Counter()
        self.escalated = 0
        self.degraded = 0
        self.conf_sum = 0.0
        self.conf_n = 0

    def add(
        self,
        intent: str | None,
        slots: dict[str, str],
        confidence: float | None,
        escalated: bool = False,
        degraded: bool = False,
    ) -> None:
        self.messages += 1
        if intent:
            self.intents[intent] += 1
        for name in slots:
            self.slots[name] += 1
        if confidence is not None:
            self.conf_sum += confidence
            self.conf_n += 1
        self.escalated += int(escalated)
        self.degraded += int(degraded)
        self.dirty = True

    def take(self) -> wire.ChatStats | None:
        if not self.messages:
            return None
        stats = wire.ChatStats(
            messages=self.messages,
            intents=dict(self.intents),
            slots=dict(self.slots),
            escalated=self.escalated,
            degraded=self.degraded,
            mean_confidence=self.conf_sum / self.conf_n if self.conf_n else None,
        )
        self.reset()
        self.dirty = True
        return stats

    def to_bytes(self) -> bytes:
        return json.dumps(
            {
                "messages": self.messages,
                "intents": self.intents,
                "slots": self.slots,
                "escalated": self.escalated,
                "degraded": self.degraded,
                "conf_sum": self.conf_sum,
                "conf_n": self.conf_n,
            }
        ).encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> _ChatAccumulator:
        d = json.loads(raw)
        acc = cls()
        acc.messages = d["messages"]
        acc.intents = Counter(d["intents"])
        acc.slots = Counter(d["slots"])
        acc.escalated, acc.degraded = d["escalated"], d["degraded"]
        acc.conf_sum, acc.conf_n = d["conf_sum"], d["conf_n"]
        return acc
