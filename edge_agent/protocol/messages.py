"""Wire schemas: every payload that crosses MQTT, as pydantic models.

Parsing is strict on purpose (no string-to-number coercion, no NaN/Inf, bounded
sizes): the edge must refuse junk at the door, with a stable reason label that
metrics and the dead-letter table can count, instead of carrying it upstream.
The cloud side imports the same models, so both ends agree by construction.
"""

from __future__ import annotations

import json
import math
import time
import uuid
import zlib
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from edge_agent.protocol.errors import RejectedMessage
from edge_agent.protocol.topics import ID_PATTERN

Id = Annotated[str, StringConstraints(pattern=ID_PATTERN.pattern)]
MetricName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\- ]{0,63}$")]
Finite = Annotated[float, Field(allow_inf_nan=False)]
# A reading's magnitude bound. Window statistics square deviations and sum them over up to
# 2**63 readings: |value| <= 1e100 keeps every intermediate (n * (2 * 1e100) ** 2 < 1e220) far
# from overflow, so a window of finite readings always has a finite summary. No physical sensor
# comes near it; a device that sends 1.7e308 is refused with the reason ``value_out_of_range``.
MAX_READING_ABS = 1e100
ReadingValue = Annotated[float, Field(allow_inf_nan=False, ge=-MAX_READING_ABS, le=MAX_READING_ABS)]
# Seconds since the epoch, up to the year 2100: beyond that a clock is broken, not a sensor reading.
Timestamp = Annotated[float, Field(ge=0, le=4_102_444_800, allow_inf_nan=False)]
Count = Annotated[int, Field(ge=0)]

DEFAULT_MAX_PAYLOAD = 256 * 1024


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)


# --------------------------------------------------------------------------- device side


class Reading(_Strict):
    """One timestamped sample of one or more named metrics; each value counts as one reading."""

    ts: Timestamp
    values: Annotated[dict[MetricName, ReadingValue], Field(min_length=1, max_length=64)]


class TelemetryBatch(_Strict):
    readings: Annotated[list[Reading], Field(min_length=1, max_length=10_000)]


class ChatIn(_Strict):
    session_id: Id
    msg_id: Id
    text: Annotated[str, StringConstraints(min_length=1, max_length=2000)]
    ts: Timestamp
    # Per-session version of the dialogue; older updates are dropped.
    seq: Annotated[int, Field(ge=0)] | None = None


class DialogueView(_Strict):
    session_id: str
    intent: str | None = None
    slots: dict[str, str] = Field(default_factory=dict)
    step: int = 0
    version: int = 0


class ChatOut(_Strict):
    session_id: str
    msg_id: str
    intent: str | None
    slots: dict[str, str] = Field(default_factory=dict)
    confidence: float = 0.0
    source: Literal["edge", "cloud", "edge-degraded", "none"] = "edge"
    state: DialogueView | None = None


# --------------------------------------------------------------------------- uplink


class WindowSummary(_Strict):
    """Statistics of one tumbling window of one metric of one device."""

    device: Id
    metric: MetricName
    start: Timestamp
    end: Timestamp
    count: Annotated[int, Field(ge=1)]
    min: Finite
    max: Finite
    mean: Finite
    std: Finite
    first: Finite
    last: Finite
    slope: Finite
    anomaly_score: Finite | None = None


class ChatStats(_Strict):
    messages: int = 0
    intents: dict[str, int] = Field(default_factory=dict)
    slots: dict[str, int] = Field(default_factory=dict)
    escalated: int = 0
    degraded: int = 0
    mean_confidence: Finite | None = None


class AnomalyEvent(_Strict):
    """A sensor window the student scored over its threshold."""

    device: Id
    start: Timestamp
    end: Timestamp
    score: Finite
    model: str = ""


class SummaryBatch(_Strict):
    """One uplink record: a unique id for cloud-side dedup and a per-node sequence number."""

    id: Annotated[str, StringConstraints(min_length=8, max_length=64)]
    node: Id
    seq: Annotated[int, Field(ge=0)]
    created: Timestamp
    windows: list[WindowSummary] = Field(default_factory=list)
    chat: ChatStats | None = None
    events: list[AnomalyEvent] = Field(default_factory=list)

    @property
    def readings(self) -> int:
        return sum(w.count for w in self.windows)


class HardExample(_Strict):
    id: str
    node: Id
    created: Timestamp
    task: Literal["chat", "sensor"]
    text: str | None = None  # already redacted
    features: list[Finite] | None = None
    student: dict[str, Any] = Field(default_factory=dict)
    teacher: dict[str, Any] | None = None


class ModelStatus(_Strict):
    """What a node runs for one task, and how it is doing (the rollout analysis reads this)."""

    name: str
    version: str
    state: Literal["active", "failed", "rolled_back", "downloading", "none"] = "active"
    previous: str | None = None
    error: str | None = None
    # Since activation: inputs seen, escalations, errors, sum of confidences.
    samples: Count = 0
    escalated: Count = 0
    errors: Count = 0
    confidence_sum: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 0.0


class Status(_Strict):
    node: Id
    online: bool
    ts: Timestamp
    agent_version: str = ""
    # task ("chat" | "sensor") -> what runs there
    models: dict[str, ModelStatus] = Field(default_factory=dict)
    counters: dict[str, Finite] = Field(default_factory=dict)
    health: str = "ok"
    # Generation of the desired state this node has applied (level-triggered, like observedGeneration).
    applied_generation: int = 0
    # Settings changed at run time by a cloud call (``config.set``), persisted on the node: key -> value.
    overrides: dict[str, str | Finite] = Field(default_factory=dict)


