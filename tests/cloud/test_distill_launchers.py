"""Launchers and job lifecycle: a deleted job stops its local runner (process group and all), the
batch/v1 Job template, per-attempt names, and the cluster path against the kmock emulator."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import re
import shutil
import signal
from pathlib import Path

import pytest

from cloud_controller.reconcilers.distillation.launchers import (
    DEFAULT_TEMPLATE,
    KubeJobLauncher,
    LocalJobLauncher,
    job_name,
    render_job,
)
from cloud_controller.reconcilers.distillation.workdir import JobRef
from tests.cloud.distill_harness import (
    BASE,
    MODEL,
    NS,
    DistillLoop,
    job_obj,
    kube_job_loop,
    needs_snips,
    process_alive,
    signalling,
    stage_is,
    wait_job,
)

# --------------------------------------------------------------------------- deletion stops the runner


@needs_snips
async def test_deleting_a_job_stops_its_local_runner(tmp_path: Path) -> None:
    SignallingLauncher, started, stopped = signalling(LocalJobLauncher)

    lp = DistillLoop(tmp_path, SignallingLauncher)
    await lp.start()
    try:
        await lp.store.create(job_obj("dj-del"))  # a real training run: tens of seconds, never finished here
        ref = await asyncio.wait_for(started.get(), 30)
        await wait_job(lp.store, "dj-del", stage_is("Collecting", "Training"), timeout=60)
        pid = int((ref.work / "pid").read_text())
        assert process_alive(pid)
        await lp.store.delete("DistillationJob", NS, "dj-del")
        assert (await asyncio.wait_for(stopped.get(), 15)).uid == ref.uid
        assert not process_alive(pid)
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
    assert not process_alive(pid)


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
    from cloud_controller.distill_runner.protocol import RunnerSpec

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
    assert process_alive(pid) and process_alive(grandchild)
    with caplog.at_level("WARNING", logger="cloud_controller.reconcilers.distillation.launchers"):
        async with asyncio.timeout(15):
            await second.stop(ref)
    assert "after SIGTERM; killing its process group" in caplog.text
    assert not process_alive(pid)  # the leader is waited for; the rest of its group was sent SIGKILL
    await _exited(grandchild, timeout=5)
    assert (await second.poll(ref)).kind == "missing"
    await second.stop(ref)  # idempotent: nothing left to signal


# --------------------------------------------------------------------------- job template

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
    assert c["image"] == "registry/x:1" and c["command"][-1] == "cloud_controller.distill_runner"
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
