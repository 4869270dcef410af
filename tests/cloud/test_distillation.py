"""The DistillationJob loop: hard examples over a real broker, the runner as a real process, the gate,
signing into a real artifact store, restart re-attachment, and the cluster path against the kmock emulator.

The parent student (version 1) is trained once per module by the runner itself on SNIPS without
the AddToPlaylist intent (the "held-back part"); hard examples are AddToPlaylist utterances labelled
by a confident teacher (their gold labels), plus low-confidence ones with wrong labels that the
job's threshold must drop. One turn of the loop must then raise accuracy on the new traffic.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import re
import shutil
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from cloud_controller.ingest.hard_examples import HardExampleStore, handle_hard_examples
from cloud_controller.reconcilers.distillation.reconciler import (
    DEFAULT_TEMPLATE,
    DistillationSettings,
    JobRef,
    KubeJobLauncher,
    LocalJobLauncher,
    evaluate_gate,
    job_name,
    make_distillation_reconciler,
    render_job,
)
from cloud_controller.releases.artifacts import ArtifactStore
from cloud_controller.releases.signing import generate_keys, load_private_key, load_public_key_file
from cloud_controller.resources.kinds import DistillationJob, Gate, GateGuard
from cloud_controller.resources.schema import SchemaInvalid, load_schemas
from cloud_controller.resources.sqlite_store import SqliteResourceStore
from cloud_controller.resources.store_protocol import API_VERSION, NotFound, Obj, ResourceStore
from cloud_controller.runtime.controller import Controller
from edge_agent.config import MqttConfig
from edge_agent.protocol import messages as wire
from edge_agent.protocol import topics
from edge_agent.protocol.manifest import verify_manifest
from edge_agent.transport.mqtt import MqttClient

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


@pytest.fixture(scope="module")
def parent_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Student version 1, trained by the runner (in-process) without the held-back intent."""
    pytest.importorskip("torch")
    from cloud_controller.distill_runner.chat_job import Progress, RunnerSpec, run

    out = tmp_path_factory.mktemp("parent")
    spec = RunnerSpec(
        job="parent", task="chat", base=BASE, config="tiny", output_model=MODEL, version="1", epochs=4
    )
    os.environ.setdefault("TQDM_DISABLE", "1")
    result = run(spec, out, Progress(out / "progress.jsonl"))
    return out / result["bundle"]


# --------------------------------------------------------------------------- (a) store + ingest hook


async def test_hard_example_store_and_ingest_hook_over_a_real_broker(
    tmp_path: Path, mqtt_cfg: MqttConfig
) -> None:
    store = HardExampleStore(tmp_path / "hard.db")
    sub = MqttClient(
        mqtt_cfg, "hx-ingest", subscriptions=[(topics.all_nodes("hard-examples"), 1)], name="sub"
    )
    pub = MqttClient(mqtt_cfg, "hx-node", clean_start=True, name="pub")
    await sub.start()
    await pub.start()
    try:
        await sub.wait_connected(5)  # connected = subscribed
        await pub.wait_connected(5)
        exs = hard_examples("n1", n_new=3, n_low=2)
        payloads = [(topics.hard_examples("n1"), wire.dumps(e)) for e in exs]
        payloads.append((topics.hard_examples("n1"), wire.dumps(exs[0])))  # QoS 1 redelivery
        payloads.append((topics.hard_examples("n2"), wire.dumps(exs[1])))  # another node's name
        payloads.append((topics.hard_examples("n1"), b"{not json"))
        for topic, payload in payloads:
            await pub.publish(topic, payload, qos=1, timeout=5)
        msgs = [await sub.receive(timeout=5) for _ in payloads]
        res = handle_hard_examples(store, msgs, received=5000.0)
        assert (res.accepted, res.duplicates) == (5, 1)
        assert res.rejected == {"node_mismatch": 1, "malformed_json": 1}
        again = handle_hard_examples(store, msgs[:2], received=6000.0)  # a whole burst redelivered
        assert (again.accepted, again.duplicates) == (0, 2)
    finally:
        await pub.stop()
        await sub.stop()

    assert store.count("chat") == 5
    assert [h.id for h in store.since(None, "chat", 0.9)] == ["hx-n1-0", "hx-n1-1", "hx-n1-2"]
    assert len(store.since(None, "chat")) == 5
    assert store.since(5000.5, "chat") == []
    assert [h.id for h in store.since(None, "chat", limit=2)] == [
        "hx-n1-3",
        "hx-n1-4",
    ]  # newest, oldest first
    h = store.since(None, "chat", 0.9)[0]
    assert h.label == "AddToPlaylist" and h.confidence == 0.97 and h.node == "n1" and h.received == 5000.0
    assert h.teacher is not None and h.teacher["tags"] and h.student["intent"] == "PlayMusic"
    counts = store.counts()
    assert counts["by_task"] == {"chat": 5} and counts["duplicates"] == {"n1": 3}
    store.close()


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


class Loop:
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
) -> AsyncIterator[Loop]:
    """A started Loop whose store already has ``parent`` released and ``examples`` received."""
    lp = Loop(tmp)
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


@pytest.fixture
async def loop(tmp_path: Path, parent_bundle: Path) -> AsyncIterator[Loop]:
    async with running_loop(tmp_path, parent_bundle, "chat", hard_examples()) as lp:
        yield lp


# --------------------------------------------------------------------------- (b) (c) (d) (e) local runs


