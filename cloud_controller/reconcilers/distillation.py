"""DistillationJob reconciler: run the job, mirror its stages, gate, sign, release, roll out.

Level-triggered and restart-safe because everything it needs lives in two places
that survive a controller restart: the object's status and the job's work
directory ``{work_dir}/{uid}/`` (a shared volume on a cluster)::

    spec.json            RunnerSpec: the job spec resolved once (version, parent, snapshot)
    hard_examples.jsonl  the snapshot of hard examples the job trains on (re-runs use the same)
    parent/              the parent release's bundle, rebuilt from the artifact store
    progress.jsonl       written by the runner: stage, progress, message, ts
    result.json          written last by the runner: metrics, bundle dir, or error
    attempts             how many times the runner was started

Each reconcile of an unfinished job: result.json present -> finish (gate, sign,
EdgeModel, ModelRollout, or Rejected/Failed); runner alive -> copy progress into
the status (each stage stamped with the time the runner entered it, so stages
passed between two polls still get their timestamp); runner gone without a
result -> start it again (``max_restarts``), else Failed. The runner is a
process started in its own session locally (it outlives a controller restart,
which re-attaches through the pid file: :class:`LocalJobLauncher`) or a
``batch/v1`` Job rendered from ``deploy/kubernetes/distillation/job-template.yaml``
on a cluster (:class:`KubeJobLauncher`; the work directory is then a shared
volume mounted by the controller and, with ``subPath`` = uid, by the Job).

Gate (metric ``m`` = ``spec.gate.metric``, in percent): regression on the fixed
set ``before[fixed_m] - after[fixed_m]`` at most ``maxRegression`` (default 0),
gain on the new data ``after[new_m] - before[new_m]`` at least ``minGain`` (no
requirement when unset). A first version (no parent) has nothing to regress
from and passes on its own metrics.

Finishing is idempotent: the artifact store accepts the same release twice,
and AlreadyExists on the EdgeModel or ModelRollout we own is success, so a
controller that dies between those steps and the status write redoes them
harmlessly.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import datetime as dt
import json
import logging
import os
import re
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cloud_controller.artifacts import ArtifactError, ArtifactStore, Release
from cloud_controller.distill_job import RunnerSpec, write_json_atomic
from cloud_controller.hard_examples import HardExampleStore
from cloud_controller.resources.models import DistillationJob, DistillationJobStatus, Gate, JobStage
from cloud_controller.resources.store import API_VERSION, AlreadyExists, NotFound, Obj, ResourceStore
from cloud_controller.runtime.controller import (
    ReconcileFn,
    Result,
    emit,
    patch_status_with_observed_generation,
)
from edge_agent.delivery.verify import parse_manifest, version_key

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_TEMPLATE",
    "DistillationSettings",
    "GateVerdict",
    "JobRef",
    "KubeJobLauncher",
    "LocalJobLauncher",
    "RunState",
    "evaluate_gate",
    "make_distillation_reconciler",
    "render_job",
]

TERMINAL: tuple[JobStage, ...] = ("Succeeded", "Rejected", "Failed")
RUNNING_STAGES: tuple[JobStage, ...] = ("Collecting", "Training", "Evaluating")
RUNNER_MODULE = "cloud_controller.distill_job"
DEFAULT_TEMPLATE = Path(__file__).resolve().parents[2] / "deploy/kubernetes/distillation/job-template.yaml"
POD_WORK_DIR = "/work"  # where the template mounts the job's work directory


# --------------------------------------------------------------------------- launchers


@dataclass(frozen=True)
class JobRef:
    name: str  # DistillationJob name
    namespace: str
    uid: str
    work: Path  # the work directory as the controller sees it
    owner: Obj = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class RunState:
    kind: Literal["running", "succeeded", "failed", "missing"]
    message: str = ""


class JobLauncher(Protocol):
    async def start(self, ref: JobRef) -> None: ...
    async def poll(self, ref: JobRef) -> RunState: ...
    async def stop(self, ref: JobRef) -> None: ...


def _runner_args(work: str) -> list[str]:
    return ["--spec", f"{work}/spec.json", "--out", work, "--progress", f"{work}/progress.jsonl"]


class LocalJobLauncher:
    """Runner as a child process in its own session, so it survives (and is re-attached after) a restart.

    ``on_exit(ref)`` is called when a child this process started ends, to wake the
    reconciler at once instead of at the next poll.
    """

    def __init__(
        self,
        python: str = sys.executable,
        on_exit: Callable[[JobRef], None] | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.python = python
        self.on_exit = on_exit
        self.env = env
        self._procs: dict[str, asyncio.subprocess.Process] = {}
        self._waiters: dict[str, asyncio.Task[None]] = {}

    async def start(self, ref: JobRef) -> None:
        ref.work.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "TQDM_DISABLE": "1", **(self.env or {})}
        with (ref.work / "runner.log").open("ab") as logf:
            proc = await asyncio.create_subprocess_exec(
                self.python,
                "-m",
                RUNNER_MODULE,
                *_runner_args(str(ref.work)),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=logf,
                stderr=logf,
                env=env,
                start_new_session=True,
            )
        (ref.work / "pid").write_text(str(proc.pid))
        self._procs[ref.uid] = proc
        self._waiters[ref.uid] = asyncio.create_task(self._wait(ref, proc), name=f"distill-wait-{ref.name}")

    async def _wait(self, ref: JobRef, proc: asyncio.subprocess.Process) -> None:
        await proc.wait()
        if self.on_exit is not None:
            self.on_exit(ref)

    async def poll(self, ref: JobRef) -> RunState:
        proc = self._procs.get(ref.uid)
        if proc is not None:
            if proc.returncode is None:
                return RunState("running")
            if proc.returncode == 0:
                return RunState("succeeded")
            return RunState(
                "failed", f"runner exited with code {proc.returncode}: {_tail(ref.work / 'runner.log')}"
            )
        pid = _read_int(ref.work / "pid")
        if pid is not None and _is_runner(pid, ref.work):
            return RunState("running", f"re-attached to pid {pid}")
        return RunState("missing")

    async def stop(self, ref: JobRef) -> None:
        pid = _read_int(ref.work / "pid")
        proc = self._procs.pop(ref.uid, None)
        if proc is not None and proc.returncode is None:
            proc.kill()
            await proc.wait()
        elif pid is not None and _is_runner(pid, ref.work):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 9)
        waiter = self._waiters.pop(ref.uid, None)
        if waiter is not None:
            waiter.cancel()

    async def close(self) -> None:
        """Forget the children without killing them (a restarted controller re-attaches)."""
        for t in self._waiters.values():
            t.cancel()
        await asyncio.gather(*self._waiters.values(), return_exceptions=True)
        self._waiters.clear()
        self._procs.clear()


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _is_runner(pid: int, work: Path) -> bool:
    """Whether ``pid`` is alive AND is our runner for ``work`` (pids are reused; zombies have no cmdline)."""
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return RUNNER_MODULE.encode() in cmd and str(work).encode() in cmd


def _tail(path: Path, n: int = 600) -> str:
    try:
        return path.read_bytes()[-n:].decode("utf-8", "replace").strip()
    except OSError:
        return ""


def render_job(
    template: Obj, ref: JobRef, *, image: str | None = None, service_account: str | None = None
) -> Obj:
    """The batch/v1 Job for ``ref``: the template with name, owner, labels and work sub-path filled in.

    Structured edits, not text substitution: a job name can never inject YAML.
    The work volume is mounted with ``subPath`` = the job uid, so one shared
    claim serves every job and a job sees only its own directory.
    """
    job = copy.deepcopy(template)
    if job.get("apiVersion") != "batch/v1" or job.get("kind") != "Job":
        raise ValueError("the distillation template must be a batch/v1 Job")
    name = re.sub(r"[^a-z0-9-]", "-", f"distill-{ref.name}".lower())[:63].rstrip("-")
    meta = job.setdefault("metadata", {})
    meta.update(name=name, namespace=ref.namespace)
    labels = {
        **meta.get("labels", {}),
        "edgeloop.io/distillation-job": ref.name[:63],
        "edgeloop.io/job-uid": ref.uid[:63],
    }
    meta["labels"] = labels
    if ref.owner.get("metadata", {}).get("uid"):
        meta["ownerReferences"] = [
            {
                "apiVersion": API_VERSION,
                "kind": "DistillationJob",
                "name": ref.name,
                "uid": ref.owner["metadata"]["uid"],
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]
    pod = job["spec"]["template"]
    pod.setdefault("metadata", {}).setdefault("labels", {}).update(labels)
    pspec = pod["spec"]
    if service_account:
        pspec["serviceAccountName"] = service_account
    container = pspec["containers"][0]
    if image:
        container["image"] = image
    container["args"] = _runner_args(POD_WORK_DIR)
    for m in container.get("volumeMounts", []):
        if m.get("mountPath") == POD_WORK_DIR:
            m["subPath"] = ref.uid
    return job


class KubeJobLauncher:
    """Runner as a ``batch/v1`` Job: its status says when it ended, result.json what came out."""

    def __init__(
        self, api_client: Any, template: Obj, *, image: str | None = None, service_account: str | None = None
    ) -> None:
        from kubernetes import client

        self.batch = client.BatchV1Api(api_client)
        self.template = template
        self.image = image
        self.service_account = service_account

    @staticmethod
    def load_template(path: Path = DEFAULT_TEMPLATE) -> Obj:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise ValueError(f"{path}: not a YAML mapping")
        return data

    def job_name(self, ref: JobRef) -> str:
        return str(render_job(self.template, ref)["metadata"]["name"])

    async def start(self, ref: JobRef) -> None:
        from kubernetes.client.exceptions import ApiException

        body = render_job(self.template, ref, image=self.image, service_account=self.service_account)
        name = body["metadata"]["name"]
        try:
            old = await self._get(ref)
            if old is not None:  # a restart: the old Job failed or vanished; replace it
                await asyncio.to_thread(
                    self.batch.delete_namespaced_job, name, ref.namespace, propagation_policy="Background"
                )
            create: Callable[..., Any] = self.batch.create_namespaced_job
            await asyncio.to_thread(create, ref.namespace, body, _preload_content=False)
        except ApiException as exc:
            if exc.status != 409:
                raise

    async def _get(self, ref: JobRef) -> Obj | None:
        from kubernetes.client.exceptions import ApiException

        try:
            read: Callable[..., Any] = self.batch.read_namespaced_job
            resp = await asyncio.to_thread(read, self.job_name(ref), ref.namespace, _preload_content=False)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return dict(json.loads(resp.data))

    async def poll(self, ref: JobRef) -> RunState:
        job = await self._get(ref)
        if job is None:
            return RunState("missing")
        st = job.get("status") or {}
        conds = {c.get("type"): c for c in st.get("conditions") or [] if c.get("status") == "True"}
        if st.get("succeeded") or "Complete" in conds:
            return RunState("succeeded")
        if "Failed" in conds or (st.get("failed") and not st.get("active")):
            c = conds.get("Failed") or {}
            return RunState(
                "failed", f"Job failed: {c.get('reason', 'Failed')}: {c.get('message', '')}".strip()
            )
        return RunState("running")

    async def stop(self, ref: JobRef) -> None:
        with contextlib.suppress(Exception):
            await asyncio.to_thread(
                self.batch.delete_namespaced_job,
                self.job_name(ref),
                ref.namespace,
                propagation_policy="Background",
            )


# --------------------------------------------------------------------------- gate


@dataclass(frozen=True)
class GateVerdict:
    passed: bool
    reason: str
    message: str


def evaluate_gate(gate: Gate, before: dict[str, float], after: dict[str, float]) -> GateVerdict:
    m = gate.metric
    fk, nk = f"fixed_{m}", f"new_{m}"
    if fk not in after:
        return GateVerdict(False, "MetricMissing", f"{fk} was not measured")
    max_reg = gate.max_regression or 0.0
    parts = []
    if fk in before:
        reg = before[fk] - after[fk]
        parts.append(f"{fk} {before[fk]:.2f} -> {after[fk]:.2f}")
        if reg > max_reg + 1e-9:
            return GateVerdict(
                False,
                "Regression",
                f"{fk} fell by {reg:.2f} > maxRegression {max_reg} ({before[fk]:.2f} -> {after[fk]:.2f})",
            )
    if gate.min_gain is not None:
        if not after.get("new_n"):
            return GateVerdict(False, "NoNewData", f"no new examples to measure a gain of {gate.min_gain} on")
        if nk in before:
            gain = after[nk] - before[nk]
            parts.append(f"{nk} {before[nk]:.2f} -> {after[nk]:.2f}")
            if gain < gate.min_gain - 1e-9:
                return GateVerdict(
                    False,
                    "InsufficientGain",
                    f"{nk} gained {gain:.2f} < minGain {gate.min_gain} ({before[nk]:.2f} -> {after[nk]:.2f})",
                )
    if not before:
        return GateVerdict(True, "NoParent", f"first version: {fk} {after[fk]:.2f}")
    return GateVerdict(True, "GatePassed", "; ".join(parts))


# --------------------------------------------------------------------------- reconciler


@dataclass
class DistillationSettings:
    work_dir: Path
    artifacts: ArtifactStore
    signing_key: Ed25519PrivateKey
    hard_examples: HardExampleStore | None = None
    runner_config: Literal["tiny", "full"] = "full"
    data_root: str | None = None
    poll_s: float = 2.0
    max_restarts: int = 1
    escalation_threshold: float = 0.5
    # Called with each new release (e.g. ModelPublisher.publish: retained chunks for the nodes).
    publish: Callable[[Release], Awaitable[None]] | None = None
    extra_runner_fields: dict[str, Any] = field(default_factory=dict)


def _ts(t: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(t, dt.UTC)


def read_progress(work: Path) -> tuple[dict[str, float], float | None, str]:
    """(first ts of each stage, last progress, last message) from progress.jsonl; torn last line ignored."""
    first: dict[str, float] = {}
    last_p: float | None = None
    last_m = ""
    try:
        lines = (work / "progress.jsonl").read_text(encoding="utf-8").splitlines()
    except OSError:
        return first, None, ""
    for line in lines:
        try:
            d = json.loads(line)
        except ValueError:
            continue
        if d.get("stage") in RUNNING_STAGES:
            first.setdefault(d["stage"], float(d["ts"]))
            last_p, last_m = float(d.get("progress", 0.0)), str(d.get("message", ""))
    return first, last_p, last_m


def _next_version(versions: list[str]) -> str:
    """One past the highest version: ``3`` -> ``4``, ``1.4.0`` -> ``1.4.1``; ``1`` when there is none."""
    if not versions:
        return "1"
    top = max(versions, key=version_key)
    m = re.match(r"^(.*?)(\d+)$", top)
    return f"{m.group(1)}{int(m.group(2)) + 1}" if m else f"{top}.1"


def _k8s_name(model: str, version: str) -> str:
    return re.sub(r"[^a-z0-9-]", "-", f"{model}-{version}".lower())[:253].strip("-")


def materialize(artifacts: ArtifactStore, release: Release, target: Path) -> Path:
    """Rebuild a release's bundle directory from its verified blobs (the parent to compare against)."""
    if (target / "manifest.json").exists():
        return target
    m, _ = parse_manifest(release.manifest)
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    for f in m.files:
        (tmp / f.name).write_bytes(artifacts.get_blob(f.sha256))
    os.replace(tmp, target)
    return target


