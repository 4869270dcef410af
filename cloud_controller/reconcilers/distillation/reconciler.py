"""DistillationJob reconciler: run the job, mirror its stages, gate, sign, release, roll out.

Level-triggered and restart-safe: everything it needs lives in the object's
status and the job's work directory (:mod:`.workdir`), both of which survive a
controller restart.

Each reconcile of an unfinished job: result.json present -> finish (gate
(:mod:`.gate`), sign, EdgeModel, ModelRollout, or Rejected/Failed); runner alive
-> copy progress into the status (each stage stamped with the time the runner
entered it, so stages passed between two polls still get their timestamp);
runner gone without a result -> start it again (``max_restarts``), else Failed.
Where the runner runs is the launcher's business (:mod:`.launchers`).

A deleted DistillationJob (the informer hands us ``None``, or the object carries
a ``deletionTimestamp`` while another finalizer holds it) has its runner
stopped: the local process group is terminated, the cluster Jobs deleted (their
ownerReference would garbage-collect them too, but not on a store without GC).

Finishing is idempotent: the artifact store accepts the same release twice,
and AlreadyExists on the EdgeModel or ModelRollout we own is success, so a
controller that dies between those steps and the status write redoes them
harmlessly.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cloud_controller.distill_runner.exchange import JobExchange
from cloud_controller.distill_runner.protocol import RunnerSpec, write_json_atomic
from cloud_controller.ingest.contracts import HardExampleStoreProtocol
from cloud_controller.ingest.hard_examples import write_snapshot
from cloud_controller.reconcilers.distillation.gate import evaluate_gate
from cloud_controller.reconcilers.distillation.launchers import JobLauncher
from cloud_controller.reconcilers.distillation.workdir import (
    RUNNING_STAGES,
    JobRef,
    job_ref,
    materialize,
    next_version,
    read_int,
    read_progress,
    read_result,
)
from cloud_controller.releases.artifacts import ArtifactError, Release, ReleaseStore
from cloud_controller.resources.kinds import DistillationJob, DistillationJobStatus, JobStage
from cloud_controller.resources.store_protocol import API_VERSION, AlreadyExists, NotFound, Obj, ResourceStore
from cloud_controller.runtime.controller import (
    ReconcileFn,
    Result,
    emit,
    patch_status_with_observed_generation,
)

log = logging.getLogger(__name__)

__all__ = ["DistillationSettings", "make_distillation_reconciler"]

TERMINAL: tuple[JobStage, ...] = ("Succeeded", "Rejected", "Failed")
EXCHANGED_INPUTS = ("spec.json", "hard_examples.jsonl", "parent", "attempts")


@dataclass
class DistillationSettings:
    work_dir: Path
    artifacts: ReleaseStore
    signing_key: Ed25519PrivateKey
    hard_examples: HardExampleStoreProtocol | None = None
    runner_config: Literal["tiny", "full"] = "full"
    data_root: str | None = None
    poll_s: float = 2.0
    max_restarts: int = 1
    escalation_threshold: float = 0.5
    # Called with each new release (e.g. ModelPublisher.publish: retained chunks for the nodes).
    publish: Callable[[Release], Awaitable[None]] | None = None
    extra_runner_fields: dict[str, Any] = field(default_factory=dict)
    # Cluster mode: the work directory is mirrored through the shared store (the Job's disk is not ours).
    exchange: JobExchange | None = None


def _ts(t: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(t, dt.UTC)


def _k8s_name(model: str, version: str) -> str:
    return re.sub(r"[^a-z0-9-]", "-", f"{model}-{version}".lower())[:253].strip("-")


def make_distillation_reconciler(
    store: ResourceStore,
    settings: DistillationSettings,
    launcher: JobLauncher,
    *,
    wall: Callable[[], float] | None = None,
) -> ReconcileFn:
    clock = wall or time.time
    s = settings

    # Jobs seen unfinished, by key: once deleted the informer hands us only the key,
    # and the work directory (hence the runner) is found through the uid.
    known: dict[str, JobRef] = {}

    async def stop_runner(key: str, ref: JobRef, why: str) -> None:
        """Stop the runner of a job that is going away; forgotten only once stopped (else retried)."""
        ref = dataclasses.replace(ref, attempt=read_int(ref.work / "attempts") or 1)
        log.info("distillation %s: %s; stopping its runner (attempt %d)", ref.name, why, ref.attempt)
        await launcher.stop(ref)
        known.pop(key, None)

    async def write(obj: Obj, st: DistillationJobStatus) -> None:
        body = st.to_patch()
        body.pop("observedGeneration", None)
        body.pop("conditions", None)
        await patch_status_with_observed_generation(store, obj, body)

    def mirror(st: DistillationJobStatus, work: Path) -> bool:
        """Copy the runner's stages (with their own timestamps) and progress; True if anything changed."""
        first, prog, msg = read_progress(work)
        before = st.to_obj()
        for stage in RUNNING_STAGES:
            if stage in first and getattr(st.stage_times, stage.lower()) is None:
                st.enter(stage, _ts(first[stage]))
        if st.stage in TERMINAL:
            pass
        elif first:
            st.stage = next(x for x in reversed(RUNNING_STAGES) if x in first)
        if prog is not None:
            st.progress = min(max(prog, 0.0), 1.0)
            st.message = msg[:1000] or st.message
        return st.to_obj() != before

    async def prepare(job: DistillationJob, ref: JobRef) -> RunnerSpec:
        """Resolve the job once: version, parent bundle, hard-example snapshot. Reused on restarts."""
        spec_path = ref.work / "spec.json"
        if spec_path.exists():
            return RunnerSpec.model_validate_json(spec_path.read_bytes())
        ref.work.mkdir(parents=True, exist_ok=True)
        js, d = job.spec, job.spec.data
        releases = await asyncio.to_thread(s.artifacts.releases, js.output_model)
        objs, _ = await store.list("EdgeModel", ref.namespace)
        versions = [r.version for r in releases] + [
            o["spec"]["version"] for o in objs if (o.get("spec") or {}).get("model") == js.output_model
        ]
        parent: str | None = None
        parent_version: str | None = None
        if releases:
            await asyncio.to_thread(materialize, s.artifacts, releases[-1], ref.work / "parent")
            parent, parent_version = "parent", releases[-1].version
        n = 0
        if s.hard_examples is not None:
            since = d.hard_examples_since.timestamp() if d.hard_examples_since else None
            rows = await asyncio.to_thread(
                s.hard_examples.since, since, js.task, d.min_teacher_confidence, d.max_hard_examples
            )
            await asyncio.to_thread(write_snapshot, ref.work / "hard_examples.jsonl", rows)
            n = len(rows)
        spec = RunnerSpec(
            job=ref.name,
            uid=ref.uid,
            task=js.task,
            teacher=js.teacher,
            base=d.base,
            held_back=d.held_back,
            temperature=js.temperature,
            alpha=js.alpha,
            epochs=js.epochs,
            student_params=js.student_params,
            config=s.runner_config,
            data_root=s.data_root,
            hard_examples_file="hard_examples.jsonl" if s.hard_examples is not None else None,
            parent_bundle=parent,
            output_model=js.output_model,
            version=next_version(versions),
            parent_version=parent_version,
            escalation_threshold=s.escalation_threshold,
            **s.extra_runner_fields,
        )
        write_json_atomic(spec_path, json.loads(spec.model_dump_json()))
        log.info(
            "distillation %s: version %s, parent %s, %d hard examples",
            ref.name,
            spec.version,
            parent_version,
            n,
        )
        return spec

    async def finish_failed(obj: Obj, st: DistillationJobStatus, message: str) -> None:
        st.enter("Failed", _ts(clock()))
        st.message = message[:4000]
        await write(obj, st)
        await emit(store, obj, "Failed", message[:1000], "Warning")

    async def release(
        obj: Obj, job: DistillationJob, ref: JobRef, spec: RunnerSpec, result: dict[str, Any]
    ) -> tuple[str, str | None]:
        bundle = ref.work / Path(str(result.get("bundle", "bundle"))).name  # same dir, any mount point
        rel = await asyncio.to_thread(s.artifacts.put_bundle, bundle, s.signing_key, task=job.spec.task)
        if s.publish is not None:
            await s.publish(rel)
        name = _k8s_name(rel.name, rel.version)
        metrics = {k: float(v) for k, v in result.get("metrics_after", {}).items()}
        model = s.artifacts.edge_model(
            rel,
            namespace=ref.namespace,
            name=name,
            labels={"edgeloop.io/produced-by": ref.name[:63]},
            metrics=metrics,
            producedBy=ref.name,
            **({"parentVersion": spec.parent_version} if spec.parent_version else {}),
        )
        try:
            await store.create(model)
            await emit(store, obj, "ModelCreated", f"EdgeModel {name}: {rel.name}@{rel.version} {rel.digest}")
        except AlreadyExists:
            existing = await store.get("EdgeModel", ref.namespace, name)
            if (existing.get("spec") or {}).get("digest") != rel.digest:
                raise ArtifactError(f"EdgeModel {name} exists with another digest") from None
        rollout_name: str | None = None
        ro = job.spec.rollout
        if ro is not None and ro.auto:
            tmpl = ro.template.to_obj() if ro.template is not None else {}
            rollout_name = name
            try:
                await store.create(
                    {
                        "apiVersion": API_VERSION,
                        "kind": "ModelRollout",
                        "metadata": {
                            "name": rollout_name,
                            "namespace": ref.namespace,
                            "labels": {"edgeloop.io/produced-by": ref.name[:63]},
                        },
                        "spec": {**tmpl, "model": rel.name, "version": rel.version},
                    }
                )
                await emit(store, obj, "RolloutCreated", f"ModelRollout {rollout_name}")
            except AlreadyExists:
                pass
        return name, rollout_name

    async def finish(obj: Obj, job: DistillationJob, ref: JobRef, result: dict[str, Any]) -> None:
        st = job.status
        mirror(st, ref.work)
        if not result.get("ok"):
            await finish_failed(obj, st, str(result.get("error") or "runner failed"))
            return
        spec = RunnerSpec.model_validate_json((ref.work / "spec.json").read_bytes())
        before = {k: float(v) for k, v in result.get("metrics_before", {}).items()}
        after = {k: float(v) for k, v in result.get("metrics_after", {}).items()}
        st.metrics_before, st.metrics_after = before, after
        st.examples = int(result.get("examples", 0))
        st.progress = 1.0
        verdict = evaluate_gate(job.spec.gate, before, after)
        if not verdict.passed:
            st.enter("Rejected", _ts(clock()))
            st.message = f"{verdict.reason}: {verdict.message}"
            await write(obj, st)
            await emit(store, obj, "Rejected", st.message, "Warning")
            return
        try:
            produced, rollout = await release(obj, job, ref, spec, result)
        except (ArtifactError, OSError) as exc:
            await finish_failed(obj, st, f"release failed: {exc}")
            return
        st.produced_version, st.produced_model, st.rollout_name = spec.version, produced, rollout
        st.enter("Succeeded", _ts(clock()))
        st.message = f"{verdict.reason}: {verdict.message}"
        await write(obj, st)
        await emit(store, obj, "Succeeded", f"{spec.output_model}@{spec.version}: {st.message}")

    async def reconcile(key: str, obj: Obj | None) -> Result | None:
        if obj is None:
            gone = known.get(key)
            if gone is not None:
                await stop_runner(key, gone, "deleted")
            return None
        job = DistillationJob.from_obj(obj)
        st = job.status
        if st.stage in TERMINAL:
            known.pop(key, None)
            if s.exchange is not None:  # the outcome is in the status; the exchanged files can go
                await asyncio.to_thread(s.exchange.drop, job_ref(s.work_dir, obj).uid)
            return None
        ref = job_ref(s.work_dir, obj)
        if s.exchange is not None:  # this pod's disk is a cache: the shared store has the job's files
            await asyncio.to_thread(s.exchange.pull, ref.uid, ref.work)
            ref = job_ref(s.work_dir, obj)
        if obj["metadata"].get("deletionTimestamp"):  # held by someone else's finalizer: no new work
            await stop_runner(key, ref, "being deleted")
            return None
        known[key] = ref
        if st.stage is None:
            st.enter("Pending", _ts(clock()))
            try:
                await write(obj, st)
            except NotFound:
                return None
            await emit(store, obj, "Pending", "waiting to start the distillation runner")
            return None
        result = read_result(ref.work)
        if result is not None:
            await finish(obj, job, ref, result)
            return None
        state = await launcher.poll(ref)
        if state.kind == "running":
            old = st.stage
            if mirror(st, ref.work):
                await write(obj, st)
                if st.stage != old:
                    await emit(store, obj, str(st.stage), st.message or "")
            return Result(requeue_after=s.poll_s)
        if state.kind in ("failed", "succeeded"):
            if (ref.work / "result.json").exists():  # written between our two looks
                return Result(requeue_after=0.0)
            await finish_failed(obj, st, state.message or "runner ended without result.json")
            return None
        attempts = read_int(ref.work / "attempts") or 0
        if attempts > s.max_restarts:
            await finish_failed(obj, st, f"runner gone without a result after {attempts} attempts")
            return None
        await prepare(job, ref)
        (ref.work / "attempts").write_text(str(attempts + 1))
        if s.exchange is not None:  # before the start: the Job pulls its inputs first thing
            await asyncio.to_thread(s.exchange.push, ref.uid, ref.work, EXCHANGED_INPUTS)
        await launcher.start(dataclasses.replace(ref, attempt=attempts + 1))
        if attempts:
            await emit(
                store,
                obj,
                "Restarted",
                f"runner was gone without a result; attempt {attempts + 1}",
                "Warning",
            )
        else:
            await emit(store, obj, "Started", f"runner started in {ref.work}")
        return Result(requeue_after=s.poll_s)

    return reconcile