@pytest.mark.slow
@pytest.mark.train
async def test_job_runs_through_stages_and_releases_a_signed_model_with_rollout(loop: Loop) -> None:
    await loop.store.create(job_obj("dj-pass"))
    obj = await wait_job(loop.store, "dj-pass", stage_is("Succeeded", "Rejected", "Failed"))
    st = obj["status"]
    assert st["stage"] == "Succeeded", st.get("message")
    assert st["observedGeneration"] == 1 and st["progress"] == 1.0
    times = st["stageTimes"]
    order = ["Pending", "Collecting", "Training", "Evaluating", "Succeeded"]
    assert all(k in times for k in order) and [times[k] for k in order] == sorted(times[k] for k in order)
    before, after = st["metricsBefore"], st["metricsAfter"]
    assert after["new_n"] >= 4 and after["new_intent_acc"] >= before["new_intent_acc"] + 10
    assert after["new_escalation_rate"] <= before["new_escalation_rate"]
    assert st["producedVersion"] == "2" and st["producedModel"] == "chat-snips-2"
    # Only the confident teacher answers were trained on.
    work = next((loop.tmp / "work").iterdir())
    assert len((work / "hard_examples.jsonl").read_text().splitlines()) == 40
    # Training reports per epoch, not only at its start and end.
    lines = [json.loads(x) for x in (work / "progress.jsonl").read_text().splitlines()]
    training = [x for x in lines if x["stage"] == "Training"]
    assert sum("epoch" in x["message"] for x in training) >= 4  # epochs=4 in the job
    assert [x["progress"] for x in lines] == sorted(x["progress"] for x in lines)
    # The EdgeModel pins a real, signed release.
    model = await loop.store.get("EdgeModel", NS, "chat-snips-2")
    rel = loop.artifacts.get(MODEL, "2")
    spec = model["spec"]
    assert spec["digest"] == rel.digest and spec["sizeBytes"] == rel.size and spec["parentVersion"] == "1"
    assert (
        spec["producedBy"] == "dj-pass"
        and spec["keyId"] in loop.pub
        and spec["signature"] == rel.parsed["signature"]
    )
    verify_manifest(rel.manifest, loop.pub, spec["digest"])
    assert b"".join(loop.artifacts.iter_chunks(rel))  # every blob is there
    ro = await loop.store.get("ModelRollout", NS, st["rolloutName"])
    assert ro["spec"]["model"] == MODEL and ro["spec"]["version"] == "2"
    assert [s["setWeight"] for s in ro["spec"]["steps"]] == [50, 100]


@pytest.mark.slow
@pytest.mark.train
async def test_gate_failure_is_rejected_with_metrics(loop: Loop) -> None:
    # Gate on a gain no run can reach: the escalation rate is a share (lower is better), it cannot fall
    # by 1.5. (min_gain=100 on intent_acc can pass: the parent scores 0 on the held-back intent.)
    await loop.store.create(job_obj("dj-reject", min_gain=1.5, metric="escalation_rate"))
    obj = await wait_job(loop.store, "dj-reject", stage_is("Succeeded", "Rejected", "Failed"))
    st = obj["status"]
    assert st["stage"] == "Rejected" and st["message"].startswith("InsufficientGain"), st["message"]
    assert "minGain 1.5" in st["message"] and "(lower is better;" in st["message"]
    assert st["metricsAfter"]["fixed_intent_acc"] > 0 and "new_escalation_rate" in st["metricsBefore"]
    assert "Rejected" in st["stageTimes"] and "producedVersion" not in st
    with pytest.raises(NotFound):
        await loop.store.get("EdgeModel", NS, "chat-snips-2")


async def test_runner_that_crashes_ends_failed(tmp_path: Path) -> None:
    lp = Loop(tmp_path)
    await lp.start()
    try:
        await lp.store.create(job_obj("dj-crash", base="nosuchdata"))
        obj = await wait_job(lp.store, "dj-crash", stage_is("Succeeded", "Rejected", "Failed"), timeout=60)
        st = obj["status"]
        assert st["stage"] == "Failed" and "unknown base data set" in st["message"]
        assert "Pending" in st["stageTimes"] and "Failed" in st["stageTimes"]
    finally:
        await lp.stop()
        lp.kill_all()
        await lp.store.close()


@pytest.mark.slow
@pytest.mark.train
async def test_controller_restart_reattaches_to_the_running_job(loop: Loop) -> None:
    await loop.store.create(job_obj("dj-restart", rollout=False))
    await wait_job(loop.store, "dj-restart", stage_is("Collecting", "Training"), timeout=60)
    await loop.stop()  # the runner lives on in its own session
    work = next((loop.tmp / "work").iterdir())
    pid = int((work / "pid").read_text())
    await loop.start()
    obj = await wait_job(loop.store, "dj-restart", stage_is("Succeeded", "Rejected", "Failed"))
    assert obj["status"]["stage"] == "Succeeded", obj["status"].get("message")
    assert (work / "attempts").read_text() == "1" and int((work / "pid").read_text()) == pid  # not restarted
    assert obj["status"].get("rolloutName") is None


@pytest.mark.slow
@pytest.mark.train
async def test_runner_killed_while_controller_is_down_is_restarted(loop: Loop) -> None:
    await loop.store.create(job_obj("dj-kill", rollout=False, min_gain=None))
    await wait_job(loop.store, "dj-kill", stage_is("Collecting", "Training"), timeout=60)
    await loop.stop()
    loop.kill_all()  # kill -9 with nobody watching: no result, no exit code
    await loop.start()
    obj = await wait_job(loop.store, "dj-kill", stage_is("Succeeded", "Rejected", "Failed"))
    work = next((loop.tmp / "work").iterdir())
    assert obj["status"]["stage"] == "Succeeded" and (work / "attempts").read_text() == "2"


