"""Escalation RPC contract: the request/response payloads.

Both ends (the agent's :mod:`edge_agent.escalation.escalator` and the cloud's
``cloud_controller.teachers.chat_service``) import these models, so they agree by
construction. Parsing is as strict as :mod:`edge_agent.protocol.messages` (no coercion, no
NaN, bounded sizes) and raises :class:`~edge_agent.protocol.errors.RejectedMessage`
with a stable reason label the teacher counts.

The topics (``nodes/{node}/rpc/request/escalate`` and the per-client
``nodes/{node}/rpc/response/{client_id}`` inbox) are built in
:mod:`edge_agent.protocol.topics`, which also says why they sit under the node.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from edge_agent.protocol import messages as wire

__all__ = [
    "MAX_ESCALATION_PAYLOAD",
    "EscalationRequest",
    "EscalationResponse",
    "StudentOutput",
    "error_response",
    "parse_request",
    "parse_response",
]

# An utterance is at most 2000 characters; 16 KiB leaves room for slots and UTF-8.
MAX_ESCALATION_PAYLOAD = 16 * 1024

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


class EscalationRequest(_Strict):
    """One unsure utterance. ``text`` is already PII-redacted and normalized on the edge."""

    id: RpcId
    node: wire.Id
    text: Annotated[str, StringConstraints(min_length=1, max_length=2000)]
    student: StudentOutput
    ts: wire.Timestamp


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


def error_response(request_id: str, reason: str, teacher_version: str = "") -> EscalationResponse:
    """An answer that tells the edge at once to fall back, instead of letting it wait for a timeout."""
    return EscalationResponse(id=request_id[:64], error=reason[:256], teacher_version=teacher_version[:128])


def parse_request(payload: bytes, max_bytes: int = MAX_ESCALATION_PAYLOAD) -> EscalationRequest:
    return wire.parse_json(EscalationRequest, payload, max_bytes)


def parse_response(payload: bytes, max_bytes: int = MAX_ESCALATION_PAYLOAD) -> EscalationResponse:
    return wire.parse_json(EscalationResponse, payload, max_bytes)
