"""Chat in and out: an utterance is redacted into a job, answered elsewhere, then applied here.

The answer itself (student model, maybe the cloud teacher) involves I/O, so it
happens outside the core: :meth:`ChatFlow.read` returns a :class:`ChatJob`, the
caller answers it, and :meth:`ChatFlow.complete` applies the answer to the
dialogue state, the statistics and the device's reply.

Dialogue state sync (what an escalated turn does to the session):

* :meth:`ChatFlow.turn_state` gives the session's committed state, redacted
  like the utterance, and the version this turn will produce; the escalation
  carries both to the teacher.
* An answer that carries the teacher's state replaces intent, slots and step
  (the teacher saw the whole state and merged this turn into it), so edge and
  cloud hold the same state after the turn.
* An escalation that failed (timeout, rejected or stale answer) rolls the turn
  back: the session stays at its last consistent state and the device still
  gets the student's answer, marked ``edge-degraded``.
* An answer for a session that went away (expired, evicted, ended; a session
  past its TTL counts as gone before housekeeping sweeps it) or moved on while
  the teacher thought is dropped and counted: ``answer_for_gone_session``,
  ``duplicate_answer`` (the session is at the version this turn produces: it
  was applied already) or ``stale_answer`` (any other version).

Callers must keep one turn per session in flight (:class:`edge_agent.services.session_queue.SessionQueue`):
the checks above detect interleaving, they do not order it.
"""

from __future__ import annotations

from dataclasses import dataclass

from edge_agent.config import ChatConfig
from edge_agent.pipeline.batching import Batcher
from edge_agent.pipeline.counters import ModelCounters, PipelineCounters
from edge_agent.pipeline.outputs import Reply, hard_example_record
from edge_agent.preprocess.dialogue import DialogueState, DialogueStore, SessionKey
from edge_agent.preprocess.pii import Redactor
from edge_agent.preprocess.text import normalize
from edge_agent.protocol import messages as wire
from edge_agent.protocol import topics
from edge_agent.protocol.escalation_wire import DialogueStateWire, dialogue_state


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
    # Dialogue sync: the teacher's state after this turn, the session version the turn started
    # from (None: a new session) and whether a failed escalation rolls the turn back.
    state: DialogueStateWire | None = None
    base_version: int | None = None
    rolled_back: bool = False


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
        self._ttl = cfg.session_ttl_s
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

    @staticmethod
    def session_key(job: ChatJob) -> SessionKey:
        """The key of the job's session in :attr:`dialogue` (and of its turn queue).

        Keyed by device too: session ids are the devices' own, two devices may both use "s1".
        """
        return job.device, job.msg.session_id

    def turn_state(self, job: ChatJob, now: float) -> tuple[DialogueStateWire, int, int | None]:
        """The session's committed state (redacted), the version this turn produces, the base version.

        Raises RejectedMessage ``bad_state`` when the state is too large to travel.
        """
        key = self.session_key(job)
        cur = self.dialogue.get(*key)
        if cur is not None and now - cur.updated > self._ttl:
            cur = None  # past its TTL: the commit will start a new session
        base = cur.version if cur is not None else None
        seq = job.msg.seq
        turn = seq if seq is not None else (base or 0) + 1
        if cur is None:
            return dialogue_state(job.msg.session_id, None, {}, 0, 0, now), turn, None
        slots = {k: self.redactor.redact(v).text for k, v in cur.slots.items()}
        sid = job.msg.session_id
        return dialogue_state(sid, cur.intent, slots, cur.step, cur.version, cur.updated), turn, base

    def _live(self, key: SessionKey, now: float) -> DialogueState | None:
        """The session's committed state, None when it is gone or past its TTL (swept or not yet)."""
        cur = self.dialogue.get(*key)
        return None if cur is None or now - cur.updated > self._ttl else cur

    @staticmethod
    def _orphan_event(job: ChatJob, answer: ChatAnswer, cur: DialogueState | None) -> str:
        """Why an answer found its session no longer where the turn left it (the counter's name)."""
        if cur is None:
            return "answer_for_gone_session"
        produced = job.msg.seq if job.msg.seq is not None else (
            answer.state.version if answer.state is not None else None)
        # At the version this very turn produces: the answer was applied already.
        return "duplicate_answer" if cur.version == produced else "stale_answer"

    def complete(self, job: ChatJob, answer: ChatAnswer, now: float) -> None:
        """Apply an answered utterance: dialogue state, reply, statistics, hard example."""
        counters = self._counters
        msg = job.msg
        key = self.session_key(job)
        if answer.state is not None or answer.rolled_back:
            cur = self._live(key, now)
            if answer.base_version is not None and (cur is None or cur.version != answer.base_version):
                # The session went away (expired, evicted, ended) or moved on while the teacher answered.
                counters.dialogue[self._orphan_event(job, answer, cur)] += 1
                return
        if answer.rolled_back:
            counters.dialogue["rolled_back"] += 1
            view = self._live(key, now)
        else:
            txn = self.dialogue.begin(*key, msg.seq, now)
            if txn is None:
                # An update older than the session's current version: dropped, and not answered.
                counters.stale_chat += 1
                return
            with txn as state:
                if answer.state is not None:
                    state.intent = answer.state.intent
                    state.slots = dict(answer.state.slots)
                    state.step = answer.state.step
                else:
                    if answer.intent:
                        state.intent = answer.intent
                    state.slots.update(answer.slots)
                    state.step += 1
            if answer.state is not None:
                counters.dialogue["merged"] += 1
            view = self.dialogue.get(*key)
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
