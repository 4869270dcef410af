"""The agent's processing core: inbound payload in, state and outbound records out.

It does no I/O. The daemon feeds it messages and, once per commit tick, takes
what it produced (closed windows batched into summaries, rejected input,
changed state for the checkpoint) and commits all of it in one SQLite
transaction before acknowledging the inbound messages. Keeping this pure makes
the exactly-once argument local: whatever the pipeline has absorbed is either
in the same transaction as its acknowledgement or will be redelivered.

:class:`Pipeline` is the one face the tick and the daemon see; the work is in
the modules next to it (telemetry, chat_flow, sensor_scoring, batching,
checkpoint).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from edge_agent.config import AgentConfig
from edge_agent.pipeline import checkpoint
from edge_agent.pipeline.batching import Batcher
from edge_agent.pipeline.chat_flow import ChatAnswer, ChatFlow, ChatJob
from edge_agent.pipeline.counters import ModelCounters, PipelineCounters
from edge_agent.pipeline.limits import PerDeviceCap, RateLimitedLog
from edge_agent.pipeline.outputs import Outgoing, RejectedInput, Reply
from edge_agent.pipeline.sensor_scoring import SensorScorer, SensorScoring
from edge_agent.pipeline.telemetry import absorb_telemetry
from edge_agent.preprocess.pii import Redactor
from edge_agent.preprocess.windows import UnsummarisableWindow, WindowAggregator
from edge_agent.protocol import topics
from edge_agent.protocol.device_errors import device_error_payload
from edge_agent.protocol.errors import RejectedMessage
from edge_agent.protocol.escalation_wire import DialogueStateWire

log = logging.getLogger(__name__)


class Pipeline:
    def __init__(self, cfg: AgentConfig, *, clock: Callable[[], float] = time.time) -> None:
        self.cfg = cfg
        self._clock = clock
        self.windows = WindowAggregator(cfg.windows)
        self.counters = PipelineCounters()
        self.model_counters: dict[str, ModelCounters] = {"chat": ModelCounters(), "sensor": ModelCounters()}
        self._batch = Batcher(self.counters)
        self._chat = ChatFlow(cfg.chat, self.counters, self.model_counters, self._batch)
        self._sensor = SensorScoring(self.counters, self.model_counters, self._batch)
        self._rejected: list[RejectedInput] = []
        self._allowed = frozenset(cfg.devices.allowed)
        self._reject_log = RateLimitedLog()
        self._error_cap = PerDeviceCap()
        self._error_replies: list[Reply] = []

    def reconfigure(self, cfg: AgentConfig) -> None:
        """Apply a reloaded config to what can change live; open windows keep their length."""
        self.cfg = cfg
        self.windows.cfg = cfg.windows
        self._chat.redactor = Redactor(cfg.chat)
        self._allowed = frozenset(cfg.devices.allowed)

    # ------------------------------------------------------------------ inbound
    def handle(self, topic: str, payload: bytes, now: float | None = None) -> ChatJob | None:
        """Absorb one inbound message.

        Telemetry is absorbed at once. A valid chat message comes back as a
        :class:`ChatJob` for the caller to answer (inference may escalate to the
        cloud) and finish with :meth:`complete_chat`. Rejected messages are
        counted and kept as :class:`RejectedInput`; the return value is then None.
        """
        now = self._clock() if now is None else now
        dt: topics.DeviceTopic | None = None
        try:
            dt = topics.parse_device_topic(topic)
            if not self.cfg.devices.allow_unknown and dt.device not in self._allowed:
                raise RejectedMessage("unknown_device", f"device {dt.device!r} is not enrolled on this node")
            max_bytes = self.cfg.devices.max_payload_bytes
            if dt.kind == "telemetry":
                absorb_telemetry(self.windows, self.counters, dt.device, payload, max_bytes, now)
                return None
            return self._chat.read(dt.device, payload, max_bytes, now)
        except RejectedMessage as exc:
            self._reject(topic, payload, exc, now)
            if dt is not None:
                self._answer_device(dt, exc, now)
            return None

    def chat_turn_state(self, job: ChatJob) -> tuple[DialogueStateWire, int, int | None]:
        """The dialogue state an escalation of this turn carries; see :meth:`ChatFlow.turn_state`."""
        return self._chat.turn_state(job, self._clock())

    def _answer_device(self, dt: topics.DeviceTopic, exc: RejectedMessage, now: float) -> None:
        """Tell the device why (on its error topic, after the tick commits), within the per-device cap."""
        if not self._error_cap.allow(dt.device, now):
            self.counters.device_errors_suppressed += 1
            return
        self.counters.device_errors[exc.reason] += 1
        self._error_replies.append(
            Reply(topics.device_errors(dt.device), device_error_payload(dt, exc.reason, exc.detail, now))
        )

    def complete_chat(self, job: ChatJob, answer: ChatAnswer, now: float | None = None) -> None:
        """Apply an answered utterance: dialogue state, reply, statistics, hard example."""
        self._chat.complete(job, answer, self._clock() if now is None else now)

    def note_model_error(self, task: str) -> None:
        self.model_counters[task].errors += 1

    def _reject(self, topic: str, payload: bytes, exc: RejectedMessage, now: float) -> None:
        self.counters.rejected[exc.reason] += 1
        self._rejected.append(
            RejectedInput(
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

    # ------------------------------------------------------------------ models
    def set_sensor_model(self, model: SensorScorer | None, name: str = "") -> None:
        """A new model starts new per-device baselines: scores of two models do not mix."""
        self._sensor.set_model(model, name)

    @property
    def sensor_model(self) -> SensorScorer | None:
        """The model closed windows are scored with (None: windows go upstream unscored)."""
        return self._sensor.model

    def reset_model_counters(self, task: str) -> None:
        self.model_counters[task] = ModelCounters()

    # ------------------------------------------------------------------ tick output
    def poll_windows(self, now_wall: float, *, flush: bool = False) -> None:
        closed = self.windows.flush_all() if flush else self.windows.poll(now_wall)
        for bad in self.windows.take_unsummarisable():
            self._dead_window(bad, now_wall)
        if closed and self._sensor.model is not None:
            closed = self._sensor.score(self.cfg, closed, now_wall)
        if closed:
            self._batch.add_windows(closed, now_wall)

    def _dead_window(self, bad: UnsummarisableWindow, now: float) -> None:
        """A window with no valid summary: dead-lettered and counted, and the tick goes on."""
        self.counters.windows_dead_lettered += 1
        self.counters.readings_dead_lettered += bad.count
        detail = f"{bad.metric} [{bad.start}, {bad.end}) count={bad.count}: {bad.error}"
        self._rejected.append(
            RejectedInput(
                ts=now,
                source="window",
                topic=topics.device_telemetry(bad.device),
                reason="window_unsummarisable",
                detail=detail[:500],
                payload=b"",
            )
        )
        log.error(
            "window dead-lettered: its statistics cannot be summarised",
            extra={"device": bad.device, "metric": bad.metric, "count": bad.count, "error": bad.error[:200]},
        )

    def take_records(
        self, now: float, seq_source: Callable[[], int], *, force: bool = False
    ) -> list[tuple[int, Outgoing]]:
        """Cut pending windows (and chat stats) into summary batches when full or old enough."""
        return self._batch.take_records(self.cfg, now, seq_source, force=force)

    def take_dead_letters(self) -> list[RejectedInput]:
        """Rejected input since the last call, for the dead-letter table."""
        rejected, self._rejected = self._rejected, []
        return rejected

    def take_replies(self) -> list[Reply]:
        replies, self._chat.replies = self._chat.replies, []
        if self._error_replies:
            replies.extend(self._error_replies)
            self._error_replies = []
        return replies

    def dialogue_view(self, device: str, session_id: str) -> dict[str, object] | None:
        """One session's dialogue state as the wire shows it (a cloud call reads it); None if unknown."""
        state = self._chat.dialogue.get(device, session_id)
        return None if state is None else {"device": device, **state.to_view().model_dump(mode="json")}

    def take_state(self) -> tuple[dict[str, bytes], list[str]]:
        return checkpoint.take_state(self.windows, self._chat.dialogue, self._batch)

    def restore(self, states: dict[str, bytes]) -> None:
        checkpoint.restore(self.windows, self._chat.dialogue, self._batch, states, self._clock)
