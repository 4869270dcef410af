"""Chat utterances answered off the ingest path: student model, maybe the cloud teacher, then the reply.

Inference (and an escalation round trip) must not stall telemetry, so the
inbound reader queues each :class:`ChatJob` here; a worker answers it, hands
the answer to the pipeline and leaves the inbound message for the next commit
tick to acknowledge. Replies to devices go out after that tick (see
:class:`ReplyPublisher`).

Turns of one session are answered one at a time, in arrival order
(:class:`~edge_agent.services.session_queue.SessionQueue`): an escalated turn
carries the session's state, and the next turn must start from the state this
one leaves. Other sessions keep every worker meanwhile.

Tracing (:mod:`edge_agent.ops.tracing`). Each turn is one span ``chat.turn``,
continuing the device's ``traceparent`` when it sent one, with the children
``chat.validate`` (parse and redact, timed from the message's arrival),
``chat.queue`` (waiting behind the session's earlier turns or for a worker),
``chat.student``, ``chat.escalate`` (whose ``escalation.rpc`` the teacher
continues) and ``chat.merge``. The turn's latency lands in
``chat_turn_seconds`` with the trace id as an exemplar, so a slow p99 bucket
leads to its trace. With tracing off every span is the shared no-op one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from edge_agent.config import AgentConfig
from edge_agent.escalation.escalator import Escalator
from edge_agent.ops.metrics import AgentMetrics
from edge_agent.ops.tracing import NOOP, Span, Tracing
from edge_agent.pipeline.chat_flow import ChatAnswer, ChatFlow, ChatJob
from edge_agent.pipeline.core import Pipeline
from edge_agent.pipeline.outputs import Reply
from edge_agent.preprocess.dialogue import SessionKey
from edge_agent.protocol.errors import MqttError, RejectedMessage
from edge_agent.services.active_models import ActiveModels
from edge_agent.services.session_queue import SessionQueue
from edge_agent.tick import CommitTick
from edge_agent.transport.mqtt import Message, MqttClient
from edge_agent.transport.redelivery import RedeliveryGuard

log = logging.getLogger(__name__)


class ChatAnswers:
    def __init__(
        self,
        pipeline: Pipeline,
        redelivery: RedeliveryGuard,
        tick: CommitTick,
        models: ActiveModels,
        escalator: Escalator | None,
        metrics: AgentMetrics,
        *,
        config: Callable[[], AgentConfig],
        tracing: Tracing = NOOP,
    ) -> None:
        self._pipeline = pipeline
        self._tracing = tracing
        self._redelivery = redelivery
        self._tick = tick
        self._models = models
        self._escalator = escalator
        self._metrics = metrics
        self._config = config
        self.queue: SessionQueue[SessionKey, tuple[ChatJob, Message, Span, int]] = SessionQueue(maxsize=1000)

    async def submit(self, job: ChatJob, msg: Message) -> None:
        """Queue a turn behind its session's earlier turns (waits while 1000 turns wait)."""
        span = self._start_turn(job, msg)
        queued_ns = time.time_ns() if self._tracing.enabled else 0
        await self.queue.put(ChatFlow.session_key(job), (job, msg, span, queued_ns))

    async def worker(self) -> None:
        while True:
            key, item = await self.queue.get()
            await self.process(key, item)

    async def process(self, key: SessionKey, item: tuple[ChatJob, Message, Span, int]) -> None:
        """Answer one queued turn, apply it, and release its session for the next turn."""
        tracing = self._tracing
        job, msg, span, queued_ns = item
        try:
            if queued_ns:
                tracing.start("chat.queue", span, start_ns=queued_ns).end()
            answer = await self.answer(job, span)
            with tracing.start("chat.merge", span):
                self._pipeline.complete_chat(job, answer)
        finally:
            self.queue.done(key)
        self._redelivery.absorbed(msg.mid, msg.topic, msg.payload)
        self._tick.ack_after_commit(msg)
        self._end_turn(job, answer, span)

    def _start_turn(self, job: ChatJob, msg: Message) -> Span:
        tracing = self._tracing
        if not tracing.enabled:
            return tracing.start("chat.turn")
        received_ns = int(job.received * 1e9)
        span = tracing.start(
            "chat.turn",
            tracing.extract(msg.properties),  # the device's trace, when it sent one
            kind="server",
            start_ns=received_ns,
            attrs={"device": job.device, "session": job.msg.session_id, "msg_id": job.msg.msg_id},
        )
        tracing.start("chat.validate", span, start_ns=received_ns).end()
        return span

    def _end_turn(self, job: ChatJob, answer: ChatAnswer, span: Span) -> None:
        span.set("source", answer.source)
        span.set("escalated", answer.escalated)
        span.end()
        tid = span.trace_id
        self._metrics.chat_turn_seconds.labels(source=answer.source).observe(
            max(0.0, time.time() - job.received), exemplar={"trace_id": tid} if tid else None
        )

    async def answer(self, job: ChatJob, span: Span | None = None) -> ChatAnswer:
        tracing = self._tracing
        model = self._models.chat_model
        if model is None:
            return ChatAnswer(None, {}, 0.0, "none")
        t0 = time.perf_counter()
        try:
            with tracing.start("chat.student", span):
                pred = await asyncio.to_thread(model.predict, job.text)
        except Exception:
            log.exception("chat model failed on an input")
            self._pipeline.note_model_error("chat")
            return ChatAnswer(None, {}, 0.0, "none")
        tid = span.trace_id if span is not None else None
        self._metrics.inference_seconds.labels(model="chat").observe(
            time.perf_counter() - t0, exemplar={"trace_id": tid} if tid else None
        )
        if self._escalator is None:
            return ChatAnswer(pred.intent, dict(pred.slots), pred.confidence, "edge")
        try:
            state, turn, base = self._pipeline.chat_turn_state(job)
        except RejectedMessage:
            # Too large to travel: the teacher answers the utterance alone, the edge merges it.
            self._pipeline.counters.dialogue["state_not_sent"] += 1
            state, turn, base = None, None, None
        with tracing.start("chat.escalate", span) as esc:
            ans = await self._escalator.answer(job.text, pred, state, turn, parent=esc)
            esc.set("source", ans.source)
            esc.set("degraded_reason", ans.degraded_reason)
            esc.set("escalated", ans.escalated)
            esc.set("cached", ans.cached)
        hard = ans.hard_example if self._config().chat.escalation.hard_examples else None
        return ChatAnswer(
            ans.intent,
            dict(ans.slots),
            ans.confidence,
            ans.source,
            ans.escalated,
            hard,
            state=ans.state,
            base_version=base,
            rolled_back=state is not None and ans.source == "edge-degraded",
        )


class ReplyPublisher:
    """Replies to devices on the local broker; a full queue drops a reply rather than stall the tick."""

    def __init__(self, client: MqttClient, metrics: AgentMetrics) -> None:
        self._client = client
        self._metrics = metrics
        self._queue: asyncio.Queue[Reply] = asyncio.Queue(maxsize=10_000)

    def offer(self, reply: Reply) -> None:
        with contextlib.suppress(asyncio.QueueFull):
            self._queue.put_nowait(reply)

    async def run(self) -> None:
        while True:
            reply = await self._queue.get()
            try:
                await self._client.publish(reply.topic, reply.payload, qos=1, timeout=5.0)
            except (MqttError, TimeoutError):
                self._metrics.uplink_errors.labels(kind="reply").inc()
