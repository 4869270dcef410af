"""The sensor teacher's recipe: context targets and an ensemble of students in one int8 graph.

Why these exist (``cloud_controller.training.sensor_ensemble``): one MLP distilled from the
per-window detector was no better than the first student it had to teach, so the demo's sensor
job could not pass its gate. The teacher is now several students averaged in one ONNX graph,
trained on targets that look at a window's neighbours. These tests pin the shape: the labeller
reads the ensemble bundle like any sensor bundle, its score is the members' mean, and the runner
builds it from ``studentParams`` (``members``, ``context``) while a warm-started student stays one MLP.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from cloud_controller.distill_runner.job import run  # noqa: E402
from cloud_controller.distill_runner.protocol import ProgressLog, RunnerSpec  # noqa: E402
from cloud_controller.teachers.sensor_labeller import load_sensor_teacher  # noqa: E402
from cloud_controller.training.sensor_ensemble import (  # noqa: E402
    SensorEnsemble,
    context_scores,
    fit_ensemble,
)
from cloud_controller.training.sensor_train import (  # noqa: E402
    SensorStudent,
    SensorTrainConfig,
    export_student,
    torch_scores,
)
from edge_agent.models.features import FeatureSpec  # noqa: E402
from edge_agent.models.sensor_runtime import write_sensor_bundle  # noqa: E402
from edgeloop_sim.demo_models import SENSOR_TEACHER_PARAMS  # noqa: E402


def test_context_scores_take_the_highest_score_of_each_window_and_its_neighbours() -> None:
    s = np.array([0.1, 0.2, 3.0, 0.3, 0.2, 0.1, 0.5])
    assert context_scores(s, 3).tolist() == [0.2, 3.0, 3.0, 3.0, 0.3, 0.5, 0.5]
    assert context_scores(s, 5).tolist() == [3.0, 3.0, 3.0, 3.0, 3.0, 0.5, 0.5]
    # One window (the students' recipe) leaves the detector's scores as they are.
    assert context_scores(s, 1).tolist() == s.tolist()
    assert context_scores(np.zeros(0), 3).shape == (0,)


def test_an_ensemble_bundle_labels_with_the_members_mean(tmp_path: Path) -> None:
    torch.manual_seed(0)
    members = [SensorStudent(6, (8, 4)) for _ in range(3)]
    model = SensorEnsemble(members)
    x = np.random.default_rng(0).normal(size=(32, 6)).astype(np.float32)
    mean = np.mean([torch_scores(m, x) for m in members], axis=0)
    with torch.no_grad():
        ens = model(torch.from_numpy(x)).squeeze(-1).numpy()
    assert np.allclose(ens, mean, atol=1e-6)

    export_student(model, 6, tmp_path / "t.fp32.onnx", tmp_path / "t.int8.onnx")
    spec = FeatureSpec(metrics=("a",), window_s=10.0, baseline_windows=4)  # 6 stats of 1 metric
    assert spec.n_features == 6
    write_sensor_bundle(tmp_path / "bundle", tmp_path / "t.int8.onnx", spec, 0.5,
                        {"name": "ens-teacher", "version": "1"})  # fmt: skip
    teacher = load_sensor_teacher(tmp_path / "bundle")
    labels = teacher.label([[float(v) for v in row] for row in x])
    scores = np.array([t["score"] for t in labels if t is not None])
    assert len(scores) == 32 and np.abs(scores - mean).max() < 0.05  # int8 weights
    assert all(t is not None and t["model"] == "ens-teacher@1" for t in labels)


def test_fit_ensemble_draws_disjoint_member_seeds() -> None:
    x = np.random.default_rng(1).normal(size=(64, 6)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.float32)
    cfg = SensorTrainConfig(hidden=(4, 4), epochs=2, seed=1)
    model = fit_ensemble(x, y, cfg, 2)
    assert isinstance(model, SensorEnsemble) and len(model.members) == 2
    w = [m.weights[0].detach().numpy() for m in model.members]  # type: ignore[union-attr]
    assert not np.allclose(w[0], w[1])
    assert isinstance(fit_ensemble(x, y, cfg, 1), SensorStudent)


def test_the_runner_builds_the_teacher_from_student_params(tmp_path: Path) -> None:
    spec = RunnerSpec(job="t", task="sensor", base="skab?groups=valve2", config="tiny", epochs=3,
                      output_model="skab-sensor-teacher", version="1",
                      student_params={"hidden": 8, "hidden2": 4, "members": 2, "context": 3})  # fmt: skip
    run(spec, tmp_path, ProgressLog(tmp_path / "progress.jsonl"))
    manifest = json.loads((tmp_path / "bundle" / "manifest.json").read_text())
    recipe = manifest["extra"]["recipe"]
    assert (recipe["members"], recipe["context"], recipe["hidden"]) == (2, 3, [8, 4])
    assert "2 x hidden (8, 4), targets over 3 windows" in (tmp_path / "progress.jsonl").read_text()
    # Warm-starting a student from this parent is not possible (an ensemble is not one MLP): the
    # job says so and trains anew rather than failing.
    child = spec.model_copy(update={"parent_bundle": str(tmp_path / "bundle"), "version": "2",
                                    "student_params": {}, "parent_version": "1"})  # fmt: skip
    run(child, tmp_path / "child", ProgressLog(tmp_path / "child.jsonl"))
    assert "cannot warm-start from the parent" in (tmp_path / "child.jsonl").read_text()


def test_the_demo_teacher_is_an_ensemble_on_context_targets() -> None:
    assert SENSOR_TEACHER_PARAMS["members"] > 1 and SENSOR_TEACHER_PARAMS["context"] > 1
