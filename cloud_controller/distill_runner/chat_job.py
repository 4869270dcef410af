"""The chat half of a DistillationJob run: SNIPS base data + the fleet's escalated utterances.

Collect, re-distill, quantize, evaluate (:func:`run_chat`, started through
:mod:`cloud_controller.distill_runner.job`); files and metric naming follow
:mod:`cloud_controller.distill_runner.protocol`.

Evaluation goes through the edge's own inference code
(:class:`edge_agent.models.chat_runtime.ChatModel` on the int8 bundle), so
the numbers are what a node will see. Metric keys: ``fixed_*`` on the fixed
evaluation set (SNIPS test restricted to the base's intents), ``new_*`` on the
held-out part of the new hard examples (teacher labels as gold), both for the
parent bundle (``metrics_before``) and the new one (``metrics_after``). The
sensor task (:mod:`cloud_controller.distill_runner.sensor_job`) follows the same
naming with SKAB experiment groups as the base data.

Training modules (torch, the train extra) are imported inside the functions that
need them, so reading this module costs no torch.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from cloud_controller.datasets.snips import Example, label_sets, load_snips
from cloud_controller.distill_runner.collect import held_out, load_hard_examples
from cloud_controller.distill_runner.protocol import ProgressLog, RunnerSpec, parse_base
from cloud_controller.ingest.contracts import StoredHardExample
from cloud_controller.training.nlu_metrics import evaluate_nlu
from edge_agent.models.bundle import write_bundle
from edge_agent.models.chat_runtime import ChatModel
from edge_agent.models.tokenizer import Tokenizer

__all__ = ["evaluate_bundle", "run_chat", "to_example"]


def _tags_from_slots(tokens: Sequence[str], slots: dict[str, Any]) -> list[str]:
    """BIO tags from the teacher's slot values, when it sent no per-token tags: first match of each value."""
    tags = ["O"] * len(tokens)
    for slot, value in slots.items():
        words = Tokenizer.split(str(value))
        n = len(words)
        for i in range(len(tokens) - n + 1 if n else 0):
            if list(tokens[i : i + n]) == words and all(t == "O" for t in tags[i : i + n]):
                tags[i] = f"B-{slot}"
                for j in range(i + 1, i + n):
                    tags[j] = f"I-{slot}"
                break
    return tags


def to_example(h: StoredHardExample, intents: set[str], tags: set[str]) -> Example | None:
    """A training example from the teacher's answer; None when its labels are outside the label sets."""
    tokens = Tokenizer.split(h.text or "")
    if not tokens or h.label not in intents:
        return None
    teacher = h.teacher or {}
    t = teacher.get("tags")
    ex_tags = [str(x) for x in t] if isinstance(t, list) and len(t) == len(tokens) else None
    if ex_tags is None:
        ex_tags = _tags_from_slots(tokens, dict(teacher.get("slots") or {}))
    if any(x not in tags for x in ex_tags):
        return None
    return Example(tuple(tokens), tuple(ex_tags), h.label)


# --------------------------------------------------------------------------- evaluation


def evaluate_bundle(
    bundle: Path, examples: Sequence[Example], threshold: float, prefix: str
) -> dict[str, float]:
    """Metrics of a bundle through the edge runtime; escalation rate = share below the edge's threshold."""
    if not examples:
        return {f"{prefix}_n": 0.0}
    model = ChatModel(bundle)
    preds = []
    for b in range(0, len(examples), 256):
        preds += model.predict_batch([e.text for e in examples[b : b + 256]])
    m = evaluate_nlu(
        [e.intent for e in examples],
        [p.intent for p in preds],
        [list(e.tags) for e in examples],
        [p.tags for p in preds],
    )
    out = {f"{prefix}_{k}": round(v, 4) for k, v in m.as_dict().items() if k != "n"}
    out[f"{prefix}_n"] = float(len(examples))
    out[f"{prefix}_escalation_rate"] = round(sum(p.confidence < threshold for p in preds) / len(preds), 4)
    out[f"{prefix}_mean_confidence"] = round(sum(p.confidence for p in preds) / len(preds), 4)
    return out


# --------------------------------------------------------------------------- training


def _teacher_logits(
    spec: RunnerSpec, train: list[Example], base: list[Example], intents: list[str], tags: list[str], cfg: Any
) -> Any:
    """Soft targets for ``train``: an ONNX chat bundle, a MiniLM teacher, or none (teacher labels only)."""
    from cloud_controller.training.distill import TeacherLogits

    if spec.teacher in ("labels", "none", ""):
        return None
    if spec.teacher.startswith("bundle:"):
        t = ChatModel(spec.teacher.removeprefix("bundle:"))
        if t.intents != intents or t.tags != tags:
            raise ValueError(f"teacher bundle {spec.teacher} has other label sets than the student")
        intent_rows, slot_rows = [], []
        for b in range(0, len(train), 256):
            chunk = train[b : b + 256]
            enc = t.tokenizer.encode_batch([e.tokens for e in chunk], max_len=10_000)
            il, sl = t.run_logits(enc.word_ids, enc.ngram_ids)
            intent_rows.append(il)
            slot_rows += [sl[r, : len(e.tokens)] for r, e in enumerate(chunk)]
        return TeacherLogits(np.concatenate(intent_rows), slot_rows)
    from cloud_controller.training.minilm_teacher import load_or_train_teacher, teacher_predict

    handle = load_or_train_teacher(cfg.teacher, base, intents, tags)
    intent, slots = teacher_predict(handle, [e.tokens for e in train], desc="teacher logits")
    return TeacherLogits(intent, slots)


