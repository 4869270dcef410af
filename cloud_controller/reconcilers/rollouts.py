"""ModelRollout reconciler (canary steps, analysis, automatic rollback) and the light EdgeModel reconciler.

Everything the rollout needs to resume is in its stored status plus the fleet:

* ``currentStep`` / ``currentWeight``: the step being worked on;
* ``phase``: Progressing = assigning the step's nodes and waiting until they
  all report the new version active; Paused = all ready, pausing
  ``pauseSeconds`` before analysis; then the next step, or a terminal phase
  (Succeeded, RolledBack, Failed);
* ``stepStartedAt``: when the current phase of the current step began (the
  pause deadline survives a restart);
* ``previousVersions``: every node this rollout updated -> what it ran before.
  It is written BEFORE the node is sent the new version, so a controller that
  dies at any point can still roll every updated node back; the updated set is
  exactly its keys, so a restart neither re-does nor skips nodes.

Node order is deterministic: a hash of (rollout name, node name), so the canary
spreads over sites, is stable across restarts and differs between rollouts.
Step i updates nodes until ceil(weight_i% x selected) are updated, taking the
next not-yet-updated nodes in that order (nodes that joined meanwhile are
simply part of the order).

The rollout never publishes: assignments are read by ``desired.build_content``
(node reconciler) from the rollouts' statuses, in start order (the
``edgeloop.io/rollout-seq`` annotation given when a rollout starts). A newer
rollout of the same task overrides older ones node by node, and an older one
still running stops as Failed/Superseded, so a failed or finished rollout
never blocks the next.

Analysis pools the new version's ModelStatus counters over the updated nodes:
escalation rate = escalated/samples, mean confidence = confidence_sum/samples,
error rate = errors/samples, after at least ``minSamples`` samples (fewer:
keep waiting, condition Analysis=Unknown). A node that reports the new version
failed or rolled back by itself fails the rollout at once.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

from pydantic import ValidationError

from cloud_controller.reconcilers.common import Context, approved, conditions_differ, fields_differ, labels_of
from cloud_controller.reconcilers.desired import (
    SEQ_ANNOTATION,
    assignments,
    find_model,
    format_prev,
    rollout_seq,
)
from cloud_controller.resources.kinds import Analysis, EdgeModel, ModelRollout
from cloud_controller.resources.store_protocol import NotFound, Obj
from cloud_controller.runtime.controller import (
    Condition,
    ReconcileFn,
    Result,
    emit,
    patch_status_with_observed_generation,
)
from cloud_controller.runtime.informer import split_key
from edge_agent.protocol import messages as wire

TERMINAL = ("Succeeded", "RolledBack", "Failed")


@dataclass(frozen=True)
class Verdict:
    ok: bool | None  # None: not enough data yet
    reason: str
    message: str


def analyze(analysis: Analysis, stats: Sequence[wire.ModelStatus]) -> Verdict:
    samples = sum(s.samples for s in stats)
    thresholds = (analysis.max_escalation_rate, analysis.min_mean_confidence, analysis.max_error_rate)
    need = max(analysis.min_samples, 1 if any(t is not None for t in thresholds) else 0)
    if samples < need:
        return Verdict(None, "InsufficientSamples", f"{samples}/{need} samples from updated nodes")
    if samples == 0:
        return Verdict(True, "NoCriteria", "no analysis criteria")
    esc = sum(s.escalated for s in stats) / samples
    conf = sum(s.confidence_sum for s in stats) / samples
    err = sum(s.errors for s in stats) / samples
    measured = (
        f"escalation rate {esc:.4f}, mean confidence {conf:.4f}, error rate {err:.4f} over {samples} samples"
    )
    if analysis.max_error_rate is not None and err > analysis.max_error_rate:
        return Verdict(
            False, "ErrorRateTooHigh", f"error rate {err:.4f} > {analysis.max_error_rate} ({measured})"
        )
    if analysis.max_escalation_rate is not None and esc > analysis.max_escalation_rate:
        return Verdict(
            False,
            "EscalationRateTooHigh",
            f"escalation rate {esc:.4f} > {analysis.max_escalation_rate} ({measured})",
        )
    if analysis.min_mean_confidence is not None and conf < analysis.min_mean_confidence:
        return Verdict(
            False,
            "ConfidenceTooLow",
            f"mean confidence {conf:.4f} < {analysis.min_mean_confidence} ({measured})",
        )
    return Verdict(True, "AnalysisPassed", measured)


def _ts(ctx: Context) -> str:
    return ctx.now().strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _order_key(rollout: str, node: str) -> str:
    return hashlib.sha256(f"{rollout}/{node}".encode()).hexdigest()


async def _write(ctx: Context, obj: Obj, fields: Obj, *conditions: Condition) -> bool:
    current: Obj = obj.get("status") or {}
    gen = (obj.get("metadata") or {}).get("generation")
    if not (
        fields_differ(current, fields)
        or conditions_differ(current.get("conditions") or [], conditions)
        or current.get("observedGeneration") != gen
    ):
        return False
    await patch_status_with_observed_generation(ctx.store, obj, fields, *conditions)
    return True


def make_rollout_reconciler(ctx: Context) -> ReconcileFn:
    def expected_id(
        node: str, task: str, rollouts: Sequence[ModelRollout], models: Sequence[EdgeModel]
    ) -> str | None:
        got = assignments(node, rollouts, models).get(task)
        if got is None or find_model(models, *got) is None:
            return None
        return f"{got[0]}@{got[1]}"

    def wake_stale_nodes(ro: ModelRollout, task: str | None) -> None:
        """Nodes whose published desired state does not yet say what the rollouts assign."""
        # Typed lists once per call, not once per node: per node they were ~25% of a 1,000-node
        # rollout's controller CPU (bench_fleet profile).
        rollouts, models = ctx.rollouts(), ctx.models()
        for node in ro.status.previous_versions:
            rec = ctx.fleet.desired(node)
            if task is None or rec is None:
                ctx.enqueue("EdgeNode", node)
            elif rec.models.get(task) != expected_id(node, task, rollouts, models):
                ctx.enqueue("EdgeNode", node)

    def current_for(node: str, task: str, exclude: str) -> tuple[str, str] | None:
        got = assignments(node, ctx.rollouts(), ctx.models(), exclude=exclude).get(task)
        if got is not None:
            return got
        state = ctx.fleet.get(node)
        ms = state.model(task) if state is not None else None
        return (ms.name, ms.version) if ms is not None and ms.state == "active" else None

    async def assign_seq(ro: ModelRollout) -> None:
        objs, _rv = await ctx.store.list("ModelRollout", ro.metadata.namespace)
        seqs = [
            int(v)
            for o in objs
            if (v := ((o.get("metadata") or {}).get("annotations") or {}).get(SEQ_ANNOTATION, "")).isdigit()
        ]
        await ctx.store.patch(
            "ModelRollout",
            ro.metadata.namespace,
            ro.metadata.name,
            {"metadata": {"annotations": {SEQ_ANNOTATION: str(max(seqs, default=0) + 1)}}},
        )

    async def finish_failed(obj: Obj, ro: ModelRollout, counts: Obj, reason: str, message: str) -> None:
        automatic = ro.spec.rollback_policy == "Automatic"
        phase = "RolledBack" if automatic else "Failed"
        n = len(ro.status.previous_versions)
        await _write(
            ctx,
            obj,
            {"phase": phase, **counts},
            Condition("Analysis", "False", reason, message),
            Condition(
                "Progressing",
                "False",
                "RolledBack" if automatic else "AnalysisFailed",
                f"rolling back {n} updated node(s)"
                if automatic
                else f"{n} updated node(s) left as they are (rollbackPolicy Manual)",
            ),
        )
        await emit(
            ctx.store,
            obj,
            "RolledBack" if automatic else "AnalysisFailed",
            f"{reason}: {message}; {'rolling back' if automatic else 'not rolling back'} {n} node(s)",
            "Warning",
        )

    async def reconcile(key: str, obj: Obj | None) -> Result | None:
        _ns, name = split_key(key)
        if obj is None:  # its assignments are gone: every node it touched needs recomputing
            ctx.enqueue_all("EdgeNode")
            return None
        if not ctx.synced("EdgeNode", "EdgeModel", "ModelRollout"):
            return Result(requeue_after=0.1)
        ro = ModelRollout.from_obj(obj)
        st, spec = ro.status, ro.spec
        models = ctx.models()
        em = find_model(models, spec.model, spec.version)
        task = em.spec.task if em is not None else None
        if st.phase in TERMINAL:
            wake_stale_nodes(ro, task)
            await _write(ctx, obj, {})  # observedGeneration only, if the spec was edited
            return None
        if em is None or em.status.phase != "Available":
            why = "ModelNotFound" if em is None else "ModelNotAvailable"
            await _write(
                ctx,
                obj,
                {"phase": st.phase or "Pending"},
                Condition("ModelAvailable", "False", why, f"EdgeModel {spec.model}@{spec.version}: {why}"),
            )
            return Result(requeue_after=ctx.settings.poll_s)
        assert task is not None
        seq = rollout_seq(ro)
        if seq is None:
            await assign_seq(ro)
            return None  # the annotation's watch event brings us back with a fresh object

        for other in ctx.all_rollouts():
            oseq = rollout_seq(other)
            if other.metadata.name == name or oseq is None or (oseq, other.metadata.name) <= (seq, name):
                continue
            oem = find_model(models, other.spec.model, other.spec.version)
            if other.spec.model == spec.model or (oem is not None and oem.spec.task == task):
                await _write(
                    ctx,
                    obj,
                    {"phase": "Failed"},
                    Condition(
                        "Progressing",
                        "False",
                        "Superseded",
                        f"superseded by ModelRollout {other.metadata.name}",
                    ),
                )
                await emit(ctx.store, obj, "Superseded", f"superseded by {other.metadata.name}")
                return None

        selected = sorted(
            (
                o["metadata"]["name"]
                for o in ctx.raw("EdgeNode")
                if approved(o) and spec.selector.matches(labels_of(o))
            ),
            key=lambda n: _order_key(name, n),
        )
        total = len(selected)
        prev = dict(st.previous_versions)
        steps = spec.steps
        i = min(st.current_step or 0, len(steps) - 1)
        step = steps[i]

        def node_model(node: str) -> wire.ModelStatus | None:
            state = ctx.fleet.get(node)
            return state.model(task) if state is not None else None

        ready = [
            n
            for n in prev
            if (ms := node_model(n)) is not None
            and ms.name == spec.model
            and ms.version == spec.version
            and ms.state == "active"
        ]
        counts: Obj = {
            "updatedNodes": len(prev),
            "readyNodes": len(ready),
            "totalNodes": total,
            "updatedRatio": f"{len(prev)}/{total}",
            "currentStep": i,
            "currentWeight": step.set_weight,
        }

        failed = []
        for n in prev:
            ms, state, rec = node_model(n), ctx.fleet.get(n), ctx.fleet.desired(n)
            if (
                ms is not None
                and ms.state in ("failed", "rolled_back")
                and spec.version in (ms.version, ms.previous)
                and state is not None
                and rec is not None
                and rec.models.get(task) == f"{spec.model}@{spec.version}"
                and state.applied_generation >= rec.generation
            ):
                failed.append(n)
        if failed:
            await finish_failed(
                obj,
                ro,
                counts,
                "ActivationFailed",
                f"{len(failed)} node(s) could not activate {spec.version}: {', '.join(sorted(failed)[:5])}",
            )
            return None

        wake_stale_nodes(ro, task)
        phase = st.phase
        if phase in (None, "Pending", "Progressing"):
            if total == 0:
                await _write(
                    ctx,
                    obj,
                    {"phase": "Progressing", **counts},
                    Condition("ModelAvailable", "True", "Available", f"{spec.model}@{spec.version}"),
                    Condition("Progressing", "True", "NoNodesSelected", "no approved node matches"),
                )
                return Result(requeue_after=ctx.settings.poll_s)
            need = math.ceil(step.set_weight * total / 100)
            have = sum(1 for n in selected if n in prev)
            new = [n for n in selected if n not in prev][: max(0, need - have)]
            if new:
                add = {n: format_prev(current_for(n, task, name), spec.model) for n in new}
                counts.update(
                    updatedNodes=len(prev) + len(new), updatedRatio=f"{len(prev) + len(new)}/{total}"
                )
                fields: Obj = {"phase": "Progressing", "previousVersions": add, **counts}
                if phase != "Progressing":
                    fields["stepStartedAt"] = _ts(ctx)
                await _write(
                    ctx,
                    obj,
                    fields,
                    Condition("ModelAvailable", "True", "Available", f"{spec.model}@{spec.version}"),
                    Condition(
                        "Progressing",
                        "True",
                        "Updating",
                        f"step {i + 1}/{len(steps)} ({step.set_weight}%): "
                        f"{spec.version} to {len(new)} more node(s)",
                    ),
                )
                await emit(
                    ctx.store,
                    obj,
                    "NodesUpdated",
                    f"step {i + 1}/{len(steps)} ({step.set_weight}%): {spec.model}@{spec.version} "
                    f"assigned to {len(new)} node(s), {len(prev) + len(new)}/{total} updated",
                )
                return Result(requeue_after=ctx.settings.poll_s)
            if len(ready) < len(prev):
                await _write(
                    ctx,
                    obj,
                    {"phase": "Progressing", **counts},
                    Condition(
                        "Progressing",
                        "True",
                        "WaitingForNodes",
                        f"step {i + 1}/{len(steps)}: waiting for updated nodes to run {spec.version}",
                    ),
                )
                return Result(requeue_after=ctx.settings.poll_s)
            await _write(
                ctx,
                obj,
                {"phase": "Paused", "stepStartedAt": _ts(ctx), **counts},
                Condition(
                    "Progressing",
                    "True",
                    "StepPaused",
                    f"step {i + 1}/{len(steps)}: all {len(prev)} updated node(s) ready; "
                    f"pausing {step.pause_seconds}s before analysis",
                ),
            )
            return Result(requeue_after=float(step.pause_seconds))

        # Paused: wait out the pause, then judge the step.
        started = st.step_started_at or ctx.now()
        remaining = started.timestamp() + step.pause_seconds - ctx.wall()
        if remaining > 0:
            await _write(ctx, obj, counts)
            return Result(requeue_after=remaining)
        stats = [ms for n in ready if (ms := node_model(n)) is not None]
        verdict = analyze(spec.analysis, stats)
        if verdict.ok is None:
            await _write(ctx, obj, counts, Condition("Analysis", "Unknown", verdict.reason, verdict.message))
            return Result(requeue_after=ctx.settings.poll_s)
        if not verdict.ok:
            await finish_failed(obj, ro, counts, verdict.reason, verdict.message)
            return None
        analysis_ok = Condition("Analysis", "True", verdict.reason, f"step {i + 1}: {verdict.message}")
        if i >= len(steps) - 1:
            await _write(
                ctx,
                obj,
                {"phase": "Succeeded", **counts},
                analysis_ok,
                Condition(
                    "Progressing",
                    "False",
                    "Succeeded",
                    f"{len(prev)}/{total} node(s) run {spec.model}@{spec.version}",
                ),
            )
            await emit(
                ctx.store, obj, "RolloutSucceeded", f"{spec.model}@{spec.version} on {len(prev)} node(s)"
            )
            return None
        nxt = steps[i + 1]
        await _write(
            ctx,
            obj,
            {
                "phase": "Progressing",
                **counts,
                "currentStep": i + 1,
                "currentWeight": nxt.set_weight,
                "stepStartedAt": _ts(ctx),
            },
            analysis_ok,
            Condition("Progressing", "True", "StepPassed", f"step {i + 1}/{len(steps)} passed"),
        )
        await emit(ctx.store, obj, "StepPassed", f"step {i + 1}/{len(steps)} passed: {verdict.message}")
        return None

    return reconcile


# --------------------------------------------------------------------------- EdgeModel

_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")


async def file_uri_check(model: EdgeModel) -> bool | None:
    """Default artifact check: ``file://`` URIs must exist; anything else cannot be checked here."""
    uri = model.spec.uri
    if not uri:
        return None
    parsed = urlparse(uri)
    if parsed.scheme != "file":
        return None
    return await asyncio.to_thread(Path(unquote(parsed.path)).exists)


