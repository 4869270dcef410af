"""Teacher service: answers the edge's escalation RPCs, batching concurrent requests.

Why batching: a transformer teacher costs nearly the same for 1 or 32 short
utterances, so when many nodes escalate at once (a new word trending, a bad
student rollout) answering them one call each would queue them behind each
other. Requests are collected up to ``max_batch`` and handed to
``TeacherModel.predict_batch`` in one worker-thread call, so the event loop
keeps reading MQTT meanwhile and the next batch fills while this one runs.

Adaptive linger. ``max_wait_ms`` is only spent when there is evidence of
concurrency (more than one request already waiting, or the previous batch had
more than one). A lone request under light load is dispatched at once: waiting
would add ``max_wait_ms`` to every sequential escalation and buy nothing.

Trust. The request topic is ``edgeloop/v1/nodes/{node}/rpc/request/escalate``
and the broker ACL lets a node publish only under its own ``nodes/{node}/``,
so the topic names the sender. The payload's ``node`` must match it, and the
response topic must lie under that node's ``rpc/response/`` subtree, so one
node cannot make the teacher publish into another node's inbox. Bad requests
get an error response (the edge degrades at once instead of waiting for its
timeout) and are counted by reason.

Scale-out. The service subscribes with a shared subscription
(``$share/teachers/...``), so several replicas split the load; mosquitto
2.0.11 forwards the MQTT 5 response topic and correlation data through
shared subscriptions (covered by tests/edge/test_escalation.py, which always goes
through the shared filter).

Dialogue state. A request may carry the session's state and the version of
its turn; the answer then returns that state updated by the turn (the model's
intent when it names one, the slots it filled merged over the earlier ones,
the next step) at that version. The service keeps no session: the state
travels, so any replica answers any turn and a retried request gets the same
answer. A model that wants the state as context (an LLM, the CrossWOZ oracle
of the replay) implements ``DialogueTeacherModel``; the others see text only.

Backends. Who answers is a :class:`~cloud_controller.teachers.teacher_backend.TeacherBackend`:
the built-in model (:mod:`cloud_controller.teachers.model_backend`; a plain
``TeacherModel`` given here is wrapped in it) or an OpenAI-compatible endpoint
(:mod:`cloud_controller.teachers.openai_compat`). ``route(node)`` picks the
backend per request (the EdgePipeline that selects the node names it,
:mod:`cloud_controller.teachers.routing`); without a route, or when it names
none, the default backend answers, and with no backend at all the request gets
the error ``no_teacher``. Serial backends are fed by the batcher; the others
are called from the request's own task (see ``backends``), bounded by
``max_pending`` in flight like the queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from cloud_controller.teachers.model_backend import ModelBackend, TeacherModel
from cloud_controller.teachers.teacher_backend import Refusal, TeacherBackend, TeacherPrediction, TeacherTurn
from edge_agent.protocol import messages as wire
from edge_agent.protocol.errors import RejectedMessage
from edge_agent.protocol.escalation_wire import (
    DialogueStateWire,
    EscalationRequest,
    EscalationResponse,
    dialogue_state,
    error_response,
    parse_request,
)
from edge_agent.protocol.topics import escalation_requests, parse_escalation_request, rpc_response_prefix
from edge_agent.transport.mqtt import Message, MqttClient
from edge_agent.transport.rpc import Handler, Rpc

__all__ = ["Route", "TeacherService", "TeacherStats"]

# node -> the backend that answers it (None: the service's default backend).
Route = Callable[[str], TeacherBackend | None]

log = logging.getLogger(__name__)


@dataclass
class TeacherStats:
    received: int = 0
    answered: int = 0
    batches: int = 0
    max_batch_seen: int = 0
    model_errors: int = 0
    rejected: dict[str, int] = field(default_factory=dict)  # reason -> count (bad requests)
    refused: dict[str, int] = field(default_factory=dict)  # reason -> count (backend refusals)

    def reject(self, reason: str) -> None:
        self.rejected[reason] = self.rejected.get(reason, 0) + 1

    def refuse(self, reason: str) -> None:
        self.refused[reason] = self.refused.get(reason, 0) + 1

    @property
    def rejected_total(self) -> int:
        return sum(self.rejected.values())


@dataclass
class _Job:
    req: EscalationRequest
    fut: asyncio.Future[EscalationResponse]


def _as_backend(model: TeacherModel | TeacherBackend | None) -> TeacherBackend | None:
    if model is None or isinstance(model, TeacherBackend):
        return model
    return ModelBackend(model)


class TeacherService:
    def __init__(
        self,
        client: MqttClient,
        model: TeacherModel | TeacherBackend | None,
        max_batch: int = 32,
        max_wait_ms: float = 5.0,
        *,
        share_group: str | None = "teachers",
        max_pending: int = 4096,
        route: Route | None = None,
        wrap_handler: Callable[[Handler], Handler] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be >= 1")
        self.client = client
        self.backend = _as_backend(model)
        self.route = route
        self.max_batch = max_batch
        self.max_wait_s = max(0.0, max_wait_ms / 1000.0)
        self.topic_filter = escalation_requests(share_group)
        self.max_pending = max_pending
        self.stats = TeacherStats()
        self._queue: deque[tuple[TeacherBackend, _Job]] = deque()
        self._in_flight = 0  # requests with a concurrent backend
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._last_batch = 0
        self._rpc = Rpc(client)
        # A test or the replay's fault injector sits here, between the service and the broker.
        self._wrap = wrap_handler
        self._clock = clock

    @property
    def version(self) -> str:
        return self.backend.version if self.backend is not None else ""

    def backend_for(self, node: str) -> TeacherBackend | None:
        routed = self.route(node) if self.route is not None else None
        return routed if routed is not None else self.backend

    async def start(self) -> None:
        """Start the batcher and subscribe (the client may connect later: serve() resubscribes)."""
        if self._task is not None:
            return
        self._task = asyncio.create_task(self._run(), name="teacher-batcher")
        handler: Handler = self._handle if self._wrap is None else self._wrap(self._handle)
        await self._rpc.serve(self.topic_filter, handler, qos=1)

    async def stop(self) -> None:
        """Stop batching; waiting requests get an error answer so their edges degrade at once."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        while self._queue:
            backend, job = self._queue.popleft()
            if not job.fut.done():
                job.fut.set_result(error_response(job.req.id, "teacher_stopping", backend.version))

    # ------------------------------------------------------------------ requests

    async def _handle(self, msg: Message) -> bytes | None:
        self.stats.received += 1
        reply_to = getattr(msg.properties, "ResponseTopic", None)
        if not reply_to:
            self.stats.reject("no_response_topic")
            return None  # nowhere to answer
        rid = _guess_id(msg.payload)
        try:
            node = parse_escalation_request(msg.topic)
            if not str(reply_to).startswith(rpc_response_prefix(node)):
                # Any node could aim replies at another node's topic: count it, answer nothing, log nothing.
                self.stats.reject("bad_response_topic")
                return None
            req = parse_request(msg.payload)
            if req.node != node:
                raise RejectedMessage("node_mismatch", f"payload node {req.node!r} != topic node {node!r}")
        except RejectedMessage as exc:
            self.stats.reject(exc.reason)
            log.debug("escalation request refused: %s", exc)
            return wire.dumps(error_response(rid, exc.reason, self.version))
        backend = self.backend_for(node)
        if backend is None:
            self.stats.reject("no_teacher")
            return wire.dumps(error_response(req.id, "no_teacher"))
        if len(self._queue) + self._in_flight >= self.max_pending or self._task is None:
            self.stats.reject("overloaded")
            return wire.dumps(error_response(req.id, "overloaded", backend.version))
        fut: asyncio.Future[EscalationResponse] = asyncio.get_running_loop().create_future()
        if backend.serial:
            self._queue.append((backend, _Job(req, fut)))
            self._wakeup.set()
        else:  # I/O-bound: answered from this request's task, the backend bounds its concurrency
            self._in_flight += 1
            try:
                await self._predict(backend, [_Job(req, fut)])
            finally:
                self._in_flight -= 1
        resp = await fut
        return wire.dumps(resp)

    # ------------------------------------------------------------------ batching

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wakeup.wait()
            if not self._queue:
                self._wakeup.clear()
                continue
            await asyncio.sleep(0)  # handler tasks from the same socket read enqueue first
            linger = self.max_wait_s > 0 and (len(self._queue) > 1 or self._last_batch > 1)
            if linger:
                deadline = loop.time() + self.max_wait_s
                while len(self._queue) < self.max_batch:
                    remaining = deadline - loop.time()
                    if remaining <= 0:
                        break
                    self._wakeup.clear()
                    try:
                        await asyncio.wait_for(self._wakeup.wait(), remaining)
                    except TimeoutError:
                        break
            # One batch per backend: the head's backend, and every queued job for it up to max_batch.
            head = self._queue[0][0]
            batch: list[_Job] = []
            rest: deque[tuple[TeacherBackend, _Job]] = deque()
            while self._queue:
                backend, job = self._queue.popleft()
                if backend is head and len(batch) < self.max_batch:
                    batch.append(job)
                else:
                    rest.append((backend, job))
            self._queue = rest
            if not self._queue:
                self._wakeup.clear()
            self._last_batch = len(batch)
            await self._predict(head, batch)

    async def _predict(self, backend: TeacherBackend, batch: list[_Job]) -> None:
        self.stats.batches += 1
        self.stats.max_batch_seen = max(self.stats.max_batch_seen, len(batch))
        version = backend.version
        try:
            preds = await backend.answer([TeacherTurn(j.req.text, j.req.state, j.req.node) for j in batch])
            if len(preds) != len(batch):
                raise ValueError(f"teacher returned {len(preds)} predictions for {len(batch)} texts")
        except Exception:
            log.exception("teacher model failed on a batch of %d", len(batch))
            self.stats.model_errors += 1
            for j in batch:
                _settle(j.fut, error_response(j.req.id, "teacher_error", version))
            return
        for j, p in zip(batch, preds, strict=True):
            if isinstance(p, Refusal):
                self.stats.refuse(p.reason)
                _settle(j.fut, error_response(j.req.id, p.reason, version))
                continue
            try:
                resp = self._response(j.req, p, version)
                self.stats.answered += 1
            except RejectedMessage as exc:  # the merged state no longer fits the contract
                self.stats.reject(exc.reason)
                resp = error_response(j.req.id, exc.reason, version)
            except (ValidationError, TypeError, ValueError, AttributeError) as exc:
                log.warning("teacher answer does not fit the contract: %s", exc)
                self.stats.model_errors += 1
                resp = error_response(j.req.id, "teacher_error", version)
            _settle(j.fut, resp)

    def _response(self, req: EscalationRequest, p: TeacherPrediction, version: str) -> EscalationResponse:
        slots = {str(k): str(v) for k, v in p.slots.items()}
        carried = getattr(p, "state_slots", None)
        reply = getattr(p, "reply", None)
        return EscalationResponse(
            id=req.id,
            intent=str(p.intent),
            slots=slots,
            confidence=min(max(float(p.confidence), 0.0), 1.0),
            tags=_tags(p),
            teacher_version=version,
            state=self._next_state(req, str(p.intent), slots, carried),
            reply=str(reply) if reply else None,
        )

    def _next_state(
        self,
        req: EscalationRequest,
        intent: str,
        slots: dict[str, str],
        carried: Any = None,
    ) -> DialogueStateWire | None:
        """The request's state after this turn, at the turn's version (None outside a dialogue)."""
        st = req.state
        if st is None:
            return None
        turn = req.turn if req.turn is not None else st.version + 1
        restated = {str(k): str(v) for k, v in carried.items()} if carried else {}
        merged = {**st.slots, **restated, **slots}
        return dialogue_state(st.session, intent or st.intent, merged, st.step + 1, turn, self._clock())


def _settle(fut: asyncio.Future[EscalationResponse], resp: EscalationResponse) -> None:
    if not fut.done():  # the handler task may have been cancelled by a client stop
        fut.set_result(resp)


def _tags(p: Any) -> list[str] | None:
    tags = getattr(p, "tags", None)
    return [str(t) for t in tags] if tags else None


def _guess_id(payload: bytes) -> str:
    """The request id of a payload that may not validate, so its error answer can echo it."""
    try:
        data = json.loads(payload[:16384])
    except (ValueError, UnicodeDecodeError, RecursionError):
        return ""
    rid = data.get("id") if isinstance(data, dict) else None
    return rid[:64] if isinstance(rid, str) else ""
