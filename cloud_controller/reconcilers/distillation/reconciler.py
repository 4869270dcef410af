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
volume mounted by the controller and, with ``subPath`` = uid, by the Job). Each
attempt gets its own Job name (``distill-<job>-a<attempt>``): a restart never
collides with the previous attempt's Job, which may still be being deleted.

A deleted DistillationJob (the informer hands us ``None``, or the object carries
a ``deletionTimestamp`` while another finalizer holds it) has its runner
stopped: the local process group is terminated, the cluster Jobs deleted (their
ownerReference would garbage-collect them too, but not on a store without GC).

Gate (metric ``m`` = ``spec.gate.metric``): regression on the fixed set at most
``maxRegression`` (default 0), gain on the new data at least ``minGain`` (no
requirement when unset). Both are positive amounts in the metric's unit counted
in its better direction (``spec.gate.direction``, else inferred from the name:
lower-is-better for ``escalation_rate``, ``far``, ``mar``, ``error_rate``,
``loss``): for ``intent_acc`` the gain is ``after - before``, for
``escalation_rate`` it is ``before - after``. ``spec.gate.guards`` bound further
metrics the same way on the fixed set only (``GuardRegression``; an unmeasured
guard metric is ``MetricMissing``), because a gain on ``m`` can hide a loss
elsewhere, e.g. more of the old traffic escalated to the cloud. A first version
(no parent) has nothing to regress from and passes on its own metrics.

Finishing is idempotent: the artifact store accepts the same release twice,
and AlreadyExists on the EdgeModel or ModelRollout we own is success, so a
controller that dies between those steps and the status write redoes them
harmlessly.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import dataclasses
import datetime as dt
import hashlib
import json
import logging
import os
import re
import signal
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cloud_controller.distill_runner.chat_job import RunnerSpec, write_json_atomic
from cloud_controller.ingest.hard_examples import HardExampleStore, write_snapshot
from cloud_controller.releases.artifacts import ArtifactError, ArtifactStore, Release
from cloud_controller.resources.kinds import (
    DistillationJob,
    DistillationJobStatus,
    Gate,
    GateGuard,
    JobStage,
)
from cloud_controller.resources.store_protocol import API_VERSION, AlreadyExists, NotFound, Obj, ResourceStore
from cloud_controller.runtime.controller import (
    ReconcileFn,
    Result,
    emit,
    patch_status_with_observed_generation,
)
from edge_agent.protocol.manifest import parse_manifest, version_key

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
    "job_name",
    "make_distillation_reconciler",
    "render_job",
]

TERMINAL: tuple[JobStage, ...] = ("Succeeded", "Rejected", "Failed")
RUNNING_STAGES: tuple[JobStage, ...] = ("Collecting", "Training", "Evaluating")
RUNNER_MODULE = "cloud_controller.distill_runner.chat_job"
DEFAULT_TEMPLATE = Path(__file__).resolve().parents[3] / "deploy/kubernetes/distillation/job-template.yaml"
POD_WORK_DIR = "/work"  # where the template mounts the job's work directory


# --------------------------------------------------------------------------- launchers


