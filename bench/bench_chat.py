"""Benchmark the SNIPS chat models and write the ``bench:chat`` block of ``docs/benchmarks.md``.

    python bench/bench_chat.py [--config full|tiny] [--out var/bench-chat] [--reuse]

Trains via ``cloud_controller.training.chat_train run('all')`` (the teacher is
cached in ``.cache/edgeloop/teacher-chat/``; ``--reuse`` also reuses a previous
``metrics.json`` + bundle in ``--out``), then measures single-utterance latency
of the int8 bundle through the edge runtime (``ChatModel.predict``: tokenizer +
onnxruntime + decoding) on one intra-op thread.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from _report import command_line, cpu_model, write_marked_block  # noqa: E402

from cloud_controller.datasets.snips import load_snips  # noqa: E402
from edge_agent.models.chat_runtime import ChatModel  # noqa: E402

START, END = "<!-- bench:chat:start -->", "<!-- bench:chat:end -->"


def latency(bundle: Path, texts: list[str], rounds: int = 3) -> dict[str, float]:
    model = ChatModel(bundle, intra_op_num_threads=1)
    for t in texts[:50]:
        model.predict(t)
    samples, session = [], []
    enc = [model.tokenizer.to_ids(t) for t in texts]
    for _ in range(rounds):
        for t, e in zip(texts, enc, strict=True):
            t0 = time.perf_counter()
            model.predict(t)
            t1 = time.perf_counter()
            model.run_logits(e.word_ids, e.ngram_ids)
            t2 = time.perf_counter()
            samples.append(t1 - t0)
            session.append(t2 - t1)
    ms = np.array(samples) * 1e3
    ss = np.array(session) * 1e3
    return {
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "session_p50_ms": float(np.percentile(ss, 50)),
        "session_p99_ms": float(np.percentile(ss, 99)),
        "n": len(ms),
    }


def _row(name: str, m: dict[str, float]) -> str:
    return f"| {name} | {m['intent_acc']:.2f} | {m['slot_f1']:.2f} | {m['sentence_acc']:.2f} |"


def _members(report: dict[str, Any]) -> str:
    n = int(report["config"].get("teacher", {}).get("members", 1))
    return f", {n} members averaged" if n > 1 else ""


def render(report: dict[str, Any], lat: dict[str, float], command: str, note: str = "") -> str:
    t, s, h = report["teacher"], report["student"], report["student_hard"]
    mb = 1024 * 1024
    bundle_b, teacher_b = report["bundle"]["size_bytes"], t["size_bytes"]
    cpu = cpu_model()
    d_int8, d_fp32 = s["test_int8"], s["test_fp32"]
    lines = [
        START,
        f"### Chat: SNIPS joint intent + slots (test, n={report['n_test']})",
        "",
        "| model | intent acc % | slot F1 (conlleval) | sentence acc % |",
        "|---|---|---|---|",
        _row(f"teacher: all-MiniLM-L6-v2 fine-tuned{_members(report)}", t["test"]),
        _row("student distilled, fp32 ONNX", d_fp32),
        _row("student distilled, int8 ONNX (the bundle)", d_int8),
        _row("student hard labels only (no teacher), torch fp32", h["test_torch"]),
        "",
        f"- int8 vs fp32: intent {d_int8['intent_acc'] - d_fp32['intent_acc']:+.2f}, "
        f"slot F1 {d_int8['slot_f1'] - d_fp32['slot_f1']:+.2f} points",
        f"- distillation vs hard labels (fp32): "
        f"intent {d_fp32['intent_acc'] - h['test_torch']['intent_acc']:+.2f}, "
        f"slot F1 {d_fp32['slot_f1'] - h['test_torch']['slot_f1']:+.2f} points",
        f"- sizes: bundle {bundle_b / mb:.2f} MB (int8 model {s['int8_bytes'] / mb:.2f} MB, fp32 "
        f"{s['fp32_bytes'] / mb:.2f} MB); teacher weights {teacher_b / mb:.1f} MB; "
        f"bundle = 1/{teacher_b / bundle_b:.0f} of the teacher",
        f"- latency, one utterance, int8, 1 thread (`ChatModel.predict`, tokenizer + session + decode, "
        f"n={lat['n']}): p50 {lat['p50_ms']:.3f} ms, p99 {lat['p99_ms']:.3f} ms "
        f"(session only: p50 {lat['session_p50_ms']:.3f} ms, p99 {lat['session_p99_ms']:.3f} ms)",
        f"- training time: teacher {t['train_seconds'] / 60:.1f} min (cached after the first run), "
        f"distilled student {s['train']['train_seconds'] / 60:.1f} min, "
        f"hard-label student {h['train']['train_seconds'] / 60:.1f} min "
        f"({report['config']['epochs']} epochs each on {s['train']['n_train']} utterances "
        "incl. slot-swap augmentation)",
        f"- machine: {cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"torch threads {os.environ.get('EDGELOOP_TORCH_THREADS', '1')}; measured {report['created'][:19]}Z",
        f"- command: `{command}`{note}",
        END,
    ]
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="full", choices=["tiny", "full", "large"])
    p.add_argument("--out", type=Path, default=ROOT / "var" / "bench-chat")
    p.add_argument("--reuse", action="store_true", help="reuse OUT/metrics.json and OUT/bundle if present")
    p.add_argument("--doc", type=Path, default=ROOT / "docs" / "benchmarks.md")
    args = p.parse_args()
    metrics = args.out / "metrics.json"
    if args.reuse and metrics.is_file() and (args.out / "bundle").is_dir():
        report = json.loads(metrics.read_text())
    else:
        from cloud_controller.training.chat_train import CONFIGS, run

        report = run("all", CONFIGS[args.config], args.out)
    texts = [e.text for e in load_snips("test")]
    lat = latency(args.out / "bundle", texts)
    report["latency"] = lat
    metrics.write_text(json.dumps(report, indent=2))
    note = ""
    if args.reuse:
        note = f" (models and figures from the run of {report['created'][:16]} UTC; latency re-measured)"
    block = render(report, lat, command_line(), note)
    write_marked_block(args.doc, block)
    print(block)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
