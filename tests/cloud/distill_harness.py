"""The DistillationJob loop harness shared by the distillation tests: hard examples, a controller
with a local or cluster launcher, and waits on job stages (not tests; imported by them)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from cloud_controller.ingest.hard_examples import HardExampleStore
from cloud_controller.reconcilers.distillation.launchers import KubeJobLauncher, LocalJobLauncher
from cloud_controller.reconcilers.distillation.reconciler import (
    DistillationSettings,
    make_distillation_reconciler,
)
from cloud_controller.reconcilers.distillation.workdir import JobRef
from cloud_controller.releases.artifacts import ArtifactStore
from cloud_controller.releases.signing import generate_keys, load_private_key, load_public_key_file
from cloud_controller.resources.sqlite_store import SqliteResourceStore
from cloud_controller.resources.store_protocol import API_VERSION, Obj, ResourceStore
from cloud_controller.runtime.controller import Controller
from edge_agent.protocol import messages as wire

NS = "default"
L = TypeVar("L", LocalJobLauncher, KubeJobLauncher)
BASE = "snips?exclude=AddToPlaylist"
MODEL = "chat-snips"


def _has_snips() -> bool:
    from cloud_controller.datasets import DataRootError, data_root

    try:
        return (data_root() / "snips" / "train").is_dir()
    except DataRootError:
        return False


# The runner must get past its first steps (it loads SNIPS) to be caught running.
needs_snips = pytest.mark.skipif(not _has_snips(), reason="SNIPS not available under the data root")


# --------------------------------------------------------------------------- data


def hard_examples(node: str = "n1", n_new: int = 40, n_low: int = 8) -> list[wire.HardExample]:
    """Confident teacher answers on the held-back intent, then unsure (and wrong) ones to be filtered."""
    from cloud_controller.datasets.snips import load_snips

    held = [e for e in load_snips("train") if e.intent == "AddToPlaylist"][: n_new + n_low]
    out = []
    for i, e in enumerate(held):
        low = i >= n_new
        out.append(
            wire.HardExample(
                id=f"hx-{node}-{i}",
                node=node,
                created=1000.0 + i,
                task="chat",
                text=e.text,
                student={"intent": "PlayMusic", "confidence": 0.31, "slots": {}},
                teacher={
                    "intent": "RateBook" if low else e.intent,
                    "slots": {},
                    "tags": ["O"] * len(e.tokens) if low else list(e.tags),
                    "confidence": 0.4 if low else 0.97,
                    "version": "teacher-test",
                },
            )
        )
    return out



# --------------------------------------------------------------------------- harness


def job_obj(
    name: str,
    *,
    base: str = BASE,
    min_gain: float | None = 10.0,
    rollout: bool = True,
    metric: str = "intent_acc",
) -> Obj:
    spec: dict[str, Any] = {
        "task": "chat",
        "teacher": "labels",
        "studentArch": "bilstm-tagger",
        "epochs": 4,
        "data": {"base": base, "minTeacherConfidence": 0.9},
        "gate": {
            "metric": metric,
            "maxRegression": 15.0,
            **({"minGain": min_gain} if min_gain else {}),
        },
        "outputModel": MODEL,
    }
    if rollout:
        spec["rollout"] = {
            "auto": True,
            "template": {
                "selector": {"matchLabels": {"tier": "edge"}},
                "steps": [{"setWeight": 50}, {"setWeight": 100}],
            },
        }
    return {
        "apiVersion": API_VERSION,
        "kind": "DistillationJob",
        "metadata": {"name": name, "namespace": NS},
        "spec": spec,
    }


async def wait_job(store: ResourceStore, name: str, pred: Any, timeout: float = 120.0) -> Obj:
    """Wait on the store's watch (no polling) until the job's object satisfies ``pred``."""
    async with asyncio.timeout(timeout):
        while True:  # a watch may end (server timeout): list again and resume
            objs, rv = await store.list("DistillationJob", NS)
            for o in objs:
                if o["metadata"]["name"] == name and pred(o):
                    return o
            async for ev in store.watch("DistillationJob", NS, rv):
                if ev.object["metadata"]["name"] == name and pred(ev.object):
                    return ev.object


def stage_is(*stages: str) -> Any:
    return lambda o: (o.get("status") or {}).get("stage") in stages


class DistillLoop:
    """One DistillationJob controller on a SQLite store; restartable (a new launcher forgets its children)."""

    def __init__(self, tmp: Path, launcher_cls: type[LocalJobLauncher] = LocalJobLauncher) -> None:
        self.tmp = tmp
        self.launcher_cls = launcher_cls
        self.store = SqliteResourceStore(tmp / "resources.db", poll_interval=0.05)
        self.artifacts = ArtifactStore(tmp / "artifacts")
        keys = generate_keys(tmp / "keys")
        self.key = load_private_key(keys.private_path)
        self.pub = dict([load_public_key_file(keys.public_path)])
        self.hard = HardExampleStore(tmp / "hard.db")
        self.settings = DistillationSettings(
            work_dir=tmp / "work",
            artifacts=self.artifacts,
            signing_key=self.key,
            hard_examples=self.hard,
            runner_config="tiny",
            poll_s=0.2,
        )
        self.ctl: Controller | None = None
        self.launcher: LocalJobLauncher | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        def wake(ref: JobRef) -> None:
            if self.ctl is not None:
                self.ctl.queue.add(f"{ref.namespace}/{ref.name}")

        self.launcher = self.launcher_cls(on_exit=wake)
        rec = make_distillation_reconciler(self.store, self.settings, self.launcher)
        self.ctl = Controller(self.store, "DistillationJob", rec, namespace=NS)
        self._task = asyncio.create_task(self.ctl.run(), name="dj-controller")
        await self.ctl.wait_running()

    async def stop(self) -> None:
        if self.ctl is not None and self._task is not None:
            await self.ctl.stop(2.0)
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.launcher is not None:
            await self.launcher.close()
        self.ctl = self._task = None

    def kill_all(self) -> None:
        for pid_file in (self.tmp / "work").glob("*/pid"):
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid_file.read_text()), 9)


def signalling(base: type[L]) -> tuple[type[L], asyncio.Queue[JobRef], asyncio.Queue[JobRef]]:
    """A launcher class that reports every start and stop on a queue: tests wait on them, not on time."""
    started: asyncio.Queue[JobRef] = asyncio.Queue()
    stopped: asyncio.Queue[JobRef] = asyncio.Queue()

    class Signalling(base):  # type: ignore[valid-type,misc]
        async def start(self, ref: JobRef) -> None:
            await super().start(ref)
            started.put_nowait(ref)

        async def stop(self, ref: JobRef) -> None:
            await super().stop(ref)
            stopped.put_nowait(ref)

    return Signalling, started, stopped


@contextlib.asynccontextmanager
async def running_loop(
    tmp: Path, parent: Path, task: str, examples: list[wire.HardExample]
) -> AsyncIterator[DistillLoop]:
    """A started DistillLoop whose store already has ``parent`` released and ``examples`` received."""
    lp = DistillLoop(tmp)
    lp.artifacts.put_bundle(parent, lp.key, task=task)  # the release the job improves on
    lp.hard.add_many([(e, 2000.0) for e in examples])
    await lp.start()
    try:
        yield lp
    finally:
        await lp.stop()
        lp.kill_all()
        lp.hard.close()
        await lp.store.close()



def process_alive(pid: int) -> bool:
    """Running (not gone, not a zombie waiting for a parent that is not us)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