@dataclass(frozen=True)
class JobRef:
    name: str  # DistillationJob name
    namespace: str
    uid: str
    work: Path  # the work directory as the controller sees it
    owner: Obj = field(default_factory=dict, compare=False)
    attempt: int = 1  # which start of the runner this is (``attempts`` in the work directory)


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
    reconciler at once instead of at the next poll. ``stop`` gives the runner
    ``kill_timeout_s`` to end after SIGTERM before it is killed.
    """

    def __init__(
        self,
        python: str = sys.executable,
        on_exit: Callable[[JobRef], None] | None = None,
        env: dict[str, str] | None = None,
        kill_timeout_s: float = 10.0,
    ) -> None:
        self.python = python
        self.on_exit = on_exit
        self.env = env
        self.kill_timeout_s = kill_timeout_s
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
        """End the runner's whole process group: SIGTERM, SIGKILL after ``kill_timeout_s``; reap it.

        The group and not only the pid, because the runner's own children (torch
        workers, a teacher process) would otherwise outlive it. It is signalled only
        while its leader is provably ours -- a child not yet reaped, or a pid whose
        command line names this work directory -- so a recycled pid is never hit.
        The exit is deliberate: ``on_exit`` is not called for it.
        """
        waiter = self._waiters.pop(ref.uid, None)
        if waiter is not None:
            waiter.cancel()
        proc = self._procs.pop(ref.uid, None)
        if proc is not None:
            if proc.returncode is None:
                await self._terminate(ref, proc.pid, proc.wait)
            return
        pid = _read_int(ref.work / "pid")
        if pid is not None and _is_runner(pid, ref.work):  # re-attached: not our child, no waitpid
            await self._terminate(ref, pid, lambda: _wait_exit(pid))

    async def _terminate(self, ref: JobRef, pgid: int, wait: Callable[[], Awaitable[object]]) -> None:
        _signal_group(pgid, signal.SIGTERM)
        _signal_group(pgid, signal.SIGCONT)  # a stopped process acts on SIGTERM only once continued
        try:
            await asyncio.wait_for(wait(), self.kill_timeout_s)
        except TimeoutError:
            log.warning(
                "distillation %s: runner %d still alive %.1fs after SIGTERM; killing its process group",
                ref.name,
                pgid,
                self.kill_timeout_s,
            )
        # Whatever is left of the group (the leader, or children that ignored SIGTERM) goes now.
        _signal_group(pgid, signal.SIGKILL)
        try:
            await asyncio.wait_for(wait(), self.kill_timeout_s)
        except TimeoutError:
            log.error("distillation %s: runner %d survived SIGKILL (uninterruptible I/O?)", ref.name, pgid)

    async def close(self) -> None:
        """Forget the children without killing them (a restarted controller re-attaches)."""
        for t in self._waiters.values():
            t.cancel()
        await asyncio.gather(*self._waiters.values(), return_exceptions=True)
        self._waiters.clear()
        self._procs.clear()


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):  # the whole group is gone already
        os.killpg(pgid, sig)


async def _wait_exit(pid: int, poll_s: float = 0.05) -> None:
    """Until ``pid`` -- not our child, so no waitpid -- has exited: its pidfd turns readable then."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    except OSError:  # no pidfd (old kernel, seccomp): nothing to wait on but /proc itself
        while _alive(pid):  # noqa: ASYNC110 -- no event exists for a non-child's exit without a pidfd
            await asyncio.sleep(poll_s)
        return
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()

    def readable() -> None:
        if not done.done():
            done.set_result(None)

    loop.add_reader(fd, readable)
    try:
        await done
    finally:
        loop.remove_reader(fd)
        os.close(fd)


