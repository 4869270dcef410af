"""Held-back experiments: a sensor job scores them, never trains on them; its gate can demand a gain there.

The question a fleet asks of a re-distilled sensor model is whether it got better on devices it
was not shown; ``data.heldBack`` names such labelled experiments, the runner reports
``heldback_*`` before and after, and ``gate.gainOn: heldback`` measures ``minGain`` on them while
``maxRegression`` and the guards keep bounding the fixed set. The demo prints, in one line, why a
job did not ship.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from cloud_controller.distill_runner.protocol import RunnerSpec, parse_base
from cloud_controller.reconcilers.distillation.gate import evaluate_gate
from cloud_controller.resources.kinds import DistillationJob, Gate, GateGuard
from cloud_controller.resources.schema import SchemaInvalid, load_schemas
from edgeloop_sim.demo_models import SENSOR_HELD_BACK, SENSOR_HELD_BACK_DATA, sensor_device, sensor_gate
from edgeloop_sim.demo_report import markdown, verdict_lines
from tests.cloud.distill_harness import job_obj

BEFORE = {
    "fixed_f1": 79.7,
    "fixed_escalation_rate": 0.26,
    "new_f1": 85.9,
    "new_n": 249.0,
    "heldback_f1": 70.55,
    "heldback_n": 1030.0,
}
AFTER = {**BEFORE, "fixed_f1": 82.8, "fixed_escalation_rate": 0.11, "new_f1": 87.3, "heldback_f1": 75.77}


def _gate(**kw: Any) -> Gate:
    return Gate(metric="f1", gain_on="heldback", max_regression=2.0, min_gain=2.0, **kw)


def test_gain_on_heldback_measures_min_gain_on_the_held_back_experiments() -> None:
    v = evaluate_gate(_gate(), BEFORE, AFTER)
    assert v.passed and v.reason == "GatePassed", v
    assert "heldback_f1 70.55 -> 75.77" in v.message and "new_f1" not in v.message
    # The new windows gained plenty, the held-back experiments too little: rejected, and the line says so.
    small = {**AFTER, "heldback_f1": 71.5}
    v = evaluate_gate(_gate(), BEFORE, small)
    assert (v.passed, v.reason) == (False, "InsufficientGain")
    assert v.message == "heldback_f1 rose by 0.95, less than minGain 2 (higher is better; 70.55 -> 71.5)"
    # The default (gainOn unset) still measures the gain on the new hard examples.
    assert evaluate_gate(Gate(metric="f1", max_regression=2.0, min_gain=2.0), BEFORE, small).reason == (
        "InsufficientGain"
    )
    assert evaluate_gate(Gate(metric="f1", max_regression=2.0, min_gain=1.0), BEFORE, small).passed


def test_gain_on_heldback_keeps_the_fixed_set_and_the_guards() -> None:
    worse_fixed = {**AFTER, "fixed_f1": 77.0}
    assert evaluate_gate(_gate(), BEFORE, worse_fixed).reason == "Regression"
    more_escalated = {**AFTER, "fixed_escalation_rate": 0.35}
    guard = GateGuard(metric="escalation_rate", max_regression=0.05)
    assert evaluate_gate(_gate(guards=[guard]), BEFORE, more_escalated).reason == "GuardRegression"


def test_gain_on_heldback_without_held_back_data_rejects_with_a_reason() -> None:
    no_held = {k: v for k, v in AFTER.items() if not k.startswith("heldback_")}
    v = evaluate_gate(_gate(), BEFORE, no_held)
    assert (v.passed, v.reason) == (False, "NoHeldBackData")
    v = evaluate_gate(_gate(), BEFORE, {**no_held, "heldback_n": 10.0})
    assert (v.passed, v.reason) == (False, "MetricMissing") and "heldback_f1" in v.message


def test_demo_gate_validates_against_the_crd_schema_and_round_trips() -> None:
    schemas = load_schemas(Path(__file__).resolve().parents[2] / "crds")
    obj = job_obj("dj-held", metric="f1")
    obj["spec"].update(task="sensor", studentArch="mlp", gate=sensor_gate(2.0))
    obj["spec"]["data"] = {"base": "skab?groups=valve1", "heldBack": SENSOR_HELD_BACK_DATA}
    schemas.apply_defaults(obj)
    schemas.validate(obj)
    job = DistillationJob.from_obj(obj)
    assert job.spec.gate.gain_on == "heldback" and job.spec.data.held_back == SENSOR_HELD_BACK_DATA
    assert job.to_obj()["spec"]["gate"]["gainOn"] == "heldback"
    # Unset stays unset (an existing object dumps back unchanged).
    assert "gainOn" not in DistillationJob.from_obj(job_obj("dj-plain")).to_obj()["spec"]["gate"]
    obj["spec"]["gate"]["gainOn"] = "fixed"
    with pytest.raises(SchemaInvalid) as info:
        schemas.validate(obj)
    assert "spec.gate.gainOn" in {p for p, _ in info.value.problems}


def test_parse_base_experiments_and_the_demo_test_devices() -> None:
    b = parse_base(SENSOR_HELD_BACK_DATA)
    assert b.dataset == "skab" and b.experiments == list(SENSOR_HELD_BACK)
    assert parse_base("skab?exclude=valve2/1").exclude == ["valve2/1"]
    assert sensor_device("valve2/1") == "skab-valve2-1" and sensor_device("other/14") == "skab-other-14"


def _sensor_report(stage: str, message: str) -> dict[str, Any]:
    return {
        "sensor_distillation": {
            "stage": stage,
            "message": message,
            "metricsBefore": BEFORE,
            "metricsAfter": {**AFTER, "heldback_f1": 71.5},
        }
    }


def test_demo_says_in_one_line_why_a_job_did_not_ship() -> None:
    msg = "InsufficientGain: heldback_f1 rose by 0.95, less than minGain 2 (higher is better; 70.55 -> 71.5)"
    lines = verdict_lines(_sensor_report("Rejected", msg))
    assert lines[0] == f"sensor DistillationJob Rejected, v1 stays: {msg}"
    assert lines[1] == "sensor held-back experiments (never trained on): F1 70.55 -> 71.50 (+0.95)"
    assert all("\n" not in line for line in lines)
    ok = verdict_lines(_sensor_report("Succeeded", "GatePassed: ..."))
    assert len(ok) == 1 and ok[0].startswith("sensor held-back experiments")
    assert "v1 70.55 → new 71.50 (**+0.95**)" in markdown(_sensor_report("Succeeded", "GatePassed: ..."))


def test_chat_job_refuses_held_back_data(tmp_path: Path) -> None:
    spec = RunnerSpec(job="c", task="chat", base="snips", held_back="snips?exclude=RateBook",
                      config="tiny", output_model="chat", version="1")  # fmt: skip
    (tmp_path / "spec.json").write_text(spec.model_dump_json())
    proc = subprocess.run(
        [sys.executable, "-m", "cloud_controller.distill_runner", "--spec", str(tmp_path / "spec.json"),
         "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 1
    assert "heldBack is supported for task sensor only" in json.loads((tmp_path / "result.json").read_text())[
        "error"
    ]


def test_sensor_job_scores_held_back_experiments_and_never_trains_on_them(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    from cloud_controller.distill_runner.job import run
    from cloud_controller.distill_runner.protocol import ProgressLog

    spec = RunnerSpec(job="h", task="sensor", base="skab?groups=valve2",
                      held_back="skab?experiments=valve2/1,other/2",
                      config="tiny", output_model="skab-sensor", version="1")  # fmt: skip
    result = run(spec, tmp_path, ProgressLog(tmp_path / "progress.jsonl"))
    after = result["metrics_after"]
    # valve2 has 4 experiments; valve2/1 is held back, so the base trains and is scored on 3.
    assert after["fixed_files"] == 3 and after["heldback_files"] == 2
    assert {"heldback_f1", "heldback_far", "heldback_mar", "heldback_escalation_rate"} <= set(after)
    assert after["heldback_n"] > 100
    lines = (tmp_path / "progress.jsonl").read_text()
    assert "2 held-back experiments (scored only)" in lines

    bad = spec.model_copy(update={"held_back": "skab?experiments=valve2/9"})
    with pytest.raises(ValueError, match="unknown SKAB experiment"):
        run(bad, tmp_path / "bad", ProgressLog(tmp_path / "bad.jsonl"))
