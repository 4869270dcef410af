"""What a teacher backend is: the seam between the escalation service and whatever answers.

Why a seam: the service (MQTT, trust checks, batching, dialogue state) is the
same whoever answers, but the answerers differ in kind. The built-in model is
CPU work that is cheapest in batches and runs one batch at a time in a worker
thread (:mod:`cloud_controller.teachers.model_backend`); a language model
behind an HTTP endpoint is I/O, billed per token, slow per call and best called
many at once under a limit (:mod:`cloud_controller.teachers.openai_compat`).
``serial`` tells the service which: a serial backend is fed from the batcher,
the others are called from each request's own task so a 10-second LLM call
never holds up the next request.

A backend answers each turn with a prediction or a :class:`Refusal`. A refusal
is a known, counted outcome with a stable reason (``budget``, ``timeout``,
``bad_answer``, ``rate_limited``, ``upstream_error``); the service turns it
into an error response, so the edge keeps its local answer at once instead of
waiting for its timeout. An exception out of ``answer`` is a bug or a broken
model: the service counts it as ``teacher_error`` for the whole batch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from edge_agent.protocol.escalation_wire import DialogueStateWire

__all__ = ["Refusal", "TeacherAnswer", "TeacherBackend", "TeacherPrediction", "TeacherTurn"]


class TeacherPrediction(Protocol):
    """The minimum of an answer; ``tags``, ``reply`` and ``state_slots`` are read when present."""

    @property
    def intent(self) -> str: ...
    @property
    def slots(self) -> Mapping[str, str]: ...
    @property
    def confidence(self) -> float: ...


@dataclass(frozen=True)
class TeacherTurn:
    """One utterance to answer: already redacted and normalized on the edge."""

    text: str
    state: DialogueStateWire | None = None
    node: str = ""


@dataclass(frozen=True)
class TeacherAnswer:
    """An answer with everything a dialogue teacher can say.

    ``state_slots`` is the whole slot set the teacher says the dialogue holds
    after the turn (an LLM restates it); the service merges it under ``slots``
    and over the request's state, and keeps session and version itself, so no
    backend can move a session to a version the edge did not ask for.
    """

    intent: str
    slots: Mapping[str, str] = field(default_factory=dict)
    confidence: float = 1.0
    tags: Sequence[str] | None = None
    state_slots: Mapping[str, str] | None = None
    reply: str | None = None


@dataclass(frozen=True)
class Refusal:
    """No answer, for a counted reason; ``detail`` is for the log (never the key or a prompt)."""

    reason: str
    detail: str = ""


@runtime_checkable
class TeacherBackend(Protocol):
    @property
    def version(self) -> str: ...

    @property
    def serial(self) -> bool:
        """True: fed batches by the batcher, one at a time. False: called per request, concurrently."""
        ...

    async def answer(self, turns: Sequence[TeacherTurn]) -> Sequence[TeacherPrediction | Refusal]: ...

    async def close(self) -> None: ...
