"""The demo's sensor loop, offline, over several seeds: does v2 beat v1 on experiments nobody trained on?

Per seed, exactly the pieces ``make demo`` uses (:mod:`edgeloop_sim.demo_models`):

* v1 = the runner's first ``skab-sensor`` student on SKAB ``valve1`` (+ the anomaly-free recording);
* the sensor teacher = the runner's ensemble of wider students (one graph, context targets:
  :data:`~edgeloop_sim.demo_models.SENSOR_TEACHER_PARAMS`) on every SKAB experiment except the
  held-back ones (:data:`~edgeloop_sim.demo_models.SENSOR_HELD_BACK`, the demo's test devices);
* traffic = every other experiment (valve1, anomaly-free, the other half of valve2/other) scored
  by v1 through the edge runtime; each window inside the uncertainty band is a hard example,
  labelled by the controller's own labeller
  (:class:`~cloud_controller.teachers.sensor_labeller.SensorTeacher`) with the teacher bundle.
  No gold label of the traffic is used anywhere;
* one DistillationJob run with the demo's spec (``data.heldBack``, warm start from v1), judged by
  the demo's gate (:func:`~edgeloop_sim.demo_models.sensor_gate`: F1 gain on the held-back
  experiments at least ``minGain``, no F1 regression on valve1, the valve1 escalation guard);
* a control: the same job without hard examples, so a gain is the fleet's data, not the fine-tune.

Two ways to draw the seeds, both in the block: ``job`` (the demo's own v1 and teacher, the
recipe's seed, as ``make demo`` trains and caches them; the seed draws the job) answers "does the
demo's job pass its gate whatever its seed", and ``all`` (the seed draws v1, the teacher and the
job) answers "does one turn of the loop gain that much in general". The anomaly-free recording is
cut into the pseudo-devices training uses, as the demo replays it
(:data:`~edgeloop_sim.demo_models.SENSOR_FREE_CHUNK_ROWS`). Differences from the live demo: the
features come from the offline baseline of each experiment (the agents compute the same one
online, window by window), and every window in the band is kept (the demo's agents sample them
up to a per-minute cap, lifted in the demo).

    python bench/bench_sensor_loop.py [--seeds 0,1,2] [--draw job,all] [--config full|tiny] [--no-write]

Writes the ``bench:sensor-loop`` block of ``docs/benchmarks.md`` and of ``docs/training.md``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Literal

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench._report import command_line, machine_line, write_block  # noqa: E402
from edge_agent.ops.tables import markdown_table  # noqa: E402

BAND = (0.35, 0.65)
CACHE = REPO / ".cache" / "edgeloop" / "bench-sensor-loop"


def one_seed(
    config: Literal["tiny", "full"], seed: int, draw: str, work: Path, min_gain: float
) -> dict[str, Any]:
    import numpy as np

    from cloud_controller.distill_runner.job import run
    from cloud_controller.distill_runner.protocol import ProgressLog, RunnerSpec
    from cloud_controller.distill_runner.sensor_job import evaluate_fixed
    from cloud_controller.ingest.contracts import StoredHardExample
    from cloud_controller.ingest.hard_examples import write_snapshot
    from cloud_controller.reconcilers.distillation.gate import evaluate_gate
    from cloud_controller.resources.kinds import Gate
    from cloud_controller.teachers.sensor_labeller import load_sensor_teacher
    from cloud_controller.training.sensor_train import (
        BaselineDetector,
        SensorTrainConfig,
        build_files,
        prepare,
    )
    from edge_agent.models.sensor_runtime import SensorModel
    from edgeloop_sim.demo_models import (
        CACHE as DEMO_CACHE,
    )
    from edgeloop_sim.demo_models import (
        SENSOR_BASE,
        SENSOR_HELD_BACK,
        SENSOR_HELD_BACK_DATA,
        SENSOR_MODEL_NAME,
        ensure_sensor_models,
        sensor_gate,
    )

    models = ensure_sensor_models(
        config,
        cache=CACHE if draw == "all" else DEMO_CACHE,  # "job": the very bundles make demo caches
        seed=seed if draw == "all" else None,
        say=lambda m: print(f"  {m}", file=sys.stderr),
    )
    v1 = SensorModel(models.student).load()
    cfg = SensorTrainConfig.named(config)
    files, free, _ = build_files(cfg, None, lambda *_: None)
    held = [f for f in files if f.key in SENSOR_HELD_BACK]
    traffic = [f for f in [*files, *free] if f.key not in SENSOR_HELD_BACK]
    prepare([*files, *free], v1.spec, BaselineDetector())
    teacher = load_sensor_teacher(models.teacher)
    hard: list[StoredHardExample] = []
    for f in traffic:
        s = v1.score(f.z)
        rows = np.flatnonzero((s > BAND[0]) & (s < BAND[1]))
        labels = teacher.label([[float(v) for v in f.z[i]] for i in rows])
        for i, t in zip(rows, labels, strict=True):
            if t is None:
                continue
            hard.append(
                StoredHardExample(
                    id=f"{f.key}@{f.starts[i]:.0f}",
                    received=0.0,
                    created=float(f.starts[i]),
                    node="bench",
                    task="sensor",
                    text=None,
                    features=[float(v) for v in f.z[i]],
                    label=t["label"],
                    confidence=t["confidence"],
                    teacher=t,
                    student={"score": float(s[i])},
                )
            )
    d = work / f"{draw}-seed{seed}"
    d.mkdir(parents=True)
    write_snapshot(d / "hard.jsonl", hard)
    write_snapshot(d / "none.jsonl", [])
    gate = Gate.model_validate(sensor_gate(2.0, min_gain))
    out: dict[str, Any] = {"seed": seed, "hard_examples": len(hard)}
    for name, snap in (("v2", "hard.jsonl"), ("control", "none.jsonl")):
        spec = RunnerSpec(
            job=f"bench-sensor-loop-{draw}-{seed}-{name}",
            task="sensor",
            teacher="skab-sensor-teacher",
            base=SENSOR_BASE,
            held_back=SENSOR_HELD_BACK_DATA,
            config=config,
            output_model=SENSOR_MODEL_NAME,
            version="2",
            parent_version="1",
            parent_bundle=str(models.student),
            hard_examples_file=str(d / snap),
            uncertain_band=BAND,
            seed=seed,
        )
        t0 = time.monotonic()
        r = run(spec, d / name, ProgressLog(d / f"progress-{name}.jsonl"))
        verdict = evaluate_gate(gate, r["metrics_before"], r["metrics_after"])
        out[name] = {
            "seconds": round(time.monotonic() - t0, 1),
            "before": r["metrics_before"],
            "after": r["metrics_after"],
            "verdict": f"{verdict.reason}: {verdict.message}",
            "passed": verdict.passed,
        }
    out["teacher_heldback"] = evaluate_fixed(models.teacher, held, BAND, "heldback")
    return out


def _ms(xs: list[float]) -> str:
    """mean ± sample standard deviation (the spread over seeds)."""
    sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return f"{statistics.fmean(xs):.2f} ± {sd:.2f}"


def table(runs: list[dict[str, Any]]) -> tuple[str, str]:
    """The per-seed table with its mean ± sd row, and the one-line summary of the gain."""
    rows = []
    for r in runs:
        b, a, c = r["v2"]["before"], r["v2"]["after"], r["control"]["after"]
        rows.append(
            [
                f"seed {r['seed']}",
                r["hard_examples"],
                f"{b['heldback_f1']:.2f}",
                f"{c['heldback_f1']:.2f}",
                f"{a['heldback_f1']:.2f}",
                f"**{a['heldback_f1'] - b['heldback_f1']:+.2f}**",
                f"{b['fixed_f1']:.2f} → {a['fixed_f1']:.2f}",
                f"{100 * b['heldback_escalation_rate']:.1f} → {100 * a['heldback_escalation_rate']:.1f}",
                f"{r['teacher_heldback']['heldback_f1']:.2f}",
                "passed" if r["v2"]["passed"] else r["v2"]["verdict"].split(":")[0],
            ]
        )

    def col(f: Any) -> list[float]:
        return [float(f(r)) for r in runs]

    gains = col(lambda r: r["v2"]["after"]["heldback_f1"] - r["v2"]["before"]["heldback_f1"])
    ctrl = col(lambda r: r["control"]["after"]["heldback_f1"] - r["control"]["before"]["heldback_f1"])
    rows.append(
        [
            f"**mean ± sd ({len(runs)} seeds)**",
            "",
            _ms(col(lambda r: r["v2"]["before"]["heldback_f1"])),
            _ms(col(lambda r: r["control"]["after"]["heldback_f1"])),
            _ms(col(lambda r: r["v2"]["after"]["heldback_f1"])),
            f"**{_ms(gains)}**",
            f"{_ms(col(lambda r: r['v2']['before']['fixed_f1']))} → "
            f"{_ms(col(lambda r: r['v2']['after']['fixed_f1']))}",
            "",
            _ms(col(lambda r: r["teacher_heldback"]["heldback_f1"])),
            f"{sum(r['v2']['passed'] for r in runs)}/{len(runs)} passed",
        ]
    )
    summary = (
        f"held-back F1 gain v1 → v2: **{_ms(gains)}** points (min {min(gains):+.2f}); the control (no hard "
        f"examples) moves it by {_ms(ctrl)}."
    )
    return (
        markdown_table(
            [
                "run",
                "hard examples",
                "held-back F1 v1",
                "control",
                "v2",
                "gain v1 → v2",
                "valve1 F1 v1 → v2",
                "held-back escalation % v1 → v2",
                "teacher F1 (held-back)",
                "gate",
            ],
            rows,
        ),
        summary,
    )


DRAWS = {
    "job": "the demo's v1 and teacher (the recipe's seed, the bundles `make demo` caches); the seed "
    "draws the job",
    "all": "the seed draws v1, the teacher and the job",
}


def teacher_recipe() -> str:
    """The teacher in words, from the demo's own parameters (so the block cannot go stale)."""
    from edgeloop_sim.demo_models import SENSOR_TEACHER_PARAMS as p

    size = f"{int(p.get('hidden', 32))}-{int(p.get('hidden2', 16))}"
    members, context = int(p.get("members", 1)), int(p.get("context", 1))
    if members > 1:
        what = f"the mean of {members} wider students ({size} MLPs, one int8 graph)"
    else:
        what = f"a wider student ({size} MLP)"
    if context > 1:
        what += f" trained on context targets (the detector's highest score over {context} windows)"
    return what


