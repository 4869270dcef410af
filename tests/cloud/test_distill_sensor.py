"""The sensor half of the loop: the runner re-distils a SKAB student from the fleet's uncertain windows.

Real data (SKAB from ``EDGELOOP_DATA``), a real int8 parent bundle trained here on ``valve1`` only,
hard examples built the way a node builds them (windows of *other* experiments whose parent score
falls in the uncertainty band, labelled with the teacher's probability), the runner as a real
process, and the DistillationJob reconciler on the embedded store through to a signed sensor release.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cloud_controller.distill_runner.protocol import RunnerSpec, parse_base
from cloud_controller.ingest.contracts import StoredHardExample
from cloud_controller.ingest.hard_examples import write_snapshot
from edge_agent.protocol import messages as wire

pytest.importorskip("torch")

from tests.cloud.distill_harness import NS, DistillLoop, job_obj, running_loop, stage_is, wait_job

BAND = (0.35, 0.65)
MODEL = "skab-sensor"


def _data() -> Any:
    from cloud_controller.training.sensor_train import (
        BaselineDetector,
        SensorTrainConfig,
        build_files,
        fit_floor,
        prepare,
    )

    cfg = SensorTrainConfig.named("tiny")
    files, free, raw = build_files(cfg, None, lambda *_: None, groups=["valve1"])
    spec = fit_floor([*files, *free], raw, cfg.floor_frac)
    others, _, _ = build_files(cfg, None, lambda *_: None, groups=["other", "valve2"])
    prepare([*files, *free, *others], spec, BaselineDetector())
    return cfg, files, free, others, spec


@pytest.fixture(scope="module")
def sensor_case(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """v1 (valve1 only, int8 bundle) and the hard examples its uncertain windows on other groups give."""
    from cloud_controller.training.sensor_train import (
        export_student,
        soft_targets,
        train_student,
        write_sensor_bundle,
    )
    from edge_agent.models.sensor_runtime import SensorModel

    cfg, files, free, others, spec = _data()
    out = tmp_path_factory.mktemp("sensor-parent")
    model = train_student([*files, *free], cfg, spec.n_features)
    export_student(model, spec.n_features, out / "v1.fp32.onnx", out / "v1.int8.onnx")
    v1 = write_sensor_bundle(out / "v1", out / "v1.int8.onnx", spec, 0.5, {"name": MODEL, "version": "1"})
    sm = SensorModel(v1).load()
    hard: list[wire.HardExample] = []
    for f in others:
        s, p = sm.score(f.z), soft_targets(f.teacher, cfg.sharpness)
        for i in np.flatnonzero((s > BAND[0]) & (s < BAND[1])):
            pi = float(p[i])
            hard.append(
                wire.HardExample(
                    id=f"sx-{f.key}-{i}",
                    node="n1",
                    created=float(f.starts[i]),
                    task="sensor",
                    features=[round(float(v), 5) for v in f.z[i]],
                    student={"score": float(s[i])},
                    teacher={
                        "label": "anomaly" if pi > 0.5 else "normal",
                        "score": pi,
                        "confidence": max(pi, 1 - pi),
                    },
                )
            )
    assert len(hard) >= 20, "the fixture needs uncertain windows to learn from"
    return {"v1": v1, "hard": hard, "spec": spec}


def _stored(h: wire.HardExample) -> StoredHardExample:
    t = h.teacher or {}
    return StoredHardExample(
        id=h.id,
        received=0.0,
        created=h.created,
        node=h.node,
        task=h.task,
        text=h.text,
        features=h.features,
        label=t.get("label"),
        confidence=t.get("confidence"),
        teacher=h.teacher,
        student=h.student,
    )


def test_teacher_probability_follows_the_teachers_decision() -> None:
    from cloud_controller.distill_runner.sensor_job import teacher_probability

    def ex(**teacher: Any) -> StoredHardExample:
        return StoredHardExample("i", 0.0, 0.0, "n", "sensor", None, [0.0], None, None, teacher, {})

    assert teacher_probability(ex(score=0.7, label="anomaly")) == 0.7
    # A teacher with threshold 0.8 said "normal" at 0.7: the student (threshold 0.5) must learn "normal".
    assert teacher_probability(ex(score=0.7, label="normal")) == pytest.approx(0.3)
    assert teacher_probability(ex(label="anomaly", confidence=0.9)) == 0.9
    assert teacher_probability(ex(label="normal", confidence=0.9)) == pytest.approx(0.1)
    assert teacher_probability(ex(label="anomaly")) is None
    assert teacher_probability(ex(score=1.5)) is None


def test_parse_base_groups() -> None:
    b = parse_base("skab?groups=valve1,valve2")
    assert b.dataset == "skab" and b.groups == ["valve1", "valve2"] and b.exclude == []


def test_student_from_int8_bundle_scores_like_the_bundle(sensor_case: dict[str, Any]) -> None:
    from cloud_controller.training.sensor_train import student_from_onnx, torch_scores
    from edge_agent.models.sensor_runtime import SensorModel

    x = np.asarray([h.features for h in sensor_case["hard"]], np.float32)
    warm = student_from_onnx(sensor_case["v1"] / "model.onnx")
    onnx_scores = SensorModel(sensor_case["v1"]).load().score(x)
    # Dequantised weights in fp32 vs the int8 kernels (activations quantised per batch): close.
    assert np.abs(torch_scores(warm, x) - onnx_scores).max() < 0.05


def test_runner_process_redistills_a_sensor_student(sensor_case: dict[str, Any], tmp_path: Path) -> None:
    rows = [_stored(h) for h in sensor_case["hard"]]
    bad = [
        replace(rows[0], id="short", features=[0.1, 0.2]),
        replace(rows[1], id="unlabelled", teacher=None, label=None, confidence=None),
    ]
    write_snapshot(tmp_path / "hard.jsonl", [*rows, *bad])
    spec = RunnerSpec(
        job="sensor-job",
        task="sensor",
        base="skab?groups=valve1",
        config="tiny",
        output_model=MODEL,
        version="2",
        parent_version="1",
        parent_bundle=str(sensor_case["v1"]),
        hard_examples_file="hard.jsonl",  # relative: resolved against the work directory
        uncertain_band=BAND,
    )
    (tmp_path / "spec.json").write_text(spec.model_dump_json())
    proc = subprocess.run(
        [sys.executable, "-m", "cloud_controller.distill_runner",
         "--spec", str(tmp_path / "spec.json"),
         "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["ok"] and result["hard_examples"]["dropped"] == 2
    assert result["hard_examples"]["train"] + result["hard_examples"]["eval"] == len(rows)
    before, after = result["metrics_before"], result["metrics_after"]
    for m in (before, after):
        assert {"fixed_f1", "fixed_far", "fixed_mar", "fixed_escalation_rate", "new_acc", "new_f1"} <= set(m)
    assert after["fixed_n"] == before["fixed_n"] > 0 and after["new_n"] == before["new_n"] >= 4
    # Trained on the teacher's answers for exactly such windows: the held-out ones are no longer
    # all "maybe" (every one was inside the parent's band).
    assert before["new_escalation_rate"] == 1.0
    assert after["new_escalation_rate"] < before["new_escalation_rate"]

    from edge_agent.models.bundle import load_bundle
    from edge_agent.models.sensor_runtime import SENSOR_TASK, SensorModel

    b = load_bundle(tmp_path / result["bundle"])
    assert b.manifest.task == SENSOR_TASK
    assert b.manifest.version == "2" and b.manifest.parent_version == "1"
    assert b.manifest.extra["warm_start"] is True
    # Same feature spec as the parent: a node's device baselines stay valid across versions.
    assert SensorModel(b).load().spec == sensor_case["spec"]
    lines = [json.loads(x) for x in (tmp_path / "progress.jsonl").read_text().splitlines()]
    assert lines[0]["stage"] == "Collecting" and lines[-1]["stage"] == "Evaluating"
    assert any(x["message"].startswith("epoch ") for x in lines)
    assert [x["progress"] for x in lines] == sorted(x["progress"] for x in lines)


def test_unknown_group_fails_with_a_clear_error(tmp_path: Path) -> None:
    spec = RunnerSpec(job="bad", task="sensor", base="skab?groups=valve9", config="tiny", output_model=MODEL,
                      version="1")  # fmt: skip
    (tmp_path / "spec.json").write_text(spec.model_dump_json())
    proc = subprocess.run(
        [sys.executable, "-m", "cloud_controller.distill_runner",
         "--spec", str(tmp_path / "spec.json"),
         "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 1
    result = json.loads((tmp_path / "result.json").read_text())
    assert not result["ok"] and "valve9" in result["error"] and "valve1" in result["error"]


@pytest.fixture
async def sensor_loop(tmp_path: Path, sensor_case: dict[str, Any]) -> AsyncIterator[DistillLoop]:
    async with running_loop(tmp_path, sensor_case["v1"], "sensor", sensor_case["hard"]) as lp:
        yield lp


@pytest.mark.slow
async def test_sensor_job_through_the_reconciler_releases_a_signed_sensor_model(
    sensor_loop: DistillLoop,
) -> None:
    obj = job_obj("dj-sensor", base="skab?groups=valve1", metric="escalation_rate", min_gain=0.01)
    obj["spec"].update(task="sensor", teacher="skab-detector", studentArch="mlp", outputModel=MODEL)
    obj["spec"].pop("epochs")
    obj["spec"]["data"]["minTeacherConfidence"] = 0.0
    await sensor_loop.store.create(obj)
    done = await wait_job(sensor_loop.store, "dj-sensor", stage_is("Succeeded", "Rejected", "Failed"))
    st = done["status"]
    assert st["stage"] == "Succeeded", st.get("message")
    assert st["metricsAfter"]["new_escalation_rate"] < st["metricsBefore"]["new_escalation_rate"]
    rel = sensor_loop.artifacts.get(MODEL, "2")
    model = await sensor_loop.store.get("EdgeModel", NS, f"{MODEL}-2")
    assert model["spec"]["digest"] == rel.digest and model["spec"]["task"] == "sensor"