@dataclasses.dataclass
class KubeJobLoop:
    emu: Any
    api: Any
    store: ResourceStore
    artifacts: ArtifactStore
    batch: Any  # kubernetes.client.BatchV1Api
    launcher: KubeJobLauncher
    started: asyncio.Queue[JobRef]
    stopped: asyncio.Queue[JobRef]


@contextlib.asynccontextmanager
async def kube_job_loop(
    tmp: Path, name: str, *, service_account: str | None = None, max_restarts: int = 1
) -> AsyncIterator[KubeJobLoop]:
    """A DistillationJob controller with the cluster launcher on the emulator (batch/v1 Jobs added)."""
    from kubernetes import client

    from cloud_controller.resources.kube_store import KubeResourceStore
    from tests.cloud.kube_emulator import kube_emulator

    launcher_cls, started, stopped = signalling(KubeJobLauncher)
    async with kube_emulator() as (emu, api):
        _add_batch_jobs(emu)
        store = KubeResourceStore(api)
        artifacts = ArtifactStore(tmp / "artifacts")
        key = load_private_key(generate_keys(tmp / "keys").private_path)
        settings = DistillationSettings(
            work_dir=tmp / "work", artifacts=artifacts, signing_key=key, poll_s=0.1, max_restarts=max_restarts
        )
        kw = {"service_account": service_account} if service_account else {}
        launcher = launcher_cls(api, KubeJobLauncher.load_template(), **kw)
        ctl = Controller(
            store, "DistillationJob", make_distillation_reconciler(store, settings, launcher), namespace=NS
        )
        task = asyncio.create_task(ctl.run(), name=name)
        try:
            yield KubeJobLoop(emu, api, store, artifacts, client.BatchV1Api(api), launcher, started, stopped)
        finally:
            await ctl.stop(2.0)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await store.close()


def _add_batch_jobs(emu: Any) -> None:
    """The emulator serves only edgeloop kinds, leases and events: add batch/v1 Jobs (plain objects)."""
    import kmock

    emu.resources["batch/v1/jobs"] = kmock.ResourceInfo(
        kind="Job", namespaced=True, verbs={"get", "list", "watch", "create", "patch", "delete"}
    )


