"""Where a DistillationJob's runner runs: a local process, or a Kubernetes Job per attempt.

Both satisfy :class:`JobLauncher` (start, poll, stop) and start the same
entry point, ``python -m cloud_controller.distill_runner``, on the job's work
directory. Locally the runner is a process started in its own session (it
outlives a controller restart, which re-attaches through the pid file:
:class:`LocalJobLauncher`). On a cluster it is a ``batch/v1`` Job rendered from
``deploy/kubernetes/distillation/job-template.yaml`` (:class:`KubeJobLauncher`;
the work directory is then a shared volume mounted by the controller and, with
``subPath`` = uid, by the Job; or, with a shared store, no volume at all: the
directory travels through PostgreSQL, see ``render_job``). Each attempt gets its own Job name
(``distill-<job>-a<attempt>``): a restart never collides with the previous
attempt's Job, which may still be being deleted.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import hashlib
import json
import logging
import os
import re
import signal
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import yaml

from cloud_controller.reconcilers.distillation.workdir import JobRef, read_int, tail
from cloud_controller.resources.store_protocol import API_VERSION, Obj

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_TEMPLATE",
    "JobLauncher",
    "KubeJobLauncher",
    "LocalJobLauncher",
    "RunState",
    "job_name",
    "render_job",
]

RUNNER_MODULE = "cloud_controller.distill_runner"
DEFAULT_TEMPLATE = Path(__file__).resolve().parents[3] / "deploy/kubernetes/distillation/job-template.yaml"
POD_WORK_DIR = "/work"  # where the template mounts the job's work directory
# Cluster mode with a shared store: the Secret (and key) holding the store's DSN, given to the Job's pod.
STORE_SECRET, STORE_SECRET_KEY = "edgeloop-store", "dsn"


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
                "failed", f"runner exited with code {proc.returncode}: {tail(ref.work / 'runner.log')}"
            )
        pid = read_int(ref.work / "pid")
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
        pid = read_int(ref.work / "pid")
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


def _is_runner(pid: int, work: Path) -> bool:
    """Whether ``pid`` is alive AND is our runner for ``work`` (pids are reused; zombies have no cmdline)."""
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return RUNNER_MODULE.encode() in cmd and str(work).encode() in cmd


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
    template: Obj,
    ref: JobRef,
    *,
    image: str | None = None,
    service_account: str | None = None,
    exchange: bool = False,
) -> Obj:
    """The batch/v1 Job for ``ref``: the template with name, owner, labels and work sub-path filled in.

    Structured edits, not text substitution: a job name can never inject YAML.
    The work volume is mounted with ``subPath`` = the job uid, so one shared
    claim serves every job and a job sees only its own directory. With
    ``exchange`` (the controller has a shared store) no claim is needed at all:
    the work volume becomes an ``emptyDir``, the runner gets the store's DSN
    from the ``edgeloop-store`` Secret and mirrors the directory through the
    store (:mod:`cloud_controller.distill_runner.exchange`).
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
    work_mounts = [m for m in container.get("volumeMounts", []) if m.get("mountPath") == POD_WORK_DIR]
    if not exchange:
        for m in work_mounts:
            m["subPath"] = ref.uid
        return job
    container["args"] += ["--exchange-uid", ref.uid]
    for m in work_mounts:
        m.pop("subPath", None)
        for vol in pspec.get("volumes", []):
            if vol.get("name") == m.get("name"):
                vol.pop("persistentVolumeClaim", None)
                vol["emptyDir"] = {"sizeLimit": "2Gi"}
    env = [e for e in container.get("env") or [] if e.get("name") != "EDGELOOP_STORE_DSN"]
    env.append({"name": "EDGELOOP_STORE_DSN",
                "valueFrom": {"secretKeyRef": {"name": STORE_SECRET, "key": STORE_SECRET_KEY}}})
    container["env"] = env
    return job


class KubeJobLauncher:
    """Runner as a ``batch/v1`` Job per attempt: its status says when it ended, result.json what came out.

    Jobs are found by name for the current attempt (``ref.attempt``) and by the
    ``edgeloop.io/job-uid`` label for clean-up, so every attempt's Job is reachable.
    """

    def __init__(
        self,
        api_client: Any,
        template: Obj,
        *,
        image: str | None = None,
        service_account: str | None = None,
        exchange: bool = False,
    ) -> None:
        from kubernetes import client

        self.batch = client.BatchV1Api(api_client)
        self.template = template
        self.image = image
        self.service_account = service_account
        self.exchange = exchange

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

        body = render_job(self.template, ref, image=self.image, service_account=self.service_account,
                          exchange=self.exchange)
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
