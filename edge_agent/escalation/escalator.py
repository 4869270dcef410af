"""Ask the cloud teacher when the student is unsure, without ever blocking the answer on it.

Order of a decision (why in that order):

1. Cache hit: the teacher already answered this normalized text within the
   TTL, so answer from the cache. No RPC, no budget spent; the utterance still
   counts in the budget's window (it is traffic).
2. The budget (:mod:`.budget`) says no: answer locally (``source="edge"``).
3. Otherwise an MQTT 5 request/response to the teacher (response topic +
   correlation data, ``timeout_s``). A timeout, a lost connection, a broker
   denial, a teacher error or a malformed answer all end in the student's own
   answer marked ``"edge-degraded"``: the device always gets an answer, and
   the status counters show how often the cloud was missed.

Dialogue state. With ``state`` and ``turn`` the request carries the session's
committed state and the version the turn will produce; the answer must return
that session at exactly that version (else ``stale_state``: discarded, counted,
and the turn degrades, so the caller rolls the session back). Responses that
arrive after their request gave up, or twice, never reach this code: the RPC
layer finds no waiting request for their correlation data and counts them
(``late_or_duplicate``). A request that timed out is sent again up to
``retries`` times with the same id (the teacher is stateless, so answering it
twice is harmless), which turns a lost response into a late answer instead of
a lost turn.

Each answer from the teacher (not each cache hit: that would duplicate the same
pair in the training set) yields a :class:`edge_agent.protocol.messages.HardExample` with
the redacted text, the student's and the teacher's outputs, ready for the
outbox (:func:`edge_agent.pipeline.outputs.hard_example_record`) and the next distillation.

Fail fast on disconnect. :meth:`edge_agent.transport.rpc.Rpc.request` fails at
once when it cannot publish, but a connection lost *after* the PUBACK would leave
the request waiting for the full timeout. A small watcher task therefore holds
one future per connection that resolves when the link drops; every in-flight
request races against it, so a disconnect degrades within milliseconds.

Response topic. The broker ACL lets a node read only
``edgeloop/v1/nodes/{node}/rpc/response/#``, so the request names
:func:`edge_agent.protocol.topics.rpc_response` as its reply topic.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal, Protocol

from pydantic import ValidationError

from edge_agent.escalation.answer_cache import AnswerCache
from edge_agent.escalation.budget import EscalationBudget
from edge_agent.ops.tracing import NOOP, Span, Tracing
from edge_agent.preprocess.text import normalize
from edge_agent.protocol import messages as wire
from edge_agent.protocol import topics
from edge_agent.protocol.errors import MqttError, PublishDenied, RejectedMessage
from edge_agent.protocol.escalation_wire import (
    DialogueStateWire,
    EscalationRequest,
    EscalationResponse,
    StudentOutput,
    parse_response,
)
from edge_agent.transport.mqtt import Message, MqttClient
from edge_agent.transport.rpc import Rpc

__all__ = ["Answer", "EscalationStats", "Escalator", "StudentLike"]

log = logging.getLogger(__name__)

Source = Literal["edge", "cloud", "edge-degraded"]


class StudentLike(Protocol):
    """The part of :class:`~edge_agent.models.chat_runtime.ChatPrediction` escalation needs."""

    @property
    def intent(self) -> str: ...
    @property
    def confidence(self) -> float: ...
    @property
    def slots(self) -> Mapping[str, str]: ...


@dataclass(frozen=True, slots=True)
class Answer:
    intent: str
    slots: dict[str, str]
    confidence: float
    source: Source
    escalated: bool  # an RPC was attempted for this utterance
    cached: bool
    hard_example: wire.HardExample | None = None
    teacher_version: str | None = None
    # timeout | disconnect | denied | teacher_error | bad_response | bad_state | stale_state
    degraded_reason: str | None = None
    state: DialogueStateWire | None = None  # the teacher's state after this turn, checked


@dataclass
class EscalationStats:
    cache_hit: int = 0
    escalated: int = 0  # RPCs attempted
    answered: int = 0  # RPCs answered by the teacher
    degraded: int = 0
    local: int = 0
    retried: int = 0  # requests sent again after a timeout
    reasons: dict[str, int] = field(default_factory=dict)  # degraded reasons
    late_or_duplicate: Callable[[], int] = lambda: 0  # responses the RPC layer found nobody waiting for

    def as_dict(self) -> dict[str, int]:
        out = {
            "cache_hit": self.cache_hit,
            "escalated": self.escalated,
            "answered": self.answered,
            "degraded": self.degraded,
            "local": self.local,
        }
        if self.retried:
            out["retried"] = self.retried
        if late := self.late_or_duplicate():
            out["late_or_duplicate"] = late
        out.update({f"degraded_{k}": v for k, v in self.reasons.items()})
        return out


class _Degraded(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason
        super().__init__(f"{reason}: {detail}")


class Escalator:
    def __init__(
        self,
        client: MqttClient,
        node_id: str,
        budget: EscalationBudget,
        cache: AnswerCache[EscalationResponse],
        timeout_s: float = 5.0,
        *,
        qos: int = 1,
        retries: int = 0,
        clock: Callable[[], float] = time.time,
        tracing: Tracing = NOOP,
    ) -> None:
        self.client = client
        self.tracing = tracing
        self.node_id = topics.validate_node_id(node_id)
        self.budget = budget
        self.cache = cache
        self.timeout_s = timeout_s
        self.qos = qos
        self.retries = max(0, retries)
        self._clock = clock
        self.request_topic = topics.escalation_request(node_id)
        self.response_topic = topics.rpc_response(node_id, client.client_id)
        self.stats = EscalationStats()
        self._rpc = Rpc(client)
        self.stats.late_or_duplicate = lambda: self._rpc.unmatched_responses
        self._watch_task: asyncio.Task[None] | None = None
        self._down: asyncio.Future[None] | None = None

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Start the disconnect watcher (also started lazily by the first escalation)."""
        self._arm()
        if self._watch_task is None or self._watch_task.done():
            self._watch_task = asyncio.create_task(self._watch(), name=f"escalation-watch-{self.node_id}")

    async def stop(self) -> None:
        task, self._watch_task = self._watch_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._down is not None and not self._down.done():
            self._down.cancel()
        self._down = None

    # ------------------------------------------------------------------ the decision

    async def answer(
        self,
        text_redacted: str,
        student: StudentLike,
        state: DialogueStateWire | None = None,
        turn: int | None = None,
        parent: Span | None = None,
    ) -> Answer:
        """Answer one utterance; never raises for cloud trouble (that is a degraded answer).

        ``state`` (redacted) and ``turn`` make it a dialogue turn: see the module docstring.
        Each request sent is a client span ``escalation.rpc`` under ``parent``; the teacher continues it.
        """
        text = normalize(text_redacted)[:2000]
        conf = float(student.confidence)
        if state is not None and turn is None:
            turn = state.version + 1
        hit = self.cache.get(text) if text else None
        if hit is not None:
            self.budget.observe(conf)
            self.stats.cache_hit += 1
            return Answer(
                hit.intent,
                dict(hit.slots),
                hit.confidence,
                "cloud",
                escalated=False,
                cached=True,
                teacher_version=hit.teacher_version,
            )
        if not text:
            self.budget.observe(conf)
        if not text or not self.budget.decide(conf):
            self.stats.local += 1
            return self._local(student, "edge", escalated=False)
        self.stats.escalated += 1
        try:
            req = EscalationRequest(
                id=wire.new_id(),
                node=self.node_id,
                text=text,
                ts=self._clock(),
                student=StudentOutput(
                    intent=str(student.intent),
                    confidence=min(max(conf, 0.0), 1.0),
                    slots={str(k): str(v) for k, v in student.slots.items()},
                ),
                state=state,
                turn=turn if state is not None else None,
            )
            resp = await self._call(req, parent)
        except _Degraded as exc:
            return self._degrade(student, exc.reason, str(exc))
        except ValidationError as exc:  # the student's own output does not fit the contract
            return self._degrade(student, "bad_request", str(exc)[:200])
        self.stats.answered += 1
        self.cache.put(text, resp)
        hard = wire.HardExample(
            id=wire.new_id(),
            node=self.node_id,
            created=self._clock(),
            task="chat",
            text=text,
            student=req.student.model_dump(),
            teacher={
                "intent": resp.intent,
                "slots": dict(resp.slots),
                "confidence": resp.confidence,
                "version": resp.teacher_version,
                **({"tags": list(resp.tags)} if resp.tags else {}),
            },
        )
        return Answer(
            resp.intent,
            dict(resp.slots),
            resp.confidence,
            "cloud",
            escalated=True,
            cached=False,
            hard_example=hard,
            teacher_version=resp.teacher_version,
            state=resp.state if req.state is not None else None,
        )

    def _local(
        self, student: StudentLike, source: Source, *, escalated: bool, reason: str | None = None
    ) -> Answer:
        return Answer(
            str(student.intent),
            dict(student.slots),
            float(student.confidence),
            source,
            escalated=escalated,
            cached=False,
            degraded_reason=reason,
        )

    def _degrade(self, student: StudentLike, reason: str, detail: str) -> Answer:
        self.stats.degraded += 1
        self.stats.reasons[reason] = self.stats.reasons.get(reason, 0) + 1
        log.info("escalation degraded (%s): %s", reason, detail)
        return self._local(student, "edge-degraded", escalated=True, reason=reason)

    # ------------------------------------------------------------------ RPC

    async def _call(self, req: EscalationRequest, parent: Span | None = None) -> EscalationResponse:
        await self.start()
        payload = wire.dumps(req)
        attempt = 0
        while True:
            span = self.tracing.start("escalation.rpc", parent, kind="client", attrs={"attempt": attempt})
            try:
                with span:
                    msg = await self._race_disconnect(payload, self.tracing.inject(span))
                break
            except PublishDenied as exc:
                raise _Degraded("denied", str(exc)) from exc
            except MqttError as exc:
                if not self.client.connected:
                    raise _Degraded("disconnect", str(exc)) from exc
                if attempt >= self.retries:
                    raise _Degraded("timeout", str(exc)) from exc
                attempt += 1
                self.stats.retried += 1
        try:
            resp = parse_response(msg.payload)
        except RejectedMessage as exc:
            raise _Degraded("bad_state" if exc.reason == "bad_state" else "bad_response", str(exc)) from exc
        if resp.error is not None:
            raise _Degraded("teacher_error", resp.error)
        if resp.id != req.id:
            raise _Degraded("bad_response", f"response id {resp.id!r} != request id {req.id!r}")
        if req.state is not None:
            got = resp.state
            if got is None or got.session != req.state.session or got.version != req.turn:
                seen = None if got is None else (got.session, got.version)
                raise _Degraded("stale_state", f"asked {req.state.session!r} v{req.turn}, got {seen}")
        return resp

    async def _race_disconnect(self, payload: bytes, props: list[tuple[str, str]]) -> Message:
        down = self._arm()
        req = asyncio.create_task(self._request(payload, props), name="escalation-rpc")
        waiters: set[asyncio.Future[object]] = {req} if down is None else {req, down}  # type: ignore[arg-type]
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not req.done():
                req.cancel()
                with contextlib.suppress(asyncio.CancelledError, MqttError):
                    await req
        if req.cancelled():
            raise MqttError("connection lost while waiting for the teacher")
        return req.result()

    async def _request(self, payload: bytes, props: list[tuple[str, str]]) -> Message:
        return await self._rpc.request(
            self.request_topic,
            payload,
            timeout=self.timeout_s,
            qos=self.qos,
            response_topic=self.response_topic,
            user_properties=props,
        )

    def _arm(self) -> asyncio.Future[None] | None:
        """The future that resolves when the current connection drops (None while disconnected).

        Armed synchronously, so a request sent right after start() or a reconnect
        already races against it, before the watcher task has had a turn.
        """
        if self._down is None and self.client.connected:
            self._down = asyncio.get_running_loop().create_future()
        return self._down

    async def _watch(self) -> None:
        try:
            while True:
                await self.client.wait_connected(None)
                down = self._arm()
                await self.client.wait_disconnected(None)
                if self._down is down:
                    self._down = None
                if down is not None and not down.done():
                    down.set_result(None)
        except MqttError:  # the client was stopped for good
            return

