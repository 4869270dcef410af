"""One turn of the loop on real data, offline: before/after numbers; writes the ``bench:loop`` block.

Chat. v1 = the demo's first student (SNIPS train without the held-back intents
``AddToPlaylist`` and ``RateBook``, :mod:`edgeloop_sim.demo_models`). Traffic =
a sample of SNIPS *train* utterances (half held-back intents); the ones v1
answers below the escalation threshold are escalated, i.e. answered by the
teacher (the demo's full-data int8 student) and kept as hard examples with the
teacher's intent and tags, exactly what a node uploads. One DistillationJob
run (:func:`cloud_controller.distill_runner.job.run`, the same code the reconciler
starts) re-distils v2 from the base data + those hard examples. Both versions
are then scored through the edge runtime on SNIPS *test*: the held-back
intents (accuracy, escalation rate at the same threshold) and the original
test set (all intents, and the intents v1 was trained on: no regression).

Sensors. A SKAB student trained on ``valve1`` experiments (+ anomaly-free
data) meets ``valve2`` and ``other``. Half of those experiments (alternate
files) are the "new traffic" whose windows reach the cloud with the
teacher's soft labels (no gold labels are used in training); v2 is trained on
valve1 + that half. Both are scored (point-wise F1, SKAB protocol) on the
other half, which neither saw.

    python bench/bench_loop.py [--config full|tiny] [--no-write]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench._report import command_line, machine_line, write_block  # noqa: E402
from edge_agent.ops.tables import markdown_table  # noqa: E402


def chat(
    config: Literal["tiny", "full"], threshold: float, n_traffic: int, work: Path, job_teacher: str
) -> dict[str, Any]:
    from cloud_controller.datasets.snips import load_snips
    from cloud_controller.distill_runner.chat_job import evaluate_bundle
    from cloud_controller.distill_runner.job import run
    from cloud_controller.distill_runner.protocol import ProgressLog, RunnerSpec
    from cloud_controller.ingest.contracts import StoredHardExample
    from cloud_controller.ingest.hard_examples import write_snapshot
    from edge_agent.models.chat_runtime import ChatModel
    from edgeloop_sim.demo_models import DEMO_EPOCHS, MODEL_NAME, base_spec, ensure_models

    epochs = None if config == "tiny" else DEMO_EPOCHS
    m = ensure_models(config, epochs=epochs)
    held = m.held_back
    rng = random.Random(7)
    train = load_snips("train")
    traffic = rng.sample([e for e in train if e.intent in held], n_traffic // 2) + rng.sample(
        [e for e in train if e.intent not in held], n_traffic - n_traffic // 2
    )
    v1, teacher = ChatModel(m.student), ChatModel(m.teacher)
    s_pred = v1.predict_batch([e.text for e in traffic])
    esc = [e for e, p in zip(traffic, s_pred, strict=True) if p.confidence < threshold]
    t_pred = teacher.predict_batch([e.text for e in esc])
    hard = [
        StoredHardExample(
            id=f"h{i}",
            received=0.0,
            created=0.0,
            node="bench",
            task="chat",
            text=e.text,
            features=None,
            label=p.intent,
            confidence=p.confidence,
            teacher={
                "intent": p.intent,
                "slots": dict(p.slots),
                "confidence": p.confidence,
                "tags": list(p.tags),
            },
            student={},
        )
        for i, (e, p) in enumerate(zip(esc, t_pred, strict=True))
    ]
    write_snapshot(work / "hard.jsonl", hard)
    spec = RunnerSpec(
        job="bench-loop",
        task="chat",
        teacher=f"bundle:{m.teacher}" if job_teacher == "bundle" else "labels",
        base=base_spec(held),
        epochs=epochs,
        config=config,
        output_model=MODEL_NAME,
        version="2",
        parent_version="1",
        parent_bundle=str(m.student),
        hard_examples_file=str(work / "hard.jsonl"),
        escalation_threshold=threshold,
    )
    t0 = time.monotonic()
    result = run(spec, work / "job", ProgressLog(work / "progress.jsonl"))
    job_s = time.monotonic() - t0
    v2 = work / "job" / result["bundle"]
    test = load_snips("test")
    sets = {
        "held-back intents (SNIPS test)": [e for e in test if e.intent in held],
        "other intents (SNIPS test, v1's own)": [e for e in test if e.intent not in held],
        "original test set (all intents)": test,
    }
    rows = {}
    for name, ex in sets.items():
        rows[name] = {
            "v1": evaluate_bundle(m.student, ex, threshold, "m"),
            "v2": evaluate_bundle(v2, ex, threshold, "m"),
        }
    return {
        "threshold": threshold,
        "traffic": len(traffic),
        "escalated": len(esc),
        "escalated_held_back": sum(e.intent in held for e in esc),
        "teacher_acc_on_escalated": round(
            100 * sum(p.intent == e.intent for e, p in zip(esc, t_pred, strict=True)) / max(1, len(esc)), 2
        ),
        "job_seconds": round(job_s, 1),
        "job_teacher": job_teacher,
        "job_metrics_before": result["metrics_before"],
        "job_metrics_after": result["metrics_after"],
        "sets": rows,
        "held_back": list(held),
    }


def sensors(config: Literal["tiny", "full"], seeds: list[int], work: Path) -> dict[str, Any]:
    """One turn of the sensor loop per seed: v1 on valve1, hard examples from valve2/other, one job."""
    import numpy as np

    from cloud_controller.distill_runner.job import run
    from cloud_controller.distill_runner.protocol import ProgressLog, RunnerSpec
    from cloud_controller.distill_runner.sensor_job import evaluate_fixed
    from cloud_controller.ingest.contracts import StoredHardExample
    from cloud_controller.ingest.hard_examples import write_snapshot
    from cloud_controller.training.sensor_train import (
        BaselineDetector,
        SensorTrainConfig,
        build_files,
        evaluate,
        export_student,
        fit_floor,
        prepare,
        soft_targets,
        train_student,
        write_sensor_bundle,
    )
    from edge_agent.models.sensor_runtime import SensorModel

    band = (0.35, 0.65)
    cfg0 = SensorTrainConfig.named(config)
    files, free, raw = build_files(cfg0, None, lambda *_: None)
    v1_files = [f for f in files if f.key.startswith("valve1")]
    new = [f for f in files if not f.key.startswith("valve1")]
    seen, unseen = new[0::2], new[1::2]
    if not v1_files or not unseen:
        return {"skipped": f"groups missing in config {config}: {[f.key for f in files]}"}
    spec = fit_floor([*v1_files, *free], raw, cfg0.floor_frac)  # v1 knows only its own devices
    prepare([*files, *free], spec, BaselineDetector())
    teacher = evaluate(unseen, [f.teacher > 1.0 for f in unseen])
    gold_teacher = np.concatenate([f.teacher > 1.0 for f in unseen])

    def agreement(bundle: Path) -> float:
        m = SensorModel(bundle).load()
        pred = np.concatenate([m.score(f.z) > m.threshold for f in unseen])
        return round(100 * float((pred == gold_teacher).mean()), 2)

    runs = []
    for seed in seeds:
        cfg = replace(cfg0, seed=seed)
        d = work / f"sensor-seed{seed}"
        v1 = d / "v1"
        model = train_student([*v1_files, *free], cfg, spec.n_features)
        export_student(model, spec.n_features, d / "v1.fp32.onnx", d / "v1.int8.onnx")
        write_sensor_bundle(v1, d / "v1.int8.onnx", spec, 0.5, {"name": "skab-sensor", "version": "1"})
        # Traffic: the "seen" experiments stream through v1 on the edge; windows inside the band
        # are escalated and labelled by the teacher (its soft score), as a node would upload them.
        sm = SensorModel(v1).load()
        hard = []
        for f in seen:
            s = sm.score(f.z)
            p = soft_targets(f.teacher, cfg.sharpness)
            for i in np.flatnonzero((s > band[0]) & (s < band[1])):
                pi = float(p[i])
                hard.append(
                    StoredHardExample(
                        id=f"{f.key}@{f.starts[i]:.0f}",
                        received=0.0,
                        created=float(f.starts[i]),
                        node="bench",
                        task="sensor",
                        text=None,
                        features=[round(float(v), 5) for v in f.z[i]],
                        label="anomaly" if pi > 0.5 else "normal",
                        confidence=max(pi, 1 - pi),
                        teacher={"label": "anomaly" if pi > 0.5 else "normal", "score": pi},
                        student={"score": float(s[i])},
                    )
                )
        write_snapshot(d / "hard.jsonl", hard)
        job = RunnerSpec(
            job=f"bench-loop-sensor-{seed}",
            task="sensor",
            base="skab?groups=valve1",
            config=config,
            output_model="skab-sensor",
            version="2",
            parent_version="1",
            parent_bundle=str(v1),
            hard_examples_file=str(d / "hard.jsonl"),
            uncertain_band=band,
            seed=seed,
        )
        t0 = time.monotonic()
        result = run(job, d / "job", ProgressLog(d / "progress.jsonl"))
        job_s = time.monotonic() - t0
        v2 = d / "job" / result["bundle"]
        # Control: the same job without the fleet's data, so the gain is not the fine-tune itself.
        write_snapshot(d / "none.jsonl", [])
        control = job.model_copy(update={"hard_examples_file": str(d / "none.jsonl")})
        v2c = d / "control" / run(control, d / "control", ProgressLog(d / "progress-control.jsonl"))["bundle"]
        runs.append(
            {
                "seed": seed,
                "hard_examples": len(hard),
                "job_seconds": round(job_s, 1),
                "v1": {**evaluate_fixed(v1, unseen, band, "m"), "m_agree": agreement(v1)},
                "control": {**evaluate_fixed(v2c, unseen, band, "m"), "m_agree": agreement(v2c)},
                "v2": {**evaluate_fixed(v2, unseen, band, "m"), "m_agree": agreement(v2)},
                "job_before": result["metrics_before"],
                "job_after": result["metrics_after"],
            }
        )

    def mean(ver: str, k: str) -> float:
        return round(float(np.mean([r[ver][k] for r in runs])), 3)

    keys = ("m_f1", "m_far", "m_mar", "m_escalation_rate", "m_agree")
    return {
        "band": band,
        "train_v1": len(v1_files),
        "new_seen": len(seen),
        "eval": len(unseen),
        "eval_keys": [f.key for f in unseen],
        "windows_eval": int(np.sum([len(f.starts) for f in unseen])),
        "teacher": {k: round(float(teacher[k]), 3) for k in ("f1", "far", "mar")},
        "runs": runs,
        "mean": {ver: {k: mean(ver, k) for k in keys} for ver in ("v1", "control", "v2")},
    }


def render(c: dict[str, Any], s: dict[str, Any], config: str) -> str:
    rows = []
    for name, r in c["sets"].items():
        v1, v2 = r["v1"], r["v2"]
        rows.append(
            [
                name,
                int(v1["m_n"]),
                f"{v1['m_intent_acc']:.2f} → {v2['m_intent_acc']:.2f}",
                f"{100 * v1['m_escalation_rate']:.1f} → {100 * v2['m_escalation_rate']:.1f}",
                f"{v1['m_slot_f1']:.2f} → {v2['m_slot_f1']:.2f}",
            ]
        )
    out = [
        f"One turn of the loop, offline (`bench/bench_loop.py --config {config}`).",
        f"Machine: {machine_line()}.",
        "",
        f"Chat: v1 trained without {', '.join(c['held_back'])}; {c['traffic']} SNIPS train utterances of "
        f"traffic, {c['escalated']} escalated at confidence < {c['threshold']} "
        f"({c['escalated_held_back']} of the held-back "
        f"intents; teacher right on {c['teacher_acc_on_escalated']}% of them); re-distillation took "
        f"{c['job_seconds']} s (job teacher: {c['job_teacher']}). Scored through the edge runtime (int8), "
        "v1 → v2:",
        "",
        markdown_table(
            ["SNIPS test subset", "utterances", "intent acc %", "escalation rate %", "slot F1"], rows
        ),
        "",
    ]
    if "skipped" in s:
        out.append(f"Sensors: skipped ({s['skipped']}).")
    else:
        names = {"v1": "v1", "control": "same job, no hard examples", "v2": "v2"}
        rows = []
        for r in s["runs"]:
            for ver in ("v1", "control", "v2"):
                m = r[ver]
                extra = f" ({r['hard_examples']} hard examples)" if ver == "v2" else ""
                rows.append(
                    [
                        f"seed {r['seed']}: {names[ver]}{extra}",
                        f"{m['m_f1']:.1f}",
                        f"{m['m_far']:.1f}",
                        f"{m['m_mar']:.1f}",
                        f"{100 * m['m_escalation_rate']:.1f}",
                        f"{m['m_agree']:.1f}",
                    ]
                )
        for ver in ("v1", "control", "v2"):
            m = s["mean"][ver]
            rows.append(
                [
                    f"**mean {names[ver]}**",
                    f"**{m['m_f1']:.1f}**",
                    f"{m['m_far']:.1f}",
                    f"{m['m_mar']:.1f}",
                    f"**{100 * m['m_escalation_rate']:.1f}**",
                    f"**{m['m_agree']:.1f}**",
                ]
            )
        t = s["teacher"]
        rows.append(
            [
                "teacher (per-experiment detector)",
                f"{100 * t['f1']:.1f}",
                f"{t['far']:.1f}",
                f"{t['mar']:.1f}",
                "",
                "100",
            ]
        )
        lo, hi = s["band"]
        out += [
            f"Sensors (SKAB): v1 trained on the {s['train_v1']} valve1 experiments (+ anomaly-free data). "
            f"The other groups' experiments alternate: {s['new_seen']} stream through v1 as new traffic "
            f"(windows scored inside the uncertainty band {lo} to {hi} are escalated and labelled by the "
            f"teacher's soft score, no gold labels), one DistillationJob run "
            f"(`cloud_controller.distill_runner`, task sensor: warm start from v1, "
            f"fine-tuned on valve1 + "
            f"those hard examples) gives v2; both are scored through the edge runtime (int8) on the other "
            f"{s['eval']} valve2/other experiments ({s['windows_eval']} windows), which neither saw. "
            f"F1/FAR/MAR point-wise (SKAB protocol, %); escalation = windows in the band; agreement = "
            f"window decisions equal to the teacher's. One run per seed (the seed draws v1 and the job); "
            f"the control row is the same job with no hard examples:",
            "",
            markdown_table(
                ["model", "F1 %", "FAR %", "MAR %", "escalation %", "agreement with teacher %"], rows
            ),
            "",
        ]
    out.append(f"Command: `{command_line()}`")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", choices=["full", "tiny"], default="full")
    ap.add_argument("--threshold", type=float, default=0.5)
    ap.add_argument("--traffic", type=int, default=600)
    ap.add_argument(
        "--job-teacher",
        choices=["labels", "bundle"],
        default="labels",
        help="labels: gold labels for the base data, the teacher's answers for the hard examples; "
        "bundle: also soft targets from the teacher bundle on everything",
    )
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--skip-sensors", action="store_true")
    ap.add_argument("--skip-chat", action="store_true", help="sensors only (prints, never writes)")
    ap.add_argument("--seeds", default="0,1,2", help="sensor runs, one per seed")
    args = ap.parse_args(argv)
    seeds = [int(x) for x in args.seeds.split(",") if x.strip()]
    with tempfile.TemporaryDirectory(prefix="bench-loop-") as tmp:
        s = {"skipped": "--skip-sensors"} if args.skip_sensors else sensors(args.config, seeds, Path(tmp))
        if args.skip_chat:
            print(json.dumps(s, indent=2, default=str))
            return 0
        c = chat(args.config, args.threshold, args.traffic, Path(tmp), args.job_teacher)
    body = render(c, s, args.config)
    print(body)
    print(json.dumps({"chat": c, "sensors": s}, indent=2, default=str), file=sys.stderr)
    if not args.no_write:
        write_block("loop", body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
