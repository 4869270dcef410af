"""Each node's desired state: computed from the resources, published retained with a generation.

Why computed and not stored: the desired state of node N is a pure function of
(the EdgeNode, the EdgePipelines, the ModelRollouts, the EdgeModels). A
controller restarted at any moment recomputes the same content from the store,
so there is no second source of truth to drift, and a rollout's rollback is
just a phase change that this function reads.

Model assignment is a fold over the rollouts in start order (the
``edgeloop.io/rollout-seq`` annotation, set once when a rollout starts): a
rollout that lists node N in ``status.previousVersions`` assigns its version to
N for the model's task, or, once RolledBack, the version N had before. Later
rollouts override earlier ones, so a failed or finished rollout never blocks
the next one, and deleting nothing is needed to move on.

Generations: bumped only when the content changes (hash of models + pipeline),
and never below what the node reports it applied, so a controller that lost
its local database still moves forward. Each process republishes every node's
current desired state once (same generation) in case the broker lost retained
messages. Unapproved nodes get nothing, and any retained desired state is
cleared (an empty retained payload deletes it on the broker).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from cloud_controller.ingest.fleet import DesiredRecord, Fleet
from cloud_controller.resources.kinds import (
    EdgeModel,
    EdgeNode,
    EdgePipeline,
    EdgePipelineSpec,
    ModelRollout,
)
from edge_agent.protocol import messages as wire
from edge_agent.protocol import topics
from edge_agent.protocol.errors import MqttError
from edge_agent.transport.mqtt import MqttClient

log = logging.getLogger(__name__)

SEQ_ANNOTATION = "edgeloop.io/rollout-seq"

RefFor = Callable[[EdgeModel], wire.ModelRef]


def default_ref(model: EdgeModel) -> wire.ModelRef:
    """The ModelRef a node needs for an EdgeModel. Pluggable: delivery may add chunking."""
    s = model.spec
    return wire.ModelRef(name=s.model, task=s.task, version=s.version, digest=s.digest, size=s.size_bytes)


def _hash(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


# --------------------------------------------------------------------------- pipelines


def pipeline_payload(spec: EdgePipelineSpec) -> dict[str, Any]:
    """EdgePipeline spec -> the ``pipeline`` section, keyed like the agent's config sections."""
    out: dict[str, Any] = {}
    w = spec.window
    windows: dict[str, Any] = {"length_s": w.length_seconds}
    for key, value in (
        ("deadband", w.deadband),
        ("deadband_max_hold", w.deadband_max_hold),
        ("idle_close_s", w.idle_close_seconds),
    ):
        if value is not None:
            windows[key] = value
    out["windows"] = windows
    if spec.features:
        out["features"] = list(spec.features)
    if spec.pii is not None:
        out["chat"] = {
            "pii_builtin": list(spec.pii.builtin),
            "pii_rules": [r.to_obj() for r in spec.pii.rules],
        }
    if spec.escalation is not None:
        esc = {
            k: v
            for k, v in (
                ("threshold", spec.escalation.threshold),
                ("budget_per_hour", spec.escalation.budget_per_hour),
            )
            if v is not None
        }
        if esc:
            out["escalation"] = esc
    if spec.uplink is not None and spec.uplink.budget_bytes_per_hour is not None:
        out["uplink"] = {"budget_bytes_per_hour": spec.uplink.budget_bytes_per_hour}
    return out


def pipeline_hash(name: str | None, payload: dict[str, Any]) -> str | None:
    return None if name is None else _hash([name, payload])


def _created(obj: Any) -> str:
    ts = obj.metadata.creation_timestamp
    return ts.isoformat() if ts is not None else ""


def select_pipeline(labels: dict[str, str], pipelines: Sequence[EdgePipeline]) -> EdgePipeline | None:
    """The oldest pipeline (then by name) whose selector matches: one node, one pipeline, deterministic."""
    matching = [
        p for p in pipelines if p.metadata.deletion_timestamp is None and p.spec.selector.matches(labels)
    ]
    return min(matching, key=lambda p: (_created(p), p.metadata.name), default=None)


# --------------------------------------------------------------------------- models


def rollout_seq(ro: ModelRollout) -> int | None:
    raw = ro.metadata.annotations.get(SEQ_ANNOTATION)
    try:
        return int(raw) if raw is not None else None
    except ValueError:
        return None


def find_model(models: Iterable[EdgeModel], name: str, version: str) -> EdgeModel | None:
    return next((m for m in models if m.spec.model == name and m.spec.version == version), None)


def format_prev(task_model: tuple[str, str] | None, rollout_model: str) -> str:
    """A ``previousVersions`` value: the version for the same model, else ``name@version``; "" for none."""
    if task_model is None:
        return ""
    name, version = task_model
    return version if name == rollout_model else f"{name}@{version}"


def parse_prev(value: str, rollout_model: str) -> tuple[str, str] | None:
    if not value:
        return None
    name, sep, version = value.rpartition("@")
    return (name, version) if sep else (rollout_model, value)


def ordered_rollouts(rollouts: Iterable[ModelRollout]) -> list[ModelRollout]:
    started = [r for r in rollouts if rollout_seq(r) is not None]
    return sorted(started, key=lambda r: (rollout_seq(r) or 0, r.metadata.name))


def assignments(
    node: str, rollouts: Sequence[ModelRollout], models: Sequence[EdgeModel], exclude: str | None = None
) -> dict[str, tuple[str, str]]:
    """task -> (model, version) the rollouts assign to ``node`` (``rollouts`` already in start order)."""
    out: dict[str, tuple[str, str]] = {}
    for ro in rollouts:
        if ro.metadata.name == exclude:
            continue
        prev = ro.status.previous_versions.get(node)
        if prev is None:
            continue
        em = find_model(models, ro.spec.model, ro.spec.version)
        if em is None:
            continue
        task = em.spec.task
        if ro.status.phase == "RolledBack":
            back = parse_prev(prev, ro.spec.model)
            if back is None:
                out.pop(task, None)
            else:
                out[task] = back
        else:
            out[task] = (ro.spec.model, ro.spec.version)
    return out


