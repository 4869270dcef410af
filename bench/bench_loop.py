"""One turn of the loop on real data, offline: before/after numbers; writes the ``bench:loop`` block.

Chat. v1 = the demo's first student (SNIPS train without the held-back intents
``AddToPlaylist`` and ``RateBook``, :mod:`edgeloop_sim.demo_models`). Traffic =
a sample of SNIPS *train* utterances (half held-back intents); the ones v1
answers below the escalation threshold are escalated, i.e. answered by the
teacher (the demo's full-data int8 student) and kept as hard examples with the
teacher's intent and tags, exactly what a node uploads. One DistillationJob
run (:func:`cloud_controller.distill_job.run`, the same code the reconciler
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
from pathlib import Path
from typing import Any, Literal

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench._report import command_line, machine_line, markdown_table, write_block  # noqa: E402


def chat(
    config: Literal["tiny", "full"], threshold: float, n_traffic: int, work: Path, job_teacher: str
) -> dict[str, Any]:
    from cloud_controller.datasets.snips import load_snips
    from cloud_controller.distill_job import Progress, RunnerSpec, evaluate_bundle, run
    from cloud_controller.hard_examples import StoredHardExample
    from edge_agent.inference.chat_runtime import ChatModel
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
    (work / "hard.jsonl").write_text("".join(json.dumps(h.to_json()) + "\n" for h in hard))
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
    result = run(spec, work / "job", Progress(work / "progress.jsonl"))
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


def sensors(config: str) -> dict[str, Any]:
    import numpy as np

    from cloud_controller.training.sensor_train import (
        SensorTrainConfig,
        Teacher,
        build_files,
        evaluate,
        fit_floor,
        prepare,
        torch_scores,
        train_student,
    )

    cfg = SensorTrainConfig.named(config)
    files, free, spec = build_files(cfg, None, lambda *_: None)
    spec = fit_floor([*files, *free], spec, cfg.floor_frac)
    prepare([*files, *free], spec, Teacher())
    v1_files = [f for f in files if f.key.startswith("valve1")]
    new = [f for f in files if not f.key.startswith("valve1")]
    seen, unseen = new[0::2], new[1::2]
    if not v1_files or not unseen:
        return {"skipped": f"groups missing in config {config}: {[f.key for f in files]}"}
    a = train_student([*v1_files, *free], cfg, spec.n_features)
    b = train_student([*v1_files, *seen, *free], cfg, spec.n_features)
    before = evaluate(unseen, [torch_scores(a, f.z) > 0.5 for f in unseen])
    after = evaluate(unseen, [torch_scores(b, f.z) > 0.5 for f in unseen])
    teacher = evaluate(unseen, [f.teacher > 1.0 for f in unseen])
    return {
        "train_v1": len(v1_files),
        "new_seen": len(seen),
        "eval": len(unseen),
        "eval_keys": [f.key for f in unseen][:50],
        "before": {k: round(float(before[k]), 3) for k in ("f1", "far", "mar")},
        "after": {k: round(float(after[k]), 3) for k in ("f1", "far", "mar")},
        "teacher": {k: round(float(teacher[k]), 3) for k in ("f1", "far", "mar")},
        "windows_eval": int(np.sum([len(f.starts) for f in unseen])),
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
        out += [
            f"Sensors (SKAB): student trained on {s['train_v1']} valve1 experiments (+ anomaly-free data) "
            f"meets valve2/other; v2 adds {s['new_seen']} of those experiments with the teacher's soft "
            f"labels; scored on "
            f"the other {s['eval']} ({s['windows_eval']} windows), point-wise:",
            "",
            markdown_table(
                ["model", "F1", "FAR %", "MAR %"],
                [
                    ["v1 (valve1)", s["before"]["f1"], s["before"]["far"], s["before"]["mar"]],
                    ["v2 (+ new traffic)", s["after"]["f1"], s["after"]["far"], s["after"]["mar"]],
                    ["teacher", s["teacher"]["f1"], s["teacher"]["far"], s["teacher"]["mar"]],
                ],
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
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-loop-") as tmp:
        c = chat(args.config, args.threshold, args.traffic, Path(tmp), args.job_teacher)
    s = {"skipped": "--skip-sensors"} if args.skip_sensors else sensors(args.config)
    body = render(c, s, args.config)
    print(body)
    print(json.dumps({"chat": c, "sensors": s}, indent=2, default=str), file=sys.stderr)
    if not args.no_write:
        write_block("loop", body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
