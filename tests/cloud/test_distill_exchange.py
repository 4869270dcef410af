"""A DistillationJob's files through the shared PostgreSQL: no volume shared by controller and Job."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from cloud_controller.distill_runner import job as runner_job
from cloud_controller.distill_runner.exchange import JobExchange
from cloud_controller.distill_runner.protocol import ProgressLog, RunnerSpec
from cloud_controller.reconcilers.distillation.launchers import POD_WORK_DIR, KubeJobLauncher, render_job
from cloud_controller.reconcilers.distillation.reconciler import EXCHANGED_INPUTS
from cloud_controller.reconcilers.distillation.workdir import JobRef, read_progress, read_result
from edge_agent.models.bundle import load_bundle, write_bundle

UID = "0d9c-uid"


def _inputs(work: Path) -> None:
    work.mkdir(parents=True)
    spec = RunnerSpec(job="j", uid=UID, task="chat", output_model="m", version="2")
    (work / "spec.json").write_text(spec.model_dump_json())
    (work / "hard_examples.jsonl").write_text('{"id": "h1"}\n')
    (work / "parent").mkdir()
    (work / "parent" / "model.onnx").write_bytes(b"\x00parent" * 1000)
    (work / "attempts").write_text("1")


def test_inputs_out_and_results_back_across_disks(postgres_dsn: str, tmp_path: Path) -> None:
    controller, pod, restarted = tmp_path / "controller", tmp_path / "pod", tmp_path / "restarted"
    _inputs(controller)
    ctl, job = JobExchange(postgres_dsn), JobExchange(postgres_dsn)
    assert ctl.push(UID, controller, EXCHANGED_INPUTS) == 4
    assert sorted(job.pull(UID, pod)) == ["attempts", "hard_examples.jsonl", "parent/model.onnx", "spec.json"]
    for name in ("spec.json", "hard_examples.jsonl", "parent/model.onnx", "attempts"):
        assert (pod / name).read_bytes() == (controller / name).read_bytes()

    progress = ProgressLog(pod / "progress.jsonl", after=lambda: job.push(UID, pod, ["progress.jsonl"]))
    progress("Training", 0.5, "epoch 1")
    assert ctl.pull(UID, controller) == ["progress.jsonl"]  # only what changed
    assert read_progress(controller)[1:] == (0.5, "epoch 1")
    assert ctl.pull(UID, controller) == []

    # The bundle goes first, the result last: a reader that sees the result has the bundle.
    (pod / "bundle").mkdir()
    (pod / "bundle" / "model.onnx").write_bytes(b"student")
    job.push(UID, pod, ["bundle"])
    assert read_result(controller) is None
    ctl.pull(UID, controller)
    assert read_result(controller) is None and (controller / "bundle" / "model.onnx").exists()
    (pod / "result.json").write_text(json.dumps({"ok": True, "bundle": "bundle"}))
    job.push(UID, pod, ["result.json"])

    # A controller pod restarted with an empty disk finds everything.
    fresh = JobExchange(postgres_dsn)
    pulled = fresh.pull(UID, restarted)
    assert pulled[-1] == "result.json" and "bundle/model.onnx" in pulled and "spec.json" in pulled
    assert read_result(restarted) == {"ok": True, "bundle": "bundle"}

    fresh.drop(UID)
    assert JobExchange(postgres_dsn).pull(UID, tmp_path / "after-drop") == []
    with pytest.raises(ValueError, match="relative path"):
        ctl.push(UID, controller, ["../etc"])
    for ex in (ctl, job, fresh):
        ex.close()


def test_runner_reports_through_the_store(postgres_dsn: str, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The runner's own entry point, with training stubbed: inputs pulled, bundle and result pushed."""
    controller, pod = tmp_path / "controller", tmp_path / "pod"
    _inputs(controller)
    JobExchange(postgres_dsn).push(UID, controller, EXCHANGED_INPUTS)
    seen: dict[str, Any] = {}

    def fake_run(spec: RunnerSpec, out: Path, progress: ProgressLog) -> dict[str, Any]:
        seen["parent"] = (out / "parent" / "model.onnx").read_bytes()
        progress("Training", 0.25, "training")
        write_bundle(out / "bundle", {"model.onnx": b"student-2", "labels.json": b"{}", "vocab.json": b"{}"},
                     {"name": "m", "task": "chat", "version": spec.version})
        return {"ok": True, "bundle": "bundle", "metrics_after": {"fixed_accuracy": 0.9}}

    monkeypatch.setattr(runner_job, "run", fake_run)
    monkeypatch.setenv("EDGELOOP_STORE_DSN", postgres_dsn)
    assert runner_job.main(["--spec", str(pod / "spec.json"), "--out", str(pod), "--exchange-uid", UID]) == 0
    assert seen["parent"] == (controller / "parent" / "model.onnx").read_bytes()

    JobExchange(postgres_dsn).pull(UID, controller)
    result = read_result(controller)
    assert result is not None and result["ok"]
    assert load_bundle(controller / "bundle").manifest.version == "2"
    assert read_progress(controller)[1] == 0.25


def test_runner_failure_reaches_the_store(postgres_dsn: str, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    controller, pod = tmp_path / "controller", tmp_path / "pod"
    _inputs(controller)
    JobExchange(postgres_dsn).push(UID, controller, EXCHANGED_INPUTS)

    def broken(spec: RunnerSpec, out: Path, progress: ProgressLog) -> dict[str, Any]:
        raise RuntimeError("out of memory")

    monkeypatch.setattr(runner_job, "run", broken)
    monkeypatch.setenv("EDGELOOP_STORE_DSN", postgres_dsn)
    assert runner_job.main(["--spec", str(pod / "spec.json"), "--out", str(pod), "--exchange-uid", UID]) == 1
    JobExchange(postgres_dsn).pull(UID, controller)
    result = read_result(controller)
    assert result is not None and not result["ok"] and "out of memory" in result["error"]


def test_job_with_a_shared_store_mounts_no_claim(tmp_path: Path) -> None:
    ref = JobRef("j", "edgeloop", UID, tmp_path, {"metadata": {"uid": UID}})
    template = KubeJobLauncher.load_template()
    # A template of the user's own that shares a claim (no shared store): each job gets its sub-path.
    claimed = copy.deepcopy(template)
    for v in claimed["spec"]["template"]["spec"]["volumes"]:
        if v["name"] == "work":
            v.pop("emptyDir", None)
            v["persistentVolumeClaim"] = {"claimName": "distillation-work"}
    plain = render_job(claimed, ref)
    (mount,) = [m for m in plain["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]
                if m["mountPath"] == POD_WORK_DIR]
    assert mount["subPath"] == UID
    job = render_job(template, ref, exchange=True)
    pod = job["spec"]["template"]["spec"]
    (work,) = [v for v in pod["volumes"] if v["name"] == "work"]
    assert "persistentVolumeClaim" not in work and "emptyDir" in work
    container = pod["containers"][0]
    assert container["args"][-2:] == ["--exchange-uid", UID]
    assert all("subPath" not in m for m in container["volumeMounts"] if m["mountPath"] == POD_WORK_DIR)
    (dsn,) = [e for e in container["env"] if e["name"] == "EDGELOOP_STORE_DSN"]
    assert dsn["valueFrom"]["secretKeyRef"] == {"name": "edgeloop-store", "key": "dsn"}