def _alive(pid: int) -> bool:
    """Running (a zombie has exited: it only waits for its parent to reap it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[:1] != ["Z"]


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


def job_name(ref: JobRef) -> str:
    """``distill-<job>-a<attempt>``: a DNS-1123 label of at most 63 characters.

    One name per attempt, so restarting never has to wait for the previous
    attempt's Job to be gone (a create with its name would be 409 meanwhile). A
    name too long is cut and given a hash of the uid, so two long job names
    sharing a prefix still get distinct Jobs.
    """
    suffix = f"-a{ref.attempt}"
    stem = re.sub(r"[^a-z0-9-]", "-", f"distill-{ref.name}".lower()).rstrip("-")
    room = 63 - len(suffix)
    if len(stem) > room:
        digest = hashlib.sha256(ref.uid.encode()).hexdigest()[:8]
        stem = f"{stem[: room - len(digest) - 1].rstrip('-')}-{digest}"
    return stem + suffix


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
    name = job_name(ref)
    meta = job.setdefault("metadata", {})
    meta.update(name=name, namespace=ref.namespace)
    labels = {
        **meta.get("labels", {}),
        "edgeloop.io/distillation-job": ref.name[:63],
        "edgeloop.io/job-uid": ref.uid[:63],
        "edgeloop.io/attempt": str(ref.attempt),
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
    """Runner as a ``batch/v1`` Job per attempt: its status says when it ended, result.json what came out.

    Jobs are found by name for the current attempt (``ref.attempt``) and by the
    ``edgeloop.io/job-uid`` label for clean-up, so every attempt's Job is reachable.
    """

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
        return job_name(ref)

    async def start(self, ref: JobRef) -> None:
        """Delete the earlier attempts' Jobs, then create this attempt's (409: already created, fine)."""
        from kubernetes.client.exceptions import ApiException

        body = render_job(self.template, ref, image=self.image, service_account=self.service_account)
        await self._delete_jobs(ref, keep=body["metadata"]["name"])
        try:
            create: Callable[..., Any] = self.batch.create_namespaced_job
            await asyncio.to_thread(create, ref.namespace, body, _preload_content=False)
        except ApiException as exc:
            if exc.status != 409:
                raise

    async def _delete_jobs(self, ref: JobRef, keep: str | None = None) -> list[str]:
        """Delete (Background: the pods follow) every Job of ``ref``'s uid but ``keep``; their names."""
        from kubernetes.client.exceptions import ApiException

        uid = ref.uid[:63]
        lst: Callable[..., Any] = self.batch.list_namespaced_job
        resp = await asyncio.to_thread(
            lst, ref.namespace, label_selector=f"edgeloop.io/job-uid={uid}", _preload_content=False
        )
        names = [
            str(j["metadata"]["name"])
            for j in json.loads(resp.data).get("items") or []
            if (j["metadata"].get("labels") or {}).get("edgeloop.io/job-uid") == uid
            and j["metadata"]["name"] != keep
            and not j["metadata"].get("deletionTimestamp")
        ]
        for name in names:
            try:
                await asyncio.to_thread(
                    self.batch.delete_namespaced_job, name, ref.namespace, propagation_policy="Background"
                )
            except ApiException as exc:
                if exc.status != 404:
                    raise
            log.info("distillation %s: deleted Job %s", ref.name, name)
        return names

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
        """Delete every attempt's Job. Best effort: the ownerReference garbage-collects them anyway."""
        try:
            await self._delete_jobs(ref)
        except Exception as exc:
            log.warning("distillation %s: could not delete its Jobs: %s", ref.name, exc)


# --------------------------------------------------------------------------- gate


@dataclass(frozen=True)
class GateVerdict:
    passed: bool
    reason: str
    message: str


def _num(x: float) -> str:
    return f"{round(x, 4):g}"


def _moved(delta: float) -> str:
    if delta > 0:
        return f"rose by {_num(delta)}"
    if delta < 0:
        return f"fell by {_num(-delta)}"
    return "did not change"


def _sense(higher: bool) -> str:
    return "higher is better" if higher else "lower is better"


def _worsening(key: str, higher: bool, before: dict[str, float], after: dict[str, float]) -> float:
    """How far ``key`` moved in its bad direction from ``before`` to ``after`` (negative: it improved)."""
    return before[key] - after[key] if higher else after[key] - before[key]


def _unmeasured_guards(
    guards: list[GateGuard], before: dict[str, float], after: dict[str, float]
) -> list[str]:
    """Why each guard with a missing metric cannot be checked (a parent counts only when there is one).

    Such a guard fails rather than being skipped: the operator asked for that bound, and a
    misspelt metric should show on the first run, not let every later version through.
    """
    missing = []
    for g in guards:
        k = f"fixed_{g.metric}"
        if k not in after:
            missing.append(f"guard metric {k} was not measured")
        elif before and k not in before:
            missing.append(f"guard metric {k} was not measured on the parent")
    return missing


def _compare_guards(
    guards: list[GateGuard], before: dict[str, float], after: dict[str, float]
) -> tuple[list[str], list[str]]:
    """(each guard regressed beyond its ``maxRegression``, each guard checked) as message parts."""
    failed, checked = [], []
    for g in guards:
        k = f"fixed_{g.metric}"
        higher = g.effective_direction == "higher"
        if _worsening(k, higher, before, after) > g.max_regression + 1e-9:
            failed.append(
                f"{k} {_moved(after[k] - before[k])}, more than the guard's maxRegression "
                f"{_num(g.max_regression)} ({_sense(higher)}; {_num(before[k])} -> {_num(after[k])})"
            )
        checked.append(
            f"{k} {_num(before[k])} -> {_num(after[k])} "
            f"({_sense(higher)}, maxRegression {_num(g.max_regression)})"
        )
    return failed, checked


