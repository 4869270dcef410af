"""Typed views of the custom resources, for reconcilers.

The CRD YAML is the contract with the API server and the schema validation in
``schema.py`` enforces it; these pydantic models only give reconcilers typed,
defaulted access to spec and status instead of nested ``dict.get`` chains.
Field names are snake_case in Python and camelCase on the wire (aliases match
the CRDs; ``populate_by_name`` lets code use either). Unknown fields are
ignored rather than refused so an older controller can read objects written by
a newer CRD version. ``tests/cloud/test_crds.py`` checks that every example parses
and that these models dump back to objects the CRDs accept.

Typical use::

    node = EdgeNode.from_obj(obj)
    node.status.phase = "Online"
    set_condition(node.status.conditions, "Ready", "True", "Heartbeat", "status received", now)
    await store.patch_status("EdgeNode", ns, name, node.status.to_patch())
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, ClassVar, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from cloud_controller.resources.store_protocol import API_VERSION, Obj

ConditionStatus = Literal["True", "False", "Unknown"]
Task = Literal["chat", "sensor"]
EdgeNodePhase = Literal["Pending", "Online", "Offline"]
EdgeModelPhase = Literal["Available", "Invalid"]
RolloutPhase = Literal["Pending", "Progressing", "Paused", "Succeeded", "RolledBack", "Failed"]
JobStage = Literal["Pending", "Collecting", "Training", "Evaluating", "Succeeded", "Rejected", "Failed"]
Feature = Literal["count", "min", "max", "mean", "std", "first", "last", "slope", "anomalyScore"]
PiiKind = Literal["email", "card", "phone", "id_number", "ip"]

NonNegInt = Annotated[int, Field(ge=0)]
Fraction = Annotated[float, Field(ge=0, le=1)]


class _Model(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")

    def to_obj(self) -> Obj:
        """camelCase JSON-ready dict without unset optionals (what a merge patch should carry)."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)

    def to_patch(self) -> Obj:
        return self.to_obj()


# --------------------------------------------------------------------------- common


class StatusCondition(_Model):
    type: str
    status: ConditionStatus
    reason: str = ""
    message: str = ""
    last_transition_time: dt.datetime | None = None
    observed_generation: int | None = None


def get_condition(conditions: list[StatusCondition], type: str) -> StatusCondition | None:
    return next((c for c in conditions if c.type == type), None)


def set_condition(
    conditions: list[StatusCondition],
    type: str,
    status: ConditionStatus,
    reason: str,
    message: str,
    now: dt.datetime,
    observed_generation: int | None = None,
) -> bool:
    """Add or update a condition in place; return whether anything changed.

    ``lastTransitionTime`` moves only when ``status`` flips, as Kubernetes
    conventions require: it answers "since when has this been True", and a
    reconciler re-asserting the same state every loop must not reset it (nor
    cause a status write at all, hence the return value).
    """
    cur = get_condition(conditions, type)
    if cur is None:
        conditions.append(StatusCondition(type=type, status=status, reason=reason, message=message,
                                    last_transition_time=now, observed_generation=observed_generation))
        return True
    changed = (cur.status, cur.reason, cur.message, cur.observed_generation) != (
        status, reason, message, observed_generation if observed_generation is not None
        else cur.observed_generation)
    if cur.status != status:
        cur.last_transition_time = now
    cur.status = status
    cur.reason = reason
    cur.message = message
    if observed_generation is not None:
        cur.observed_generation = observed_generation
    return changed


class LabelSelector(_Model):
    match_labels: dict[str, str] = Field(default_factory=dict)

    def matches(self, labels: dict[str, str] | None) -> bool:
        """All matchLabels present with equal values; an empty selector matches everything."""
        labels = labels or {}
        return all(labels.get(k) == v for k, v in self.match_labels.items())


class ObjectMeta(_Model):
    name: str
    namespace: str = "default"
    uid: str | None = None
    resource_version: str | None = None
    generation: int | None = None
    creation_timestamp: dt.datetime | None = None
    deletion_timestamp: dt.datetime | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    finalizers: list[str] = Field(default_factory=list)


class _Status(_Model):
    observed_generation: int | None = None
    conditions: list[StatusCondition] = Field(default_factory=list)


SpecT = TypeVar("SpecT", bound=_Model)
StatusT = TypeVar("StatusT", bound=_Status)


class _Resource(_Model, Generic[SpecT, StatusT]):
    KIND: ClassVar[str]
    api_version: str = API_VERSION
    kind: str
    metadata: ObjectMeta
    spec: SpecT
    status: StatusT

    @classmethod
    def from_obj(cls, obj: Obj) -> Any:
        """Parse a store object (status may be absent: it defaults to an empty status)."""
        data = dict(obj)
        data.setdefault("status", {})
        return cls.model_validate(data)


