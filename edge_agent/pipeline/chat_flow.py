"""Chat in and out: an utterance is redacted into a job, answered elsewhere, then applied here.

The answer itself (student model, maybe the cloud teacher) involves I/O, so it
happens outside the core: :meth:`ChatFlow.read` returns a :class:`ChatJob`, the
caller answers it, and :meth:`ChatFlow.complete` applies the answer to the
dialogue state, the statistics and the device's reply.
"""

from __future__ import annotations

from dataclasses import dataclass

from edge_agent.config import ChatConfig
from edge_agent.pipeline.batching import Batcher
from edge_agent.pipeline.counters import ModelCounters, PipelineCounters
from edge_agent.pipeline.outputs import Reply, hard_example_record
from edge_agent.preprocess.dialogue import DialogueStore
from edge_agent.preprocess.pii import Redactor
from edge_agent.preprocess.text import normalize
from edge_agent.protocol import messages as wire
from edge_agent.protocol import topics


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
    hard_example: wire.HardExample | None = None


class ChatFlow:
    def __init__(
        self,
        cfg: ChatConfig,
        counters: PipelineCounters,
        model_counters: dict[str, ModelCounters],
        batch: Batcher,
    ) -> None:
        self.redactor = Redactor(cfg)
        self.dialogue = DialogueStore(cfg.max_sessions, cfg.session_ttl_s)
        self.replies: list[Reply] = []
        self._counters = counters
        self._model_counters = model_counters
        self._batch = batch

    def read(self, device: str, payload: bytes, max_bytes: int, now: float) -> ChatJob:
        """Validate and redact; raises RejectedMessage."""
        msg = wire.parse_chat_in(payload, max_bytes)
        self._counters.messages["chat"] += 1
        # Redact before anything else touches the text: nothing downstream ever sees raw PII.
        red = self.redactor.redact(msg.text)
        for kind, k in red.counts.items():
            self._counters.pii_redactions[kind] += k
        return ChatJob(device, msg.model_copy(update={"text": red.text}), normalize(red.text), now)

    def complete(self, job: ChatJob, answer: ChatAnswer, now: float) -> None:
        """Apply an answered utterance: dialogue state, reply, statistics, hard example."""
        counters = self._counters
        msg = job.msg
        # Keyed by device too: session ids are the devices' own, two devices may both use "s1".
        txn = self.dialogue.begin(job.device, msg.session_id, msg.seq, now)
        if txn is None:
            # An update older than the session's current version: dropped, and not answered.
            counters.stale_chat += 1
            return
        with txn as state:
            if answer.intent:
                state.intent = answer.intent
            state.slots.update(answer.slots)
            state.step += 1
        view = self.dialogue.get(job.device, msg.session_id)
        counters.chat_messages += 1
        counters.chat_by_source[answer.source] += 1
        degraded = answer.source == "edge-degraded"
        self._batch.chat.add(
            intent=answer.intent,
            slots=answer.slots,
            confidence=answer.confidence if answer.source != "none" else None,
            escalated=answer.escalated,
            degraded=degraded,
        )
        if answer.source != "none":
            mc = self._model_counters["chat"]
            mc.samples += 1
            mc.escalated += int(answer.escalated)
            mc.confidence_sum += answer.confidence
        if answer.hard_example is not None:
            self._batch.hard.append(hard_example_record(answer.hard_example))
            counters.hard_examples += 1
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