def evaluate_gate(gate: Gate, before: dict[str, float], after: dict[str, float]) -> GateVerdict:
    """Pass unless the fixed set regressed by more than ``maxRegression`` or the new data gained less
    than ``minGain``, both counted in the metric's better direction (a gain in ``escalation_rate``
    is a fall), so one pair of positive thresholds means the same for every metric. Each guard then
    bounds one more metric's regression on the fixed set, so a version cannot buy its gain on the
    gate's metric with a worse one elsewhere (e.g. more of the old traffic escalated)."""
    m = gate.metric
    fk, nk = f"fixed_{m}", f"new_{m}"
    if fk not in after:
        return GateVerdict(False, "MetricMissing", f"{fk} was not measured")
    guards = gate.guards or []
    missing = _unmeasured_guards(guards, before, after)
    if missing:  # a configuration error: reported before any regression it might hide behind
        return GateVerdict(False, "MetricMissing", "; ".join(missing))
    higher = gate.effective_direction == "higher"
    sense = _sense(higher)
    good, bad = ("rise", "fall") if higher else ("fall", "rise")

    def detail(k: str) -> str:
        return f"({sense}; {_num(before[k])} -> {_num(after[k])})"

    max_reg = gate.max_regression or 0.0
    parts = []
    if fk in before:
        parts.append(f"{fk} {_num(before[fk])} -> {_num(after[fk])}")
        if _worsening(fk, higher, before, after) > max_reg + 1e-9:
            return GateVerdict(
                False,
                "Regression",
                f"{fk} {_moved(after[fk] - before[fk])}, more than maxRegression {_num(max_reg)} "
                f"{detail(fk)}",
            )
    # No parent: nothing to compare, as for the gate's own maxRegression.
    guards_failed, guards_checked = _compare_guards(guards, before, after) if before else ([], [])
    if guards_failed:
        return GateVerdict(False, "GuardRegression", "; ".join(guards_failed))
    if gate.min_gain is not None:
        if not after.get("new_n"):
            return GateVerdict(False, "NoNewData", f"no new examples to measure a gain of {gate.min_gain} on")
        if nk in before:
            parts.append(f"{nk} {_num(before[nk])} -> {_num(after[nk])}")
            g, need = -_worsening(nk, higher, before, after), gate.min_gain
            if g < need - 1e-9:
                moved = _moved(after[nk] - before[nk])
                if g > 0:
                    why = f"{nk} {moved}, less than minGain {_num(need)}"
                elif need >= 0:
                    why = f"{nk} {moved}; minGain {_num(need)} needs a {good} of at least {_num(need)}"
                else:
                    why = f"{nk} {moved}; minGain {_num(need)} allows a {bad} of at most {_num(-need)}"
                return GateVerdict(False, "InsufficientGain", f"{why} {detail(nk)}")
    if not before:
        unchecked = ", ".join(f"fixed_{g.metric} {_num(after[f'fixed_{g.metric}'])}" for g in guards)
        tail = f"; guards not compared (no parent): {unchecked}" if guards else ""
        return GateVerdict(True, "NoParent", f"first version: {fk} {_num(after[fk])}{tail}")
    tail = f"; guards: {', '.join(guards_checked)}" if guards_checked else ""
    return GateVerdict(True, "GatePassed", f"{'; '.join(parts)} ({sense}){tail}")


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

    # Jobs seen unfinished, by key: once deleted the informer hands us only the key,
    # and the work directory (hence the runner) is found through the uid.
    known: dict[str, JobRef] = {}

    def ref_of(obj: Obj) -> JobRef:
        meta = obj["metadata"]
        uid = meta.get("uid") or f"{meta.get('namespace', 'default')}-{meta['name']}"
        work = s.work_dir / uid
        attempt = _read_int(work / "attempts") or 1
        return JobRef(meta["name"], meta.get("namespace") or "default", uid, work, obj, attempt)

    async def stop_runner(key: str, ref: JobRef, why: str) -> None:
        """Stop the runner of a job that is going away; forgotten only once stopped (else retried)."""
        ref = dataclasses.replace(ref, attempt=_read_int(ref.work / "attempts") or 1)
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
            return None
        ref = ref_of(obj)
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