def run_chat(spec: RunnerSpec, out: Path, progress: ProgressLog) -> dict[str, Any]:
    """Collect, re-distill, quantize, evaluate (chat); returns what goes into result.json (``ok`` true)."""
    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    base = parse_base(spec.base)
    if base.dataset != "snips":
        raise ValueError(f"unknown base data set {base.dataset!r} for task chat (expected snips)")

    progress("Collecting", 0.02, "loading base data set")
    full_train = load_snips("train", spec.data_root)
    intents, tags = label_sets(full_train)  # fixed label sets: every version answers the same labels
    keep = [e for e in full_train if e.intent not in base.exclude]
    from cloud_controller.training.chat_train import CONFIGS

    cfg = CONFIGS[spec.config]
    if cfg.max_train is not None:
        keep = random.Random(cfg.seed).sample(keep, min(cfg.max_train, len(keep)))
    valid = [e for e in load_snips("valid", spec.data_root) if e.intent not in base.exclude]
    fixed = [e for e in load_snips("test", spec.data_root) if e.intent not in base.exclude]
    limit = spec.max_fixed_eval if spec.max_fixed_eval is not None else (200 if cfg.max_train else None)
    if limit is not None:
        valid, fixed = valid[:limit], random.Random(1).sample(fixed, min(limit, len(fixed)))
    hard = load_hard_examples(spec)
    iset, tset = set(intents), set(tags)
    new_train: list[Example] = []
    new_eval: list[Example] = []
    dropped = 0
    for h in hard:
        ex = to_example(h, iset, tset)
        if ex is None:
            dropped += 1
        elif held_out(h.id, spec.new_eval_fraction):
            new_eval.append(ex)
        else:
            new_train.append(ex)
    in_train = len(new_eval) < 4 and bool(new_train)
    if in_train:  # too few to hold out: evaluate on all of them (reported as new_in_train = 1)
        new_eval = new_train + new_eval
    progress("Collecting", 0.1, f"{len(keep)} base + {len(new_train)} new examples ({dropped} unusable)")
    timings["collect_s"] = time.perf_counter() - t0

    progress("Training", 0.12, "re-distilling the student")
    t1 = time.perf_counter()
    from cloud_controller.training.chat_train import augment_swap_slots, train_student
    from cloud_controller.training.export import export_onnx, quantize_int8

    p = spec.student_params
    cfg = replace(
        cfg,
        epochs=spec.epochs or cfg.epochs,
        temperature=spec.temperature,
        alpha=spec.alpha,
        teacher_vocab=False,
        hidden=int(p.get("hidden", cfg.hidden)),
        word_dim=int(p.get("wordDim", cfg.word_dim)),
        ngram_dim=int(p.get("ngramDim", cfg.ngram_dim)),
    )
    train = keep + augment_swap_slots(keep, cfg.augment_copies, cfg.seed) + new_train * spec.hard_repeat
    tok = Tokenizer.build([e.tokens for e in train], n_buckets=cfg.n_buckets)
    soft = _teacher_logits(spec, train, keep, intents, tags, cfg)

    def on_progress(done: int, total: int, message: str) -> None:
        progress("Training", 0.12 + 0.56 * done / max(1, total), message)

    model, info = train_student(
        cfg, tok, train, valid, intents, tags, soft, desc="student (re-distill)", on_progress=on_progress
    )
    progress("Training", 0.7, f"trained in {info['train_seconds']:.1f}s; exporting int8")
    fp32 = export_onnx(model, out / "student_fp32.onnx", tok.max_ngrams)
    int8 = quantize_int8(fp32, out / "student_int8.onnx", per_channel=True)
    files = {
        "model.onnx": int8.read_bytes(),
        "labels.json": json.dumps({"intents": intents, "tags": tags}).encode(),
        "vocab.json": json.dumps(tok.to_dict(), ensure_ascii=False).encode(),
    }
    manifest: dict[str, Any] = {
        "name": spec.output_model,
        "task": "intent-slots",
        "version": spec.version,
        "parent_version": spec.parent_version,
        "created": "2000-01-01T00:00:00Z",  # replaced below; the candidate is only evaluated
        "extra": {
            "student_config": info["student_config"],
            "distilled": soft is not None,
            "job": spec.job,
            "temperature": cfg.temperature,
            "alpha": cfg.alpha,
        },
    }
    candidate = out / "candidate"
    if not candidate.exists():
        write_bundle(candidate, files, manifest)
    timings["train_s"] = time.perf_counter() - t1

    progress("Evaluating", 0.75, f"{len(fixed)} fixed + {len(new_eval)} new examples")
    t2 = time.perf_counter()
    th = spec.escalation_threshold
    after = {
        **evaluate_bundle(candidate, fixed, th, "fixed"),
        **evaluate_bundle(candidate, new_eval, th, "new"),
    }
    before: dict[str, float] = {}
    if spec.parent_bundle:
        before = {
            **evaluate_bundle(Path(spec.parent_bundle), fixed, th, "fixed"),
            **evaluate_bundle(Path(spec.parent_bundle), new_eval, th, "new"),
        }
    after["new_in_train"] = float(in_train)
    progress("Evaluating", 0.95, "writing the bundle")
    bundle = out / "bundle"
    if not bundle.exists():
        manifest.pop("created")
        write_bundle(bundle, files, {**manifest, "metrics": after})
    timings["evaluate_s"] = time.perf_counter() - t2
    timings["total_s"] = time.perf_counter() - t0
    return {
        "ok": True,
        "version": spec.version,
        "bundle": bundle.name,  # relative to the work directory (see resolve_paths)
        "metrics_before": before,
        "metrics_after": after,
        "examples": len(train),
        "hard_examples": {
            "total": len(hard),
            "train": len(new_train),
            "eval": len(new_eval),
            "dropped": dropped,
        },
        "timings": {k: round(v, 3) for k, v in timings.items()},
    }