class ModelRef(_Strict):
    """A signed model release a node should run; the artifacts are fetched and verified by the edge."""

    name: Id
    task: Literal["chat", "sensor"]
    version: str
    digest: Annotated[str, StringConstraints(pattern=r"^sha256:[0-9a-f]{64}$")]  # of the signed manifest
    size: Annotated[int, Field(ge=0)]
    chunks: Annotated[int, Field(ge=0)] = 0


class DesiredState(_Strict):
    """Retained on ``nodes/{node}/desired``: everything the cloud wants this node to run."""

    node: Id
    generation: Annotated[int, Field(ge=0)]
    ts: Timestamp
    models: dict[str, ModelRef] = Field(default_factory=dict)  # task -> release
    # Pipeline settings from the EdgePipeline that selects this node (a subset of AgentConfig sections).
    pipeline: dict[str, Any] = Field(default_factory=dict)
    pipeline_name: str | None = None


# --------------------------------------------------------------------------- codec

M = TypeVar("M", bound=BaseModel)


def _reject_constant(token: str) -> Any:
    raise RejectedMessage("non_finite", f"JSON constant {token} is not allowed")


def loads(payload: bytes, max_bytes: int = DEFAULT_MAX_PAYLOAD) -> Any:
    """Parse JSON with a size bound and without NaN/Infinity, raising RejectedMessage."""
    if len(payload) > max_bytes:
        raise RejectedMessage("oversized", f"{len(payload)} bytes > limit {max_bytes}")
    try:
        return json.loads(payload, parse_constant=_reject_constant)
    except RejectedMessage:
        raise
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise RejectedMessage("malformed_json", str(exc)[:200]) from exc


def _reason(exc: ValidationError) -> str:
    types = {e["type"] for e in exc.errors()}
    if "json_invalid" in types or "recursion_loop" in types:
        return "malformed_json"
    if "missing" in types:
        return "missing_field"
    if "finite_number" in types:
        return "non_finite"
    if any(
        e["type"] in ("greater_than_equal", "less_than_equal") and "values" in e["loc"] for e in exc.errors()
    ):
        return "value_out_of_range"
    if "string_pattern_mismatch" in types:
        return "bad_id"
    if any(t.endswith("_type") or t.endswith("_parsing") for t in types):
        return "wrong_type"
    return "invalid"


def validate(model: type[M], data: Any) -> M:
    """Validate parsed JSON against ``model``; the reason label says which rule failed."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "<root>"
        raise RejectedMessage(_reason(exc), f"{where}: {first['msg']}") from exc


def parse_json(model: type[M], payload: bytes, max_bytes: int = DEFAULT_MAX_PAYLOAD) -> M:
    """Size check, then parse and validate in one pass (pydantic-core's JSON parser, no dict detour).

    NaN, Infinity and overflowing numbers fail the ``Finite`` fields; invalid
    JSON or UTF-8 is ``malformed_json``: the same reasons as :func:`loads` +
    :func:`validate`, at a fraction of the cost on the hot path.
    """
    if len(payload) > max_bytes:
        raise RejectedMessage("oversized", f"{len(payload)} bytes > limit {max_bytes}")
    try:
        return model.model_validate_json(payload)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "<root>"
        raise RejectedMessage(_reason(exc), f"{where}: {first['msg']}"[:300]) from exc


def parse_telemetry(payload: bytes, max_bytes: int = DEFAULT_MAX_PAYLOAD) -> list[Reading]:
    """A telemetry payload is either one reading or ``{"readings": [...]}``."""
    if b'"readings"' in payload:
        return list(parse_json(TelemetryBatch, payload, max_bytes).readings)
    return [parse_json(Reading, payload, max_bytes)]


def parse_chat_in(payload: bytes, max_bytes: int = DEFAULT_MAX_PAYLOAD) -> ChatIn:
    return parse_json(ChatIn, payload, max_bytes)


def dumps(model: BaseModel) -> bytes:
    return model.model_dump_json(exclude_none=True).encode()


def compress(raw: bytes) -> bytes:
    return zlib.compress(raw, 6)


def decompress(payload: bytes, max_bytes: int = 8 * DEFAULT_MAX_PAYLOAD) -> bytes:
    """Inflate with an output bound so a small zip bomb cannot exhaust memory."""
    d = zlib.decompressobj()
    try:
        out = d.decompress(payload, max_bytes)
    except zlib.error as exc:
        raise RejectedMessage("malformed_payload", f"not zlib data: {exc}") from exc
    if d.unconsumed_tail:
        raise RejectedMessage("oversized", f"inflates past {max_bytes} bytes")
    return out


def encode_summary(batch: SummaryBatch) -> bytes:
    """Summaries travel zlib-compressed: they are the bulk of the uplink."""
    return compress(dumps(batch))


def decode_summary(payload: bytes, max_bytes: int = 8 * DEFAULT_MAX_PAYLOAD) -> SummaryBatch:
    return parse_json(SummaryBatch, decompress(payload, max_bytes), max_bytes)


def new_id() -> str:
    return uuid.uuid4().hex


def now() -> float:
    return time.time()


def is_finite(x: float) -> bool:
    return math.isfinite(x)