# --------------------------------------------------------------------------- EdgeNode


class Enrollment(_Model):
    approved: bool = False
    approved_by: str | None = None


class EdgeNodeSpec(_Model):
    enrollment: Enrollment = Field(default_factory=Enrollment)
    description: str | None = None


class Traffic(_Model):
    readings_in: NonNegInt = 0
    bytes_raw: NonNegInt = 0
    bytes_sent: NonNegInt = 0
    reduction: float | None = None

    @classmethod
    def from_counts(cls, readings_in: int, bytes_raw: int, bytes_sent: int) -> Traffic:
        """Reduction is 1 - sent/raw, rounded for display; None before any raw bytes."""
        red = round(1.0 - bytes_sent / bytes_raw, 4) if bytes_raw > 0 else None
        return cls(readings_in=readings_in, bytes_raw=bytes_raw, bytes_sent=bytes_sent, reduction=red)


class SequenceHealth(_Model):
    """How the node's summary numbering looks from the cloud: resets (new epochs) and missing numbers."""

    resets: NonNegInt = 0
    gaps: NonNegInt = 0


class EdgeNodeStatus(_Status):
    phase: EdgeNodePhase | None = None
    last_seen: dt.datetime | None = None
    agent_version: str | None = None
    models: dict[str, str] = Field(default_factory=dict)
    model_version: str | None = None
    traffic: Traffic | None = None
    sequence: SequenceHealth | None = None
    inferences: NonNegInt | None = None
    escalations: NonNegInt | None = None
    applied_pipeline: str | None = None
    applied_generation: NonNegInt | None = None
    # Knobs changed at run time by a call (``config.set``), as the node reports them.
    overrides: dict[str, str] = Field(default_factory=dict)

    def set_models(self, models: dict[str, str]) -> None:
        """Keep the printer-column summary (``modelVersion``) in step with ``models``."""
        self.models = dict(models)
        self.model_version = ",".join(f"{n}@{v}" for n, v in sorted(models.items())) or None


class EdgeNode(_Resource[EdgeNodeSpec, EdgeNodeStatus]):
    KIND: ClassVar[str] = "EdgeNode"
    kind: Literal["EdgeNode"] = "EdgeNode"
    spec: EdgeNodeSpec = Field(default_factory=EdgeNodeSpec)
    status: EdgeNodeStatus = Field(default_factory=EdgeNodeStatus)


# ----------------------------------------------------------------------- EdgePipeline


class Window(_Model):
    length_seconds: Annotated[float, Field(gt=0, le=86400)] = 10.0
    deadband: Annotated[float, Field(ge=0)] | None = None
    deadband_max_hold: Annotated[int, Field(ge=1, le=10_000)] | None = None
    idle_close_seconds: Annotated[float, Field(gt=0, le=86400)] | None = None


class PiiRuleSpec(_Model):
    name: str
    pattern: str
    replacement: str | None = None


class Pii(_Model):
    builtin: list[PiiKind] = Field(default_factory=list)
    rules: list[PiiRuleSpec] = Field(default_factory=list)


class TeacherCacheSpec(_Model):
    max_entries: Annotated[int, Field(ge=0, le=1_000_000)] = 10_000
    ttl_seconds: Annotated[float, Field(gt=0, le=604_800)] = 3600.0


class OpenAITeacherSpec(_Model):
    """An OpenAI-compatible chat endpoint; the key is in the controller's environment, never here."""

    base_url: Annotated[str, Field(pattern=r"^https?://", max_length=2048)]
    model: Annotated[str, Field(min_length=1, max_length=256)]
    api_key_env: Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")] | None = None
    timeout_seconds: Annotated[float, Field(gt=0, le=300)] = 10.0
    max_retries: Annotated[int, Field(ge=0, le=10)] = 2
    max_concurrency: Annotated[int, Field(ge=1, le=256)] = 4
    tokens_per_hour: NonNegInt | None = None
    response_format: bool = True
    intents: list[str] = Field(default_factory=list)
    cache: TeacherCacheSpec = Field(default_factory=TeacherCacheSpec)


class TeacherSpec(_Model):
    """Who answers the escalations of the nodes a pipeline selects (cloud side only: never pushed)."""

    backend: Literal["builtin", "openai"] = "builtin"
    openai: OpenAITeacherSpec | None = None


class Escalation(_Model):
    threshold: Fraction | None = None
    budget_per_hour: NonNegInt | None = None
    teacher: TeacherSpec | None = None


class UplinkSpec(_Model):
    budget_bytes_per_hour: NonNegInt | None = None


