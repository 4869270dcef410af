"""Escalation RPC contract: request/response payloads and their topics.

Both ends (the agent's :mod:`edge_agent.escalation.escalator` and the cloud's
``cloud_controller.teachers.chat_service``) import these models, so they agree by
construction. Parsing is as strict as :mod:`edge_agent.protocol.messages` (no coercion, no
NaN, bounded sizes) and raises :class:`~edge_agent.protocol.errors.RejectedMessage`
with a stable reason label the teacher counts.

Topics. Requests go to ``edgeloop/v1/nodes/{node}/rpc/request/escalate``: the
node may write only under its own ``nodes/{node}/`` (broker ACL), so the
teacher can trust the node in the topic and checks the payload against it.
Responses go to ``edgeloop/v1/nodes/{node}/rpc/response/{client_id}``: a
subtree the node may read and the controller may write, so MQTT 5
request/response works under per-node ACLs. Topic builders live here rather
than in :mod:`edge_agent.protocol.topics` because only the escalation pair uses them.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from edge_agent.protocol import messages as wire
from edge_agent.protocol.errors import RejectedMessage
from edge_agent.protocol.topics import API, node_topic, validate_id

__all__ = [
    "MAX_ESCALATION_PAYLOAD",
    "REQUEST_LEAF",
    "EscalationRequest",
    "EscalationResponse",
    "StudentOutput",
    "error_response",
    "parse_request",
    "parse_request_topic",
    "parse_response",
    "request_filter",
    "request_topic",
    "response_prefix",
    "response_topic",
]

REQUEST_LEAF = "rpc/request/escalate"
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


# --------------------------------------------------------------------------- topics


def request_topic(node: str) -> str:
    """``edgeloop/v1/nodes/{node}/rpc/request/escalate``."""
    return node_topic(node, REQUEST_LEAF)


def request_filter(share_group: str | None = "teachers") -> str:
    """Teacher subscription for every node; a shared subscription splits the load across replicas."""
    flt = f"{API}/nodes/+/{REQUEST_LEAF}"
    return f"$share/{validate_id(share_group, 'share group')}/{flt}" if share_group else flt


def response_prefix(node: str) -> str:
    """Every response topic of ``node`` starts with this; the teacher refuses to answer elsewhere."""
    return node_topic(node, "rpc/response/")


def response_topic(node: str, client_id: str) -> str:
    """``edgeloop/v1/nodes/{node}/rpc/response/{client_id}``: one reply inbox per MQTT client."""
    return response_prefix(node) + validate_id(client_id, "client id")


def parse_request_topic(topic: str) -> str:
    """Return the node of an escalation request topic; RejectedMessage('bad_topic') otherwise."""
    prefix = f"{API}/nodes/"
    suffix = "/" + REQUEST_LEAF
    if not (topic.startswith(prefix) and topic.endswith(suffix)):
        raise RejectedMessage("bad_topic", f"not an escalation request topic: {topic[:200]!r}")
    return validate_id(topic[len(prefix) : -len(suffix)], "node")