# --------------------------------------------------------------------------- content


@dataclass(frozen=True)
class DesiredContent:
    models: dict[str, wire.ModelRef] = field(default_factory=dict)
    pipeline: dict[str, Any] = field(default_factory=dict)
    pipeline_name: str | None = None

    def content_hash(self) -> str:
        return _hash(
            [
                {t: r.model_dump(mode="json") for t, r in self.models.items()},
                self.pipeline,
                self.pipeline_name,
            ]
        )

    def pipeline_hash(self) -> str | None:
        return pipeline_hash(self.pipeline_name, self.pipeline)

    def model_ids(self) -> dict[str, str]:
        return {t: f"{r.name}@{r.version}" for t, r in self.models.items()}


def build_content(
    node: EdgeNode,
    pipelines: Sequence[EdgePipeline],
    rollouts: Sequence[ModelRollout],
    models: Sequence[EdgeModel],
    ref_for: RefFor = default_ref,
) -> DesiredContent | None:
    """The desired state of ``node``; None when it is not approved (it gets nothing at all).

    ``rollouts`` must be in start order (``ordered_rollouts``). A task without an
    assignment is absent: the node keeps whatever it runs for it.
    """
    if not node.spec.enrollment.approved or node.metadata.deletion_timestamp is not None:
        return None
    refs: dict[str, wire.ModelRef] = {}
    for task, (name, version) in assignments(node.metadata.name, rollouts, models).items():
        em = find_model(models, name, version)
        if em is None:
            log.warning(
                "node %s: no EdgeModel %s@%s to build a ModelRef from; task %s left as is",
                node.metadata.name,
                name,
                version,
                task,
            )
            continue
        refs[task] = ref_for(em)
    pipe = select_pipeline(node.metadata.labels, pipelines)
    if pipe is None:
        return DesiredContent(models=refs)
    return DesiredContent(models=refs, pipeline=pipeline_payload(pipe.spec), pipeline_name=pipe.metadata.name)


# --------------------------------------------------------------------------- publishing


@dataclass
class PublisherMetrics:
    published: int = 0
    republished: int = 0
    cleared: int = 0
    unchanged: int = 0
    errors: int = 0


class DesiredPublisher:
    """Publishes desired states retained (QoS 1) and remembers their generations in the fleet DB."""

    def __init__(
        self,
        fleet: Fleet,
        client: MqttClient | None,
        *,
        publish_timeout_s: float = 5.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.fleet = fleet
        self.client = client
        self.publish_timeout_s = publish_timeout_s
        self.clock = clock
        self.metrics = PublisherMetrics()
        self._published: dict[str, str] = {}  # node -> content hash published by this process
        self._cleared: set[str] = set()
        self._floor: dict[str, int] = {}  # generations of cleared records: never go back

    async def sync(
        self, node: str, content: DesiredContent | None, applied_generation: int = 0
    ) -> DesiredRecord | None:
        """Make the retained desired state of ``node`` match ``content`` (None: clear it)."""
        if content is None:
            await self.clear(node)
            return None
        self._cleared.discard(node)
        digest = content.content_hash()
        rec = self.fleet.desired(node)
        if rec is not None and rec.content_hash == digest:
            if self._published.get(node) == digest:
                self.metrics.unchanged += 1
                return rec
            new_rec, fresh = rec, False
        else:
            base = max(rec.generation if rec is not None else self._floor.get(node, 0), applied_generation)
            gen = base + 1
            p_hash = content.pipeline_hash()
            keep_since = rec is not None and rec.pipeline_hash == p_hash
            new_rec = DesiredRecord(
                node=node,
                generation=gen,
                content_hash=digest,
                pipeline_name=content.pipeline_name,
                pipeline_hash=p_hash,
                pipeline_since_gen=rec.pipeline_since_gen if keep_since and rec else gen,
                models=content.model_ids(),
            )
            fresh = True
        state = wire.DesiredState(
            node=node,
            generation=new_rec.generation,
            ts=self.clock(),
            models=content.models,
            pipeline=content.pipeline,
            pipeline_name=content.pipeline_name,
        )
        await self._publish(topics.desired(node), wire.dumps(state))
        new_rec.published = self.clock()
        if fresh:
            self.fleet.save_desired(new_rec)
            self.metrics.published += 1
            log.info(
                "desired state of %s: generation %d (models %s, pipeline %s)",
                node,
                new_rec.generation,
                new_rec.models or "-",
                new_rec.pipeline_name or "-",
            )
        else:
            self.metrics.republished += 1
        self._published[node] = digest
        return new_rec

    async def clear(self, node: str) -> None:
        """Delete the retained desired state (once per process; the broker keeps nothing after that)."""
        if node in self._cleared:
            return
        await self._publish(topics.desired(node), b"")
        rec = self.fleet.delete_desired(node)
        if rec is not None:
            self._floor[node] = max(self._floor.get(node, 0), rec.generation)
        self._published.pop(node, None)
        self._cleared.add(node)
        self.metrics.cleared += 1

    async def _publish(self, topic: str, payload: bytes) -> None:
        if self.client is None:
            return
        try:
            await self.client.publish(topic, payload, qos=1, retain=True, timeout=self.publish_timeout_s)
        except MqttError:
            self.metrics.errors += 1
            raise
