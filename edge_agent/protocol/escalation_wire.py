"""Escalation RPC contract: the request/response payloads.

Both ends (the agent's :mod:`edge_agent.escalation.escalator` and the cloud's
``cloud_controller.teachers.chat_service``) import these models, so they agree by
construction. Parsing is as strict as :mod:`edge_agent.protocol.messages` (no coercion, no
NaN, bounded sizes) and raises :class:`~edge_agent.protocol.errors.RejectedMessage`
with a stable reason label the teacher counts.

Dialogue state travels with the utterance. A request carries the session's
committed state (``state``, redacted on the edge like the text) and the version
the turn will produce (``turn``); the teacher answers with the state updated by
this turn (intent, the slots it filled merged over the old ones, the next step)
at exactly that version. The edge merges it only when session and version
match what it asked, so a late, duplicated or misdirected answer can never
move a session. The state is bounded (:data:`MAX_STATE_BYTES`) on both sides;
a state that does not fit is refused as ``bad_state``.

The topics (``nodes/{node}/rpc/request/escalate`` and the per-client
``nodes/{node}/rpc/response/{client_id}`` inbox) are built in
:mod:`edge_agent.protocol.topics`, which also says why they sit under the node.
"""

from __future__ import annotations

from typing import Annotated, TypeVar

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, model_validator

from edge_agent.protocol import messages as wire
from edge_agent.protocol.errors import RejectedMessage

__all__ = [
    "MAX_ESCALATION_PAYLOAD",
    "MAX_STATE_BYTES",
    "DialogueStateWire",
    "EscalationRequest",
    "EscalationResponse",
    "StudentOutput",
    "error_response",
    "parse_request",
    "parse_response",
]

# An utterance is at most 2000 characters (6 KB of UTF-8 Chinese), the state at most MAX_STATE_BYTES.
MAX_ESCALATION_PAYLOAD = 32 * 1024
# A dialogue state as JSON (UTF-8, not ASCII-escaped): what one turn may carry each way.
MAX_STATE_BYTES = 8 * 1024

Confidence = Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]
RpcId = Annotated[str, StringConstraints(min_length=1, max_length=64)]
Label = Annotated[str, StringConstraints(max_length=128)]
Slots = Annotated[dict[Label, Annotated[str, StringConstraints(max_length=512)]], Field(max_length=64)]


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)


class StudentOutput(_Strict):
    """What the edge student said: the teacher may log it, the hard example keeps it."""

    intent: Label
    confidence: Confidence
    slots: Slots = Field(default_factory=dict)


Version = Annotated[int, Field(ge=0, le=2**53)]


class DialogueStateWire(_Strict):
    """A session's dialogue state on the wire; ``updated_at`` is the sender's clock (not compared)."""

    session: wire.Id
    intent: Label | None = None
    slots: Slots = Field(default_factory=dict)
    step: Version = 0
    version: Version = 0
    updated_at: wire.Timestamp = 0.0

    @model_validator(mode="after")
    def _bounded(self) -> DialogueStateWire:
        size = len(self.model_dump_json().encode())
        if size > MAX_STATE_BYTES:
            raise ValueError(f"dialogue state is {size} bytes > {MAX_STATE_BYTES}")
        return self

    def same(self, other: DialogueStateWire) -> bool:
        """Equal as a dialogue (everything but the sender's clock)."""
        return self.model_dump(exclude={"updated_at"}) == other.model_dump(exclude={"updated_at"})


class EscalationRequest(_Strict):
    """One unsure utterance. ``text`` is already PII-redacted and normalized on the edge.

    ``state`` is the session's committed state before this turn and ``turn`` the
    version this turn produces (both absent for an utterance outside a dialogue).
    """

    id: RpcId
    node: wire.Id
    text: Annotated[str, StringConstraints(min_length=1, max_length=2000)]
    student: StudentOutput
    ts: wire.Timestamp
    state: DialogueStateWire | None = None
    turn: Version | None = None


class EscalationResponse(_Strict):
    """The teacher's answer, or ``error`` set (then intent/slots are empty and must not be used).

    ``id`` echoes the request id; it is ``""`` only for a request too broken to
    carry one (the edge correlates by MQTT correlation data, not by this id).
    """

    id: Annotated[str, StringConstraints(max_length=64)]
    intent: Label = ""
    slots: Slots = Field(default_factory=dict)
    confidence: Confidence = 0.0
    tags: Annotated[list[Label], Field(max_length=512)] | None = None
    teacher_version: Annotated[str, StringConstraints(max_length=128)] = ""
    error: Annotated[str, StringConstraints(max_length=256)] | None = None
    state: DialogueStateWire | None = None
    # What a conversational teacher (an LLM) would say to the user; edges that do not use it ignore it.
    reply: Annotated[str, StringConstraints(max_length=2000)] | None = None


def error_response(request_id: str, reason: str, teacher_version: str = "") -> EscalationResponse:
    """An answer that tells the edge at once to fall back, instead of letting it wait for a timeout."""
    return EscalationResponse(id=request_id[:64], error=reason[:256], teacher_version=teacher_version[:128])


def parse_request(payload: bytes, max_bytes: int = MAX_ESCALATION_PAYLOAD) -> EscalationRequest:
    return _parse(EscalationRequest, payload, max_bytes)


def parse_response(payload: bytes, max_bytes: int = MAX_ESCALATION_PAYLOAD) -> EscalationResponse:
    return _parse(EscalationResponse, payload, max_bytes)


def dialogue_state(
    session: str, intent: str | None, slots: dict[str, str], step: int, version: int, updated_at: float
) -> DialogueStateWire:
    """A wire state, or RejectedMessage ``bad_state`` when it does not fit the bounds."""
    try:
        return DialogueStateWire(
            session=session, intent=intent, slots=slots, step=step, version=version, updated_at=updated_at
        )
    except ValidationError as exc:
        raise RejectedMessage("bad_state", str(exc.errors()[0]["msg"])[:300]) from exc


_M = TypeVar("_M", EscalationRequest, EscalationResponse)


def _parse(model: type[_M], payload: bytes, max_bytes: int) -> _M:
    """Like :func:`~edge_agent.protocol.messages.parse_json`, with a problem in ``state`` named ``bad_state``.

    Malformed JSON stays ``malformed_json``: it says nothing about the state.
    """
    try:
        return wire.parse_json(model, payload, max_bytes)
    except RejectedMessage as exc:
        if exc.reason != "malformed_json" and exc.detail.startswith("state"):
            raise RejectedMessage("bad_state", str(exc)) from exc
        raise
