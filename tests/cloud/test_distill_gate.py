"""The release gate: rules, direction (lower/higher is better), guards, and agreement with the CRD schema."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from cloud_controller.reconcilers.distillation.gate import evaluate_gate
from cloud_controller.resources.kinds import DistillationJob, Gate, GateGuard
from cloud_controller.resources.schema import SchemaInvalid, load_schemas
from tests.cloud.distill_harness import job_obj

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