def render(by_draw: dict[str, list[dict[str, Any]]], config: str, min_gain: float) -> str:
    from edgeloop_sim.demo_models import SENSOR_HELD_BACK

    held = ", ".join(SENSOR_HELD_BACK)
    out = [
        f"The demo's sensor loop, offline (`bench/bench_sensor_loop.py --config {config}`), "
        "one run per seed.",
        f"Machine: {machine_line()}.",
        "",
        "v1 = the demo's first `skab-sensor` student (valve1 + anomaly-free); teacher = "
        f"{teacher_recipe()} on every SKAB experiment except the held-back ones; "
        "traffic = every other experiment through v1, "
        f"windows scored inside {BAND[0]}-{BAND[1]} labelled by the controller's sensor labeller (no gold "
        "labels); one DistillationJob with the demo's spec. **Held-back** = the "
        f"{len(SENSOR_HELD_BACK)} test experiments ({held}), which neither v1, the teacher nor the job "
        "trains on: F1 point-wise against their labels (SKAB protocol, %). Control = the same job without "
        f"hard examples. Gate = the demo's: held-back F1 gain >= {min_gain:g}, valve1 F1 may not fall by "
        "more than 2, valve1 escalation rate may not rise by more than 0.05.",
        "",
    ]
    for draw, runs in by_draw.items():
        t, summary = table(runs)
        out += [f"**Seeds: {DRAWS[draw]}** ({len(runs)} seeds): {summary}", "", t, ""]
    out.append(f"Command: `{command_line()}`")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", choices=["full", "tiny"], default="full")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--draw", default="job,all", help="job: the demo's v1 and teacher; all: drawn per seed")
    ap.add_argument("--min-gain", type=float, default=2.0, help="the gate's minGain (the demo's default)")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    seeds = [int(x) for x in args.seeds.split(",") if x.strip()]
    with tempfile.TemporaryDirectory(prefix="bench-sensor-loop-") as tmp:
        runs = {
            draw: [one_seed(args.config, s, draw, Path(tmp), args.min_gain) for s in seeds]
            for draw in args.draw.split(",")
            if draw in DRAWS
        }
    body = render(runs, args.config, args.min_gain)
    print(body)
    print(json.dumps(runs, indent=2, default=str), file=sys.stderr)
    if not args.no_write:
        write_block("sensor-loop", body)
        write_block("sensor-loop", body, REPO / "docs" / "training.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