# --------------------------------------------------------------------------- deletion stops the runner


def _alive(pid: int) -> bool:
    """Running (not gone, not a zombie waiting for a parent that is not us)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


@needs_snips
async def test_deleting_a_job_stops_its_local_runner(tmp_path: Path) -> None:
    SignallingLauncher, started, stopped = signalling(LocalJobLauncher)

    lp = Loop(tmp_path, SignallingLauncher)
    await lp.start()
    try:
        await lp.store.create(job_obj("dj-del"))  # a real training run: tens of seconds, never finished here
        ref = await asyncio.wait_for(started.get(), 30)
        await wait_job(lp.store, "dj-del", stage_is("Collecting", "Training"), timeout=60)
        pid = int((ref.work / "pid").read_text())
        assert _alive(pid)
        await lp.store.delete("DistillationJob", NS, "dj-del")
        assert (await asyncio.wait_for(stopped.get(), 15)).uid == ref.uid
        assert not _alive(pid)
        with pytest.raises(ProcessLookupError):  # reaped, and nothing left in its process group
            os.killpg(pid, 0)
        assert not (ref.work / "result.json").exists() and (ref.work / "attempts").read_text() == "1"
        assert started.empty()  # not restarted
    finally:
        await lp.stop()
        lp.kill_all()
        lp.hard.close()
        await lp.store.close()


# Makes the runner ignore SIGTERM and start a grandchild (which inherits that) in its process group,
# then reports the grandchild's pid through a FIFO the test waits on.
SITECUSTOMIZE = """
import os, signal, subprocess
fifo = os.environ.pop("EDGELOOP_TEST_FIFO", None)
if fifo:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    child = subprocess.Popen(["sleep", "600"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    with open(fifo, "w") as f:
        f.write(str(child.pid))
"""


async def _exited(pid: int, timeout: float) -> None:
    """Wait (on its pidfd: readable once it exits) for a process that is not our child to end."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    loop = asyncio.get_running_loop()
    done = asyncio.Event()
    loop.add_reader(fd, done.set)
    try:
        async with asyncio.timeout(timeout):
            await done.wait()
    finally:
        loop.remove_reader(fd)
        os.close(fd)
    assert not _alive(pid)


async def _read_fifo(path: Path, timeout: float) -> str:
    """What one writer puts into the FIFO at ``path``, waiting on readability (no polling)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    loop = asyncio.get_running_loop()
    data = b""
    eof = asyncio.Event()

    def readable() -> None:
        nonlocal data
        chunk = os.read(fd, 4096)
        data += chunk
        if not chunk:
            eof.set()

    loop.add_reader(fd, readable)
    try:
        async with asyncio.timeout(timeout):
            await eof.wait()
    finally:
        loop.remove_reader(fd)
        os.close(fd)
    return data.decode()


@needs_snips
async def test_local_stop_kills_the_process_group_after_sigterm_timeout(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from cloud_controller.distill_runner.chat_job import RunnerSpec

    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    fifo = tmp_path / "grandchild.fifo"
    os.mkfifo(fifo)
    work = tmp_path / "work" / "u-stop"
    work.mkdir(parents=True)
    spec = RunnerSpec(job="stop", task="chat", base=BASE, config="tiny", output_model=MODEL, version="1")
    (work / "spec.json").write_text(spec.model_dump_json())
    ref = JobRef("stop", NS, "u-stop", work)
    path = os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH")) if p)
    first = LocalJobLauncher(env={"PYTHONPATH": path, "EDGELOOP_TEST_FIFO": str(fifo)}, kill_timeout_s=0.5)
    await first.start(ref)
    reader = asyncio.create_task(_read_fifo(fifo, 30))
    try:
        grandchild = int(await reader)
    finally:
        if not reader.done():
            reader.cancel()
    pid = int((work / "pid").read_text())
    os.kill(pid, signal.SIGSTOP)  # it cannot finish (or fail) on its own now; stop must still end it
    # A restarted controller: the runner is re-attached through its pid file, not a child handle.
    await first.close()
    second = LocalJobLauncher(kill_timeout_s=0.5)
    assert (await second.poll(ref)).kind == "running"
    assert _alive(pid) and _alive(grandchild)
    with caplog.at_level("WARNING", logger="cloud_controller.reconcilers.distillation.reconciler"):
        async with asyncio.timeout(15):
            await second.stop(ref)
    assert "after SIGTERM; killing its process group" in caplog.text
    assert not _alive(pid)  # the leader is waited for; the rest of its group was sent SIGKILL
    await _exited(grandchild, timeout=5)
    assert (await second.poll(ref)).kind == "missing"
    await second.stop(ref)  # idempotent: nothing left to signal


# --------------------------------------------------------------------------- gate and template


def test_gate_rules() -> None:
    before = {"fixed_intent_acc": 90.0, "new_intent_acc": 10.0, "new_n": 20.0}
    ok = {"fixed_intent_acc": 89.6, "new_intent_acc": 60.0, "new_n": 20.0}
    assert evaluate_gate(Gate(max_regression=0.5, min_gain=20), before, ok).passed
    assert evaluate_gate(Gate(max_regression=0.1), before, ok).reason == "Regression"
    assert evaluate_gate(Gate(max_regression=1, min_gain=60), before, ok).reason == "InsufficientGain"
    assert evaluate_gate(Gate(min_gain=1), {}, {"fixed_intent_acc": 80.0, "new_n": 0.0}).reason == "NoNewData"
    assert evaluate_gate(Gate(), {}, {"fixed_intent_acc": 80.0}).reason == "NoParent"
    assert evaluate_gate(Gate(metric="slot_f1"), before, ok).reason == "MetricMissing"


ESC_BEFORE = {"fixed_escalation_rate": 0.10, "new_escalation_rate": 0.30, "new_n": 20.0}


def test_gate_lower_is_better_counts_a_fall_as_gain() -> None:
    gate = Gate(metric="escalation_rate", max_regression=0.01, min_gain=0.1)
    assert gate.effective_direction == "lower"
    better = {"fixed_escalation_rate": 0.08, "new_escalation_rate": 0.18, "new_n": 20.0}
    v = evaluate_gate(gate, ESC_BEFORE, better)
    assert v.passed and v.reason == "GatePassed", v
    assert v.message.endswith("(lower is better)")
    # A fixed-set fall is an improvement, not a regression (the old rule rejected it with maxRegression 0).
    assert evaluate_gate(Gate(metric="escalation_rate"), ESC_BEFORE, better).passed

    v = evaluate_gate(gate, ESC_BEFORE, {**better, "fixed_escalation_rate": 0.13})
    assert (v.passed, v.reason) == (False, "Regression")
    assert v.message == (
        "fixed_escalation_rate rose by 0.03, more than maxRegression 0.01 (lower is better; 0.1 -> 0.13)"
    )

    v = evaluate_gate(Gate(metric="escalation_rate", min_gain=0.2), ESC_BEFORE, better)
    assert (v.passed, v.reason) == (False, "InsufficientGain")
    assert (
        v.message == "new_escalation_rate fell by 0.12, less than minGain 0.2 (lower is better; 0.3 -> 0.18)"
    )

    worse = {**better, "new_escalation_rate": 0.35}  # the old rule counted this rise as a gain of 0.05
    v = evaluate_gate(Gate(metric="escalation_rate", min_gain=0.01), ESC_BEFORE, worse)
    assert (v.passed, v.reason) == (False, "InsufficientGain")
    assert v.message.startswith(
        "new_escalation_rate rose by 0.05; minGain 0.01 needs a fall of at least 0.01"
    )
    # A negative minGain is an allowance in the bad direction.
    assert evaluate_gate(Gate(metric="escalation_rate", min_gain=-0.1), ESC_BEFORE, worse).passed
    v = evaluate_gate(Gate(metric="escalation_rate", min_gain=-0.01), ESC_BEFORE, worse)
    assert "minGain -0.01 allows a rise of at most 0.01" in v.message


def test_gate_higher_is_better_messages() -> None:
    before = {"fixed_intent_acc": 90.0, "new_intent_acc": 10.0, "new_n": 20.0}
    after = {"fixed_intent_acc": 89.6, "new_intent_acc": 60.0, "new_n": 20.0}
    v = evaluate_gate(Gate(max_regression=0.1), before, after)
    assert (
        v.message
        == "fixed_intent_acc fell by 0.4, more than maxRegression 0.1 (higher is better; 90 -> 89.6)"
    )
    v = evaluate_gate(Gate(max_regression=1, min_gain=60), before, after)
    assert v.message == "new_intent_acc rose by 50, less than minGain 60 (higher is better; 10 -> 60)"
    v = evaluate_gate(Gate(max_regression=1, min_gain=1), before, {**after, "new_intent_acc": 5.0})
    assert v.message.startswith("new_intent_acc fell by 5; minGain 1 needs a rise of at least 1")
    v = evaluate_gate(Gate(max_regression=1, min_gain=20), before, after)
    assert v.passed and v.message == (
        "fixed_intent_acc 90 -> 89.6; new_intent_acc 10 -> 60 (higher is better)"
    )


@pytest.mark.parametrize(
    ("metric", "direction"),
    [
        ("escalation_rate", "lower"),
        ("far", "lower"),
        ("mar", "lower"),
        ("sensor_far", "lower"),
        ("anomaly_mar", "lower"),
        ("error_rate", "lower"),
        ("slot_error_rate", "lower"),
        ("loss", "lower"),
        ("val_loss", "lower"),
        ("intent_acc", "higher"),
        ("slot_f1", "higher"),
        ("grammar", "higher"),  # ends in "mar", but not as a word
        ("sofar", "higher"),
        ("far_recall", "higher"),
    ],
)
def test_gate_direction_is_inferred_from_the_metric_name(metric: str, direction: str) -> None:
    assert Gate(metric=metric).effective_direction == direction


def test_gate_direction_explicit_overrides_the_name() -> None:
    before = {"fixed_far": 5.0, "new_far": 5.0, "new_n": 10.0}
    up = {"fixed_far": 5.0, "new_far": 8.0, "new_n": 10.0}
    assert not evaluate_gate(Gate(metric="far", min_gain=2), before, up).passed  # inferred: lower
    v = evaluate_gate(Gate(metric="far", direction="higher", min_gain=2), before, up)
    assert v.passed and "(higher is better)" in v.message
    acc_before = {"fixed_intent_acc": 90.0}
    acc_down = {"fixed_intent_acc": 80.0}
    assert evaluate_gate(Gate(direction="lower"), acc_before, acc_down).passed
    assert evaluate_gate(Gate(), acc_before, acc_down).reason == "Regression"
    # The wire form (camelCase, as in the CRD) parses, and an unset direction stays unset.
    wire = DistillationJob.from_obj(job_obj("x", metric="far")).spec.gate
    assert wire.direction is None and wire.effective_direction == "lower"
    obj = job_obj("x", metric="far")
    obj["spec"]["gate"]["direction"] = "higher"
    assert DistillationJob.from_obj(obj).spec.gate.effective_direction == "higher"


def test_gate_direction_and_student_arch_against_the_crd_schema() -> None:
    schemas = load_schemas(Path(__file__).resolve().parents[2] / "crds")
    for direction in ("higher", "lower"):
        obj = job_obj("dj-dir", metric="escalation_rate")
        obj["spec"]["gate"]["direction"] = direction
        schemas.apply_defaults(obj)
        schemas.validate(obj)
        assert DistillationJob.from_obj(obj).to_obj()["spec"]["gate"]["direction"] == direction
    obj = job_obj("dj-dir")
    schemas.apply_defaults(obj)
    assert "direction" not in obj["spec"]["gate"]  # no schema default: unset means "infer"
    bad = job_obj("dj-dir")
    bad["spec"]["gate"]["direction"] = "down"
    with pytest.raises(SchemaInvalid) as info:
        schemas.validate(bad)
    assert "spec.gate.direction" in {p for p, _ in info.value.problems}

    # The sensor student is a plain MLP classifier; the older names still validate.
    for arch in ("mlp", "mlp-autoencoder", "bilstm-tagger"):
        obj = job_obj("dj-arch")
        obj["spec"].update(task="sensor", studentArch=arch)
        schemas.validate(obj)
        assert DistillationJob.from_obj(obj).spec.student_arch == arch
    obj["spec"]["studentArch"] = "transformer"
    with pytest.raises(SchemaInvalid) as info:
        schemas.validate(obj)
    assert "spec.studentArch" in {p for p, _ in info.value.problems}


# The real chat v2: intent_acc up, but more of the old traffic escalated (fixed_escalation_rate rose).
CHAT_BEFORE = {
    "fixed_intent_acc": 96.98,
    "fixed_escalation_rate": 0.268,
    "new_intent_acc": 13.48,
    "new_escalation_rate": 1.0,
    "new_n": 89.0,
}
CHAT_AFTER = {
    "fixed_intent_acc": 96.37,
    "fixed_escalation_rate": 0.309,
    "new_intent_acc": 97.75,
    "new_escalation_rate": 0.438,
    "new_n": 89.0,
}


def _guarded(*guards: GateGuard, **gate: Any) -> Gate:
    return Gate(max_regression=1.0, min_gain=1.0, guards=list(guards), **gate)


def test_gate_guard_passes_and_lists_the_guards_checked() -> None:
    gate = _guarded(GateGuard(metric="escalation_rate", max_regression=0.06))
    v = evaluate_gate(gate, CHAT_BEFORE, CHAT_AFTER)
    assert (v.passed, v.reason) == (True, "GatePassed"), v
    assert v.message == (
        "fixed_intent_acc 96.98 -> 96.37; new_intent_acc 13.48 -> 97.75 (higher is better); "
        "guards: fixed_escalation_rate 0.268 -> 0.309 (lower is better, maxRegression 0.06)"
    )
    # Without guards the message is what it always was.
    assert evaluate_gate(_guarded(), CHAT_BEFORE, CHAT_AFTER).message.endswith("(higher is better)")
    # An improvement is never a guard regression, even with maxRegression 0.
    better = {**CHAT_AFTER, "fixed_escalation_rate": 0.2}
    assert evaluate_gate(
        _guarded(GateGuard(metric="escalation_rate", max_regression=0)), CHAT_BEFORE, better
    ).passed


def test_gate_guard_regression_rejects_on_the_fixed_set_only() -> None:
    gate = _guarded(GateGuard(metric="escalation_rate", max_regression=0.02))
    v = evaluate_gate(gate, CHAT_BEFORE, CHAT_AFTER)
    assert (v.passed, v.reason) == (False, "GuardRegression")
    assert v.message == (
        "fixed_escalation_rate rose by 0.041, more than the guard's maxRegression 0.02 "
        "(lower is better; 0.268 -> 0.309)"
    )
    # Every guard that failed is named; those that held are not.
    v = evaluate_gate(
        _guarded(
            GateGuard(metric="escalation_rate", max_regression=0.02),
            GateGuard(metric="slot_f1", max_regression=1.0),
            GateGuard(metric="intent_acc", max_regression=0.1),
        ),
        {**CHAT_BEFORE, "fixed_slot_f1": 90.0},
        {**CHAT_AFTER, "fixed_slot_f1": 89.5},
    )
    assert v.reason == "GuardRegression" and v.message.count("more than the guard's") == 2
    assert "fixed_intent_acc fell by 0.61, more than the guard's maxRegression 0.1" in v.message
    assert "slot_f1" not in v.message
    # The new set is not guarded: its escalation rate may rise as it likes.
    worse_new = {**CHAT_AFTER, "fixed_escalation_rate": 0.268, "new_escalation_rate": 1.0}
    assert evaluate_gate(gate, {**CHAT_BEFORE, "new_escalation_rate": 0.2}, worse_new).passed
    # The gate's own regression is reported first, as before.
    v = evaluate_gate(Gate(max_regression=0.1, guards=gate.guards), CHAT_BEFORE, CHAT_AFTER)
    assert v.reason == "Regression"


def test_gate_guard_metric_missing() -> None:
    gate = _guarded(GateGuard(metric="slot_f1", max_regression=1))
    v = evaluate_gate(gate, CHAT_BEFORE, CHAT_AFTER)
    assert (v.passed, v.reason, v.message) == (
        False,
        "MetricMissing",
        "guard metric fixed_slot_f1 was not measured",
    )
    # Measured on the new version but not on the parent: the bound cannot be checked either.
    v = evaluate_gate(gate, CHAT_BEFORE, {**CHAT_AFTER, "fixed_slot_f1": 90.0})
    assert (v.reason, v.message) == (
        "MetricMissing",
        "guard metric fixed_slot_f1 was not measured on the parent",
    )
    # A misspelt guard shows on the first version already, before any regression it could hide behind.
    assert evaluate_gate(gate, {}, CHAT_AFTER).reason == "MetricMissing"
    guards = [
        GateGuard(metric="slot_f1", max_regression=1),
        GateGuard(metric="escalation_rate", max_regression=0),
    ]
    assert (
        evaluate_gate(Gate(max_regression=0, guards=guards), CHAT_BEFORE, CHAT_AFTER).reason
        == "MetricMissing"
    )


def test_gate_guards_are_not_compared_without_a_parent() -> None:
    v = evaluate_gate(Gate(guards=[GateGuard(metric="escalation_rate", max_regression=0)]), {}, CHAT_AFTER)
    assert (v.passed, v.reason) == (True, "NoParent")
    assert v.message == (
        "first version: fixed_intent_acc 96.37; guards not compared (no parent): fixed_escalation_rate 0.309"
    )


def test_gate_guard_direction_inferred_and_overridden() -> None:
    assert GateGuard(metric="escalation_rate", max_regression=0).effective_direction == "lower"
    assert GateGuard(metric="sensor_far", max_regression=0).effective_direction == "lower"
    assert GateGuard(metric="slot_f1", max_regression=0).effective_direction == "higher"
    assert GateGuard(metric="far", direction="higher", max_regression=0).effective_direction == "higher"
    before = {"fixed_intent_acc": 90.0, "fixed_far": 2.0, "fixed_slot_f1": 80.0}
    far_up = {**before, "fixed_far": 3.0}
    # far is inferred lower-is-better: a rise of 1 is a regression ...
    v = evaluate_gate(Gate(guards=[GateGuard(metric="far", max_regression=0.5)]), before, far_up)
    assert v.reason == "GuardRegression" and "(lower is better; 2 -> 3)" in v.message
    # ... unless the guard says higher is better; then a fall is one.
    up = Gate(guards=[GateGuard(metric="far", direction="higher", max_regression=0.5)])
    v = evaluate_gate(up, before, far_up)
    assert v.passed and "fixed_far 2 -> 3 (higher is better, maxRegression 0.5)" in v.message
    v = evaluate_gate(up, before, {**before, "fixed_far": 1.0})
    assert v.reason == "GuardRegression" and v.message.startswith("fixed_far fell by 1, more than")
    # A guard's direction is its own, not the gate's: the gate on intent_acc stays higher-is-better.
    v = evaluate_gate(
        Gate(direction="lower", guards=[GateGuard(metric="slot_f1", max_regression=1)]),
        before,
        {**before, "fixed_slot_f1": 78.0},
    )
    assert v.reason == "GuardRegression" and "(higher is better; 80 -> 78)" in v.message


def test_gate_guards_against_the_crd_schema() -> None:
    schemas = load_schemas(Path(__file__).resolve().parents[2] / "crds")
    obj = job_obj("dj-guards")
    obj["spec"]["gate"]["guards"] = [
        {"metric": "escalation_rate", "maxRegression": 0.06},
        {"metric": "far", "maxRegression": 0, "direction": "higher"},
    ]
    schemas.apply_defaults(obj)
    schemas.validate(obj)
    assert "direction" not in obj["spec"]["gate"]["guards"][0]  # no schema default: unset means "infer"
    gate = DistillationJob.from_obj(obj).spec.gate
    assert gate.guards is not None and [g.effective_direction for g in gate.guards] == ["lower", "higher"]
    assert gate.guards[0].max_regression == 0.06
    again = DistillationJob.from_obj(obj).to_obj()
    schemas.validate(again)
    assert again["spec"]["gate"] == obj["spec"]["gate"]
    # A job without guards dumps back without them (not as an empty list).
    plain = job_obj("dj-plain")
    assert "guards" not in DistillationJob.from_obj(plain).to_obj()["spec"]["gate"]

    def refused(guards: Any) -> set[str]:
        bad = job_obj("dj-bad")
        bad["spec"]["gate"]["guards"] = guards
        with pytest.raises(SchemaInvalid) as info:
            schemas.validate(bad)
        return {p for p, _ in info.value.problems}

    assert "spec.gate.guards[0]" in refused([{"metric": "escalation_rate"}])  # maxRegression required
    assert "spec.gate.guards[0]" in refused([{"maxRegression": 0.1}])  # metric required
    assert "spec.gate.guards[0].maxRegression" in refused([{"metric": "far", "maxRegression": 101}])
    assert "spec.gate.guards[0].maxRegression" in refused([{"metric": "far", "maxRegression": -0.1}])
    assert "spec.gate.guards[0].metric" in refused([{"metric": "Escalation-Rate", "maxRegression": 0.1}])
    assert "spec.gate.guards[1].direction" in refused(
        [{"metric": "far", "maxRegression": 0}, {"metric": "mar", "maxRegression": 0, "direction": "down"}]
    )
    assert "spec.gate.guards[0]" in refused([{"metric": "far", "maxRegression": 0, "minGain": 1}])
    nine = [{"metric": f"m{i}", "maxRegression": 0} for i in range(9)]
    assert "spec.gate.guards" in refused(nine)
    assert "spec.gate.guards" in refused({"metric": "far", "maxRegression": 0})  # a list, not one guard
    obj["spec"]["gate"]["guards"] = nine[:8]
    schemas.validate(obj)
    # The typed view holds the same bound (a from_obj of an object the schema refused fails too).
    with pytest.raises(ValueError, match="at most 8"):
        Gate(guards=[GateGuard(metric=f"m{i}", max_regression=0) for i in range(9)])


def test_job_template_renders_with_required_fields() -> None:
    template = KubeJobLauncher.load_template(DEFAULT_TEMPLATE)
    owner = {"metadata": {"name": "Snips_Nightly", "uid": "u-123"}}
    ref = JobRef("Snips_Nightly", "edgeloop", "u-123", Path("/w/u-123"), owner)
    job = render_job(template, ref, image="registry/x:1", service_account="edgeloop-distillation")
    assert job["apiVersion"] == "batch/v1" and job["kind"] == "Job"
    meta, spec = job["metadata"], job["spec"]
    assert meta["name"] == "distill-snips-nightly-a1" and meta["namespace"] == "edgeloop"
    assert meta["labels"]["edgeloop.io/job-uid"] == "u-123" and meta["labels"]["edgeloop.io/attempt"] == "1"
    assert meta["ownerReferences"][0]["uid"] == "u-123" and meta["ownerReferences"][0]["controller"] is True
    assert (
        spec["backoffLimit"] == 0
        and spec["ttlSecondsAfterFinished"] > 0
        and spec["activeDeadlineSeconds"] > 0
    )
    pod = spec["template"]["spec"]
    assert (
        pod["serviceAccountName"] == "edgeloop-distillation" and pod["automountServiceAccountToken"] is False
    )
    assert pod["restartPolicy"] == "Never" and pod["securityContext"]["runAsNonRoot"] is True
    c = pod["containers"][0]
    assert c["image"] == "registry/x:1" and c["command"][-1] == "cloud_controller.distill_runner.chat_job"
    assert c["args"] == ["--spec", "/work/spec.json", "--out", "/work", "--progress", "/work/progress.jsonl"]
    assert c["resources"]["limits"]["memory"] and c["resources"]["requests"]["cpu"]
    sc = c["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"]["drop"] == ["ALL"]
    work = next(m for m in c["volumeMounts"] if m["mountPath"] == "/work")
    assert work["subPath"] == "u-123"
    assert (
        template["spec"]["template"]["spec"]["containers"][0]["volumeMounts"][0]["subPath"] == "PLACEHOLDER"
    )
    # The service account the template names is the one deploy/kubernetes/controller defines.
    import yaml

    sa = Path(DEFAULT_TEMPLATE).parents[1] / "controller" / "serviceaccount.yaml"
    names = [d["metadata"]["name"] for d in yaml.safe_load_all(sa.read_text()) if d]
    assert template["spec"]["template"]["spec"]["serviceAccountName"] in names


def test_job_names_are_per_attempt_dns_labels() -> None:
    template = KubeJobLauncher.load_template(DEFAULT_TEMPLATE)
    ref = JobRef("snips-nightly", NS, "u-1", Path("/w/u-1"), attempt=2)
    job = render_job(template, ref)
    assert job["metadata"]["name"] == job_name(ref) == "distill-snips-nightly-a2"
    assert job["metadata"]["labels"]["edgeloop.io/attempt"] == "2"
    assert job["spec"]["template"]["metadata"]["labels"]["edgeloop.io/attempt"] == "2"
    label = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    long = "nightly." + "x" * 60 + ".snips-student-with-a-very-long-name"  # a valid DistillationJob name
    names = {
        job_name(JobRef(long, NS, uid, Path("/w"), attempt=attempt))
        for uid in ("u-1", "u-2")
        for attempt in (1, 2, 123)
    }
    assert len(names) == 6  # distinct per uid and attempt although the stems are cut to the same prefix
    for name in names:
        assert len(name) <= 63 and label.match(name), name
        assert name.startswith("distill-nightly-xxx") and re.search(r"-a(1|2|123)$", name)


# --------------------------------------------------------------------------- (f) cluster mode


@pytest.mark.train
async def test_cluster_mode_creates_a_batch_job_and_maps_its_status(
    tmp_path: Path, parent_bundle: Path
) -> None:

    async with kube_job_loop(tmp_path, "dj-kube", service_account="edgeloop-distillation") as k:
        emu, store, artifacts, batch, started = k.emu, k.store, k.artifacts, k.batch, k.started
        await store.create(job_obj("dj-ok", min_gain=None, rollout=False))
        ref = await asyncio.wait_for(started.get(), 10)
        job = emu.stored("jobs", NS, "distill-dj-ok-a1")
        assert job is not None
        pod = job["spec"]["template"]["spec"]
        assert pod["serviceAccountName"] == "edgeloop-distillation"
        assert job["metadata"]["ownerReferences"][0]["uid"] == ref.uid
        assert pod["containers"][0]["volumeMounts"][0]["subPath"] == ref.uid
        spec = json.loads((ref.work / "spec.json").read_text())
        assert spec["version"] == "1" and spec["parent_bundle"] is None
        # The "pod" writes its result into the shared work directory, then the Job succeeds.
        shutil.copytree(parent_bundle, ref.work / "bundle")
        (ref.work / "progress.jsonl").write_text(
            json.dumps({"ts": 1.0e9, "stage": "Collecting", "progress": 0.1, "message": ""})
            + "\n"
            + json.dumps({"ts": 1.0e9 + 5, "stage": "Evaluating", "progress": 0.9, "message": ""})
            + "\n"
        )
        (ref.work / "result.json").write_text(
            json.dumps(
                {
                    "ok": True,
                    "bundle": "/work/bundle",
                    "examples": 400,
                    "metrics_before": {},
                    "metrics_after": {"fixed_intent_acc": 91.0, "new_n": 0.0},
                }
            )
        )
        await asyncio.to_thread(
            batch.patch_namespaced_job,
            "distill-dj-ok-a1",
            NS,
            {"status": {"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]}},
        )
        obj = await wait_job(store, "dj-ok", stage_is("Succeeded", "Rejected", "Failed"), timeout=20)
        st = obj["status"]
        assert st["stage"] == "Succeeded", st.get("message")
        assert st["stageTimes"]["Collecting"].startswith("2001-09-09") and "Evaluating" in st["stageTimes"]
        model = await store.get("EdgeModel", NS, "chat-snips-1")
        assert model["spec"]["digest"] == artifacts.get(MODEL, "1").digest

        # A Job that fails (backoffLimit 0, no result.json) ends the DistillationJob as Failed.
        await store.create(job_obj("dj-bad", min_gain=None, rollout=False))
        await asyncio.wait_for(started.get(), 10)
        await asyncio.to_thread(
            batch.patch_namespaced_job,
            "distill-dj-bad-a1",
            NS,
            {
                "status": {
                    "failed": 1,
                    "conditions": [
                        {
                            "type": "Failed",
                            "status": "True",
                            "reason": "BackoffLimitExceeded",
                            "message": "Job has reached the specified backoff limit",
                        }
                    ],
                }
            },
        )
        obj = await wait_job(store, "dj-bad", stage_is("Succeeded", "Rejected", "Failed"), timeout=20)
        assert obj["status"]["stage"] == "Failed" and "BackoffLimitExceeded" in obj["status"]["message"]


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


async def test_cluster_restart_uses_a_new_job_name_and_deletes_the_old_attempt(tmp_path: Path) -> None:

    async with kube_job_loop(tmp_path, "dj-kube-restart", max_restarts=1) as k:
        emu, store, batch, launcher, started, stopped = (
            k.emu,
            k.store,
            k.batch,
            k.launcher,
            k.started,
            k.stopped,
        )
        await store.create(job_obj("dj-re", min_gain=None, rollout=False))
        first = await asyncio.wait_for(started.get(), 10)
        assert first.attempt == 1 and emu.stored("jobs", NS, "distill-dj-re-a1") is not None

        # The Job vanishes without a result (a lost node, a hand-deleted Job): attempt 2, its own name.
        await asyncio.to_thread(batch.delete_namespaced_job, "distill-dj-re-a1", NS)
        second = await asyncio.wait_for(started.get(), 10)
        assert second.attempt == 2 and (second.work / "attempts").read_text() == "2"
        a2 = emu.stored("jobs", NS, "distill-dj-re-a2")
        assert a2 is not None and a2["metadata"]["labels"]["edgeloop.io/attempt"] == "2"
        assert a2["metadata"]["ownerReferences"][0]["uid"] == second.uid
        assert emu.stored("jobs", NS, "distill-dj-re-a1") is None

        # Poll follows the current attempt: a2's failure ends the job, and is not restarted.
        await asyncio.to_thread(
            batch.patch_namespaced_job,
            "distill-dj-re-a2",
            NS,
            {
                "status": {
                    "failed": 1,
                    "conditions": [{"type": "Failed", "status": "True", "reason": "R2"}],
                }
            },
        )
        obj = await wait_job(store, "dj-re", stage_is("Succeeded", "Rejected", "Failed"), timeout=20)
        assert obj["status"]["stage"] == "Failed" and "R2" in obj["status"]["message"]
        assert started.empty()

        # The launcher on its own: a start for the next attempt while the previous attempt's Job
        # still exists (e.g. it is being torn down) deletes it first, and only this job's Jobs.
        work = tmp_path / "direct"
        one = JobRef("dj-direct", NS, "u-direct", work, attempt=1)
        other = JobRef("dj-other", NS, "u-other", tmp_path / "other", attempt=1)
        await launcher.start(one)
        await launcher.start(other)
        await launcher.start(dataclasses.replace(one, attempt=2))
        assert emu.stored("jobs", NS, "distill-dj-direct-a1") is None
        assert emu.stored("jobs", NS, "distill-dj-direct-a2") is not None
        assert (await launcher.poll(dataclasses.replace(one, attempt=2))).kind == "running"
        assert (await launcher.poll(one)).kind == "missing"
        await launcher.stop(dataclasses.replace(one, attempt=2))
        assert emu.stored("jobs", NS, "distill-dj-direct-a2") is None
        assert emu.stored("jobs", NS, "distill-dj-other-a1") is not None
        for q in (started, stopped):  # what the direct calls signalled
            while not q.empty():
                q.get_nowait()

        # Deleting an unfinished DistillationJob deletes its Job (no garbage collector here).
        await store.create(job_obj("dj-del", min_gain=None, rollout=False))
        ref = await asyncio.wait_for(started.get(), 10)
        assert emu.stored("jobs", NS, "distill-dj-del-a1") is not None
        await store.delete("DistillationJob", NS, "dj-del")
        gone = await asyncio.wait_for(stopped.get(), 10)
        assert gone.uid == ref.uid
        assert emu.stored("jobs", NS, "distill-dj-del-a1") is None
        assert emu.stored("jobs", NS, "distill-dj-other-a1") is not None