class EdgePipelineSpec(_Model):
    selector: LabelSelector = Field(default_factory=LabelSelector)
    window: Window = Field(default_factory=Window)
    features: list[Feature] = Field(default_factory=list)
    pii: Pii | None = None
    escalation: Escalation | None = None
    uplink: UplinkSpec | None = None


class EdgePipelineStatus(_Status):
    pushed_generation: NonNegInt | None = None
    nodes_selected: NonNegInt | None = None
    nodes_applied: NonNegInt | None = None


class EdgePipeline(_Resource[EdgePipelineSpec, EdgePipelineStatus]):
    KIND: ClassVar[str] = "EdgePipeline"
    kind: Literal["EdgePipeline"] = "EdgePipeline"
    status: EdgePipelineStatus = Field(default_factory=EdgePipelineStatus)


# -------------------------------------------------------------------------- EdgeModel


class EdgeModelSpec(_Model):
    model: str
    task: Task
    version: str
    digest: str
    size_bytes: Annotated[int, Field(ge=1)]
    uri: str | None = None
    signature: str
    key_id: str
    metrics: dict[str, float] = Field(default_factory=dict)
    parent_version: str | None = None
    produced_by: str | None = None


class EdgeModelStatus(_Status):
    phase: EdgeModelPhase | None = None


class EdgeModel(_Resource[EdgeModelSpec, EdgeModelStatus]):
    KIND: ClassVar[str] = "EdgeModel"
    kind: Literal["EdgeModel"] = "EdgeModel"
    status: EdgeModelStatus = Field(default_factory=EdgeModelStatus)


# ----------------------------------------------------------------------- ModelRollout


class RolloutStep(_Model):
    set_weight: Annotated[int, Field(ge=1, le=100)]
    pause_seconds: Annotated[int, Field(ge=0, le=604_800)] = 0


class Analysis(_Model):
    max_escalation_rate: Fraction | None = None
    min_mean_confidence: Fraction | None = None
    max_error_rate: Fraction | None = None
    min_samples: NonNegInt = 0


class RolloutTemplate(_Model):
    """What a rollout needs besides the model: shared by ModelRollout and DistillationJob.rollout."""

    selector: LabelSelector = Field(default_factory=LabelSelector)
    steps: list[RolloutStep] = Field(default_factory=lambda: [RolloutStep(set_weight=100)])
    analysis: Analysis = Field(default_factory=Analysis)
    rollback_policy: Literal["Automatic", "Manual"] = "Automatic"


class ModelRolloutSpec(RolloutTemplate):
    model: str
    version: str


class ModelRolloutStatus(_Status):
    phase: RolloutPhase | None = None
    current_step: NonNegInt | None = None
    current_weight: Annotated[int, Field(ge=0, le=100)] | None = None
    step_started_at: dt.datetime | None = None
    updated_nodes: NonNegInt | None = None
    ready_nodes: NonNegInt | None = None
    total_nodes: NonNegInt | None = None
    updated_ratio: str | None = None
    previous_versions: dict[str, str] = Field(default_factory=dict)

    def set_counts(self, updated: int, ready: int, total: int) -> None:
        """Keep the printer-column summary (``updatedRatio``, "3/10") in step with the counts."""
        self.updated_nodes, self.ready_nodes, self.total_nodes = updated, ready, total
        self.updated_ratio = f"{updated}/{total}"


class ModelRollout(_Resource[ModelRolloutSpec, ModelRolloutStatus]):
    KIND: ClassVar[str] = "ModelRollout"
    kind: Literal["ModelRollout"] = "ModelRollout"
    status: ModelRolloutStatus = Field(default_factory=ModelRolloutStatus)


# -------------------------------------------------------------------- DistillationJob


class TrainingData(_Model):
    """``held_back``: labelled experiments (e.g. ``skab?experiments=valve2/1,other/2``) the job never
    trains on and only scores, before and after (``heldback_*`` metrics): the one figure that says
    whether the loop generalises beyond the windows it was shown. Sensor jobs only."""

    base: str
    held_back: str | None = None
    hard_examples_since: dt.datetime | None = None
    min_teacher_confidence: Fraction | None = None
    max_hard_examples: NonNegInt | None = None


# Metric names (or their last ``_``-separated words) for which a smaller value is better:
# escalations, false-alarm and missed-alarm rates, errors, losses.
LOWER_IS_BETTER_SUFFIXES: tuple[str, ...] = ("escalation_rate", "far", "mar", "error_rate", "loss")