def make_distillation_reconciler(
    store: ResourceStore,
    settings: DistillationSettings,
    launcher: JobLauncher,
    *,
    wall: Callable[[], float] | None = None,
) -> ReconcileFn:
    import time

    clock = wall or time.time
    s = settings

    def ref_of(obj: Obj) -> JobRef:
        meta = obj["metadata"]
        uid = meta.get("uid") or f"{meta.get('namespace', 'default')}-{meta['name']}"
        return JobRef(meta["name"], meta.get("namespace") or "default", uid, s.work_dir / uid, obj)

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
            text = "".join(json.dumps(r.to_json()) + "\n" for r in rows)
            await asyncio.to_thread((ref.work / "hard_examples.jsonl").write_text, text, "utf-8")
            n = len(rows)
        spec = RunnerSpec(
            job=ref.name,
            uid=ref.uid,
            task=js.task,
            teacher=js.teacher,
            base=d.base,
            temperature=js.temperature,
            alpha=js.alpha,
            epochs=js.epochs,
            student_params=js.student_params,
            config=s.runner_config,
            data_root=s.data_root,
            hard_examples_file="hard_examples.jsonl" if s.hard_examples is not None else None,
            parent_bundle=parent,
            output_model=js.output_model,
            version=_next_version(versions),
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
        model = {
            "apiVersion": API_VERSION,
            "kind": "EdgeModel",
            "metadata": {
                "name": name,
                "namespace": ref.namespace,
                "labels": {"edgeloop.io/model": rel.name, "edgeloop.io/produced-by": ref.name[:63]},
            },
            "spec": {
                "model": rel.name,
                "task": job.spec.task,
                "version": rel.version,
                "digest": rel.digest,
                "sizeBytes": rel.size,
                "uri": (s.artifacts.root / "releases" / rel.name / rel.version).resolve().as_uri(),
                "signature": rel.parsed["signature"],
                "keyId": rel.parsed["key_id"],
                "metrics": metrics,
                "producedBy": ref.name,
                **({"parentVersion": spec.parent_version} if spec.parent_version else {}),
            },
        }
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
            return None
        job = DistillationJob.from_obj(obj)
        st = job.status
        if st.stage in TERMINAL:
            return None
        ref = ref_of(obj)
        if st.stage is None:
            st.enter("Pending", _ts(clock()))
            try:
                await write(obj, st)
            except NotFound:
                return None
            await emit(store, obj, "Pending", "waiting to start the distillation runner")
            return None
        result_path = ref.work / "result.json"
        if result_path.exists():
            try:
                result = json.loads(result_path.read_text(encoding="utf-8"))
            except ValueError:
                result = {"ok": False, "error": "result.json is not valid JSON"}
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
            if result_path.exists():  # written between our two looks
                return Result(requeue_after=0.0)
            await finish_failed(obj, st, state.message or "runner ended without result.json")
            return None
        attempts = _read_int(ref.work / "attempts") or 0
        if attempts > s.max_restarts:
            await finish_failed(obj, st, f"runner gone without a result after {attempts} attempts")
            return None
        await prepare(job, ref)
        (ref.work / "attempts").write_text(str(attempts + 1))
        await launcher.start(ref)
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
