"""The ``train`` verb's report: ``report.json`` (every number) and ``report.md`` (tables a person reads)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["chat_markdown", "sensor_markdown", "write_report"]


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
        *("| " + " | ".join(r) + " |" for r in rows),
    ]


def _common(r: dict[str, Any]) -> list[str]:
    out = [f"# Training report: {r['task']} ({r['config']})", "", f"Data: `{r['data']}` ({r['format']})", ""]
    out += [f"- {n}" for n in r.get("notes", [])] + ([""] if r.get("notes") else [])
    secs = r.get("stage_seconds", {})
    if secs:
        out += ["## Stages (seconds, this work dir)", ""]
        out += [*_table(["stage", "seconds"], [[k, f"{v:.1f}"] for k, v in secs.items()]), ""]
    return out


def chat_markdown(r: dict[str, Any]) -> str:
    out = _common(r)
    m = r["test"]
    split_rows = [[k, str(v)] for k, v in r["sizes"].items()]
    out += ["## Splits", "", *_table(["split", "utterances"], split_rows), ""]
    out += ["## Test (int8 student)", ""]
    rows = [
        ["intent accuracy", f"{m['intent_acc']:.2f}", f"{m['intent_acc_macro']:.2f}"],
        ["slot F1", f"{m['slot_f1']:.2f}", f"{m['slot_f1_macro']:.2f}"],
        ["sentence accuracy", f"{m['sentence_acc']:.2f}", ""],
    ]
    out += _table(["metric", "micro", "macro"], rows)
    if "teacher_test" in r:
        t = r["teacher_test"]
        out += ["", f"Teacher on test: intent {t['intent_acc']:.2f}, slot F1 {t['slot_f1']:.2f}."]
    out += [
        "",
        f"Model: {r['model_bytes'] / 1e6:.2f} MB int8 (bundle {r['bundle_bytes'] / 1e6:.2f} MB); "
        f"latency per utterance p50 {r['latency_ms']['p50']:.2f} ms, p95 {r['latency_ms']['p95']:.2f} ms "
        "(1 thread).",
        "",
    ]
    un = r["unseen"]
    for split in ("valid", "test"):
        u = un[split]
        if u["intents"] or u["slots"]:
            out.append(
                f"Unseen in train, counted as errors in {split}: intents {u['intents'] or '{}'}; "
                f"slot types {u['slots'] or '{}'}."
            )
    out += ["", "## Per intent (test)", ""]
    out += _table(
        ["intent", "n", "accuracy", "in train"],
        [
            [k, str(v["n"]), f"{v['accuracy']:.2f}", "yes" if v["seen_in_train"] else "**no**"]
            for k, v in m["per_intent"].items()
        ],
    )
    out += ["", "## Per slot type (test)", ""]
    out += _table(
        ["slot", "n", "precision", "recall", "F1", "in train"],
        [
            [
                k,
                str(v["n"]),
                f"{v['precision']:.2f}",
                f"{v['recall']:.2f}",
                f"{v['f1']:.2f}",
                "yes" if v["seen_in_train"] else "**no**",
            ]
            for k, v in m["per_slot"].items()
        ],
    )
    if m["worst_intent_confusions"]:
        out += ["", "## Worst intents: predicted as", ""]
        out += _table(
            ["gold intent", "predicted (count)"],
            [
                [k, ", ".join(f"{p} ({c})" for p, c in v.items())]
                for k, v in m["worst_intent_confusions"].items()
            ],
        )
    out += ["", f"Bundle: `{r['bundle']}` (release it with `cloud-controller release {r['bundle']} ...`)", ""]
    return "\n".join(out)


def sensor_markdown(r: dict[str, Any]) -> str:
    out = _common(r)
    out += ["## Detection (row-wise, summed over series)", ""]
    rows = []
    for name, m in r["metrics"].items():
        rows.append(
            [
                name,
                f"{m['f1']:.3f}",
                f"{m['precision']:.2f}",
                f"{m['recall']:.2f}",
                f"{m['far']:.2f}",
                f"{m['mar']:.2f}",
            ]
        )
    out += _table(["model", "F1", "precision %", "recall %", "FAR %", "MAR %"], rows)
    out += [
        "",
        f"{r['n_series']} series, {r['n_windows']} windows of {r['window_s']:g} s, "
        f"{r['n_features']} features; model {r['model_bytes'] / 1e3:.1f} kB int8, "
        f"latency per window p50 {r['latency_ms']['p50']:.3f} ms.",
        "",
        f"Bundle: `{r['bundle']}` (release it with `cloud-controller release {r['bundle']} ...`)",
        "",
    ]
    return "\n".join(out)


def write_report(out: Path, report: dict[str, Any], markdown: str) -> None:
    (out / "report.json").write_text(json.dumps(report, indent=2, default=str), encoding="utf-8")
    (out / "report.md").write_text(markdown, encoding="utf-8")