def infer_direction(metric: str) -> Literal["higher", "lower"]:
    """``lower`` for ``far``, ``sensor_far``, ``val_loss``, ``escalation_rate`` ...; ``higher`` otherwise.

    Matched on whole ``_``-separated words, so ``radar_acc`` or ``grammar`` stay higher-is-better.
    """
    lower = any(metric == s or metric.endswith(f"_{s}") for s in LOWER_IS_BETTER_SUFFIXES)
    return "lower" if lower else "higher"


class GateGuard(_Model):
    """A second metric bounded on the fixed set only, with the same direction rules as the gate's.

    The gate's metric alone can pass a version that is worse where it matters elsewhere (a chat
    student gaining ``intent_acc`` while sending more of the old traffic to the cloud); a guard
    bounds that. Fixed set only: it asks "does the old traffic get worse", not for a gain, and
    ``maxRegression`` is required because a guard without a bound would check nothing.
    """

    metric: str
    direction: Literal["higher", "lower"] | None = None
    max_regression: Annotated[float, Field(ge=0, le=100)]

    @property
    def effective_direction(self) -> Literal["higher", "lower"]:
        return self.direction or infer_direction(self.metric)


class Gate(_Model):
    """``maxRegression`` and ``minGain`` are positive amounts in the metric's unit, measured in its
    good direction: for a lower-is-better metric a gain is a decrease and a regression an increase.
    ``direction`` unset means inferred from the metric's name (:func:`infer_direction`), so existing
    objects keep validating and a gate on ``escalation_rate`` is not silently inverted. ``guards``
    unset (not an empty list) so an object without them dumps back unchanged. ``gain_on`` names the
    set ``minGain`` is measured on: ``new`` (the held-out hard examples, the default) or ``heldback``
    (the job's ``data.heldBack`` experiments, scored against their own labels)."""

    metric: str = "intent_acc"
    direction: Literal["higher", "lower"] | None = None
    max_regression: Annotated[float, Field(ge=0, le=100)] | None = None
    min_gain: Annotated[float, Field(ge=-100, le=100)] | None = None
    gain_on: Literal["new", "heldback"] | None = None
    guards: Annotated[list[GateGuard], Field(max_length=8)] | None = None

    @property
    def effective_direction(self) -> Literal["higher", "lower"]:
        return self.direction or infer_direction(self.metric)


class AutoRollout(_Model):
    auto: bool = False
    template: RolloutTemplate | None = None


class DistillationJobSpec(_Model):
    task: Task
    teacher: str
    student_arch: Literal["bilstm-tagger", "mlp-autoencoder", "mlp"]
    student_params: dict[str, float] = Field(default_factory=dict)
    temperature: Annotated[float, Field(gt=0, le=50)] = 2.0
    alpha: Fraction = 0.5
    epochs: Annotated[int, Field(ge=1, le=1000)] | None = None
    data: TrainingData
    gate: Gate = Field(default_factory=Gate)
    output_model: str
    rollout: AutoRollout | None = None


class StageTimes(_Model):
    """Capitalised keys on the wire: they are the stage names themselves."""

    model_config = ConfigDict(alias_generator=str.capitalize, populate_by_name=True, extra="ignore")

    pending: dt.datetime | None = None
    collecting: dt.datetime | None = None
    training: dt.datetime | None = None
    evaluating: dt.datetime | None = None
    succeeded: dt.datetime | None = None
    rejected: dt.datetime | None = None
    failed: dt.datetime | None = None


class DistillationJobStatus(_Status):
    stage: JobStage | None = None
    stage_times: StageTimes = Field(default_factory=StageTimes)
    progress: Fraction | None = None
    examples: NonNegInt | None = None
    metrics_before: dict[str, float] = Field(default_factory=dict)
    metrics_after: dict[str, float] = Field(default_factory=dict)
    produced_version: str | None = None
    produced_model: str | None = None
    rollout_name: str | None = None
    message: str | None = None

    def enter(self, stage: JobStage, now: dt.datetime) -> None:
        """Move to ``stage`` and stamp when it was entered (kept for every stage passed)."""
        self.stage = stage
        setattr(self.stage_times, stage.lower(), now)


class DistillationJob(_Resource[DistillationJobSpec, DistillationJobStatus]):
    KIND: ClassVar[str] = "DistillationJob"
    kind: Literal["DistillationJob"] = "DistillationJob"
    status: DistillationJobStatus = Field(default_factory=DistillationJobStatus)


RESOURCE_MODELS: dict[str, type[_Resource[Any, Any]]] = {
    m.KIND: m for m in (EdgeNode, EdgePipeline, EdgeModel, ModelRollout, DistillationJob)
}


def parse(obj: Obj) -> Any:
    """Typed model for any store object, chosen by its kind."""
    return RESOURCE_MODELS[obj["kind"]].from_obj(obj)
