"""The quality gate of a DistillationJob: does the new version go out, and why (not).

Metric ``m`` = ``spec.gate.metric``: regression on the fixed set at most
``maxRegression`` (default 0), gain on the new data at least ``minGain`` (no
requirement when unset). ``spec.gate.gainOn: heldback`` measures that gain on
the job's held-back experiments instead (``heldback_m``, scored against their
own labels, never trained on): the question a fleet asks of a sensor model is
whether it got better on devices it was not shown, not on the windows it was.
Both amounts are positive, in the metric's unit, counted in its better
direction (``spec.gate.direction``, else inferred from the name:
lower-is-better for ``escalation_rate``, ``far``, ``mar``, ``error_rate``,
``loss``): for ``intent_acc`` the gain is ``after - before``, for
``escalation_rate`` it is ``before - after``. ``spec.gate.guards`` bound further
metrics the same way on the fixed set only (``GuardRegression``; an unmeasured
guard metric is ``MetricMissing``), because a gain on ``m`` can hide a loss
elsewhere, e.g. more of the old traffic escalated to the cloud. A first version
(no parent) has nothing to regress from and passes on its own metrics.

Pure: metrics in, verdict out, so every rule is testable without a runner.
"""

from __future__ import annotations

from dataclasses import dataclass

from cloud_controller.resources.kinds import Gate, GateGuard

__all__ = ["GateVerdict", "evaluate_gate"]


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
    gain_set = gate.gain_on or "new"
    fk, nk = f"fixed_{m}", f"{gain_set}_{m}"
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
        if not after.get(f"{gain_set}_n"):
            if gain_set == "heldback":
                return GateVerdict(
                    False, "NoHeldBackData", f"no held-back data to measure a gain of {gate.min_gain} on"
                )
            return GateVerdict(False, "NoNewData", f"no new examples to measure a gain of {gate.min_gain} on")
        if gain_set == "heldback" and nk not in after:
            return GateVerdict(False, "MetricMissing", f"{nk} was not measured")
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