def make_model_reconciler(ctx: Context) -> ReconcileFn:
    async def reconcile(key: str, obj: Obj | None) -> Result | None:
        if obj is None:
            ctx.enqueue_active_rollouts()
            return None
        m = EdgeModel.from_obj(obj)
        problems = []
        if not _DIGEST.match(m.spec.digest):
            problems.append(f"digest {m.spec.digest!r} is not sha256:<64 hex>")
        try:
            ctx.ref_for(m)
        except ValidationError as exc:
            problems.append(f"cannot be sent to nodes: {exc.errors()[0]['msg']}")
        again: Result | None = None
        if problems:
            phase = "Invalid"
            cond = Condition("Valid", "False", "InvalidSpec", "; ".join(problems))
        else:
            found = await ctx.artifact_check(m)
            if found is False:
                phase = "Invalid"
                cond = Condition(
                    "Valid", "False", "ArtifactMissing", f"artifact {m.spec.uri or '?'} not found"
                )
                again = Result(requeue_after=ctx.settings.resync_s)
            else:
                phase = "Available"
                cond = Condition(
                    "Valid",
                    "True",
                    "ArtifactFound" if found else "NotChecked",
                    "artifact present" if found else "artifact not checked by this controller",
                )
        old = (obj.get("status") or {}).get("phase")
        try:
            await _write(ctx, obj, {"phase": phase}, cond)
        except NotFound:
            return None
        if old != phase:
            ctx.enqueue_active_rollouts()
            if phase == "Invalid":
                await emit(ctx.store, obj, "Invalid", cond.message, "Warning")
        return again

    return reconcile
