"""``cloud-controller train chat``: any intent/slot dataset -> teacher -> distilled int8 student -> bundle.

Stages (each skipped on a rerun when its inputs did not change, see :mod:`.stages`):
``data`` (load, cut missing splits, list unseen labels), ``teacher`` (fine-tune
MiniLM, kept in the work dir), ``student`` (teacher logits, distillation),
``export`` (ONNX fp32 + int8), ``evaluate`` (int8 on test, per label, latency),
``bundle`` (the directory ``cloud-controller release`` signs). The recipe is
the one ``chat_train`` uses for SNIPS, unchanged: nothing here is tuned per dataset.
"""

from __future__ import annotations

import json
import random
import re
import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cloud_controller.datasets.formats.chat_dataset import ChatDataset, load_chat_dataset, unseen_labels
from cloud_controller.datasets.snips import Example, label_sets
from cloud_controller.training.chat_data import augment_swap_slots
from cloud_controller.training.chat_nets import StudentConfig, StudentTagger
from cloud_controller.training.chat_train import (
    CONFIGS,
    ChatTrainConfig,
    pca_table,
    predict_onnx,
    teacher_decode,
    teacher_logits_for,
    teacher_valid_score,
    train_student,
)
from cloud_controller.training.export import export_onnx, quantize_int8
from cloud_controller.training.minilm_teacher import (
    MiniLmTeacherHandle,
    load_or_train_teacher,
    teacher_whole_words,
    teacher_word_vectors,
    torch_threads,
)
from cloud_controller.training.nlu_breakdown import nlu_breakdown
from cloud_controller.training.nlu_metrics import evaluate_nlu
from cloud_controller.training.progress import Progress
from cloud_controller.training.stages import WorkDir, digest
from cloud_controller.training.train_report import chat_markdown, write_report
from edge_agent.models.bundle import write_bundle
from edge_agent.models.tokenizer import Tokenizer

__all__ = ["ChatRunOptions", "run_chat"]

TINY_EVAL_CAP = 200


@dataclass(frozen=True)
class ChatRunOptions:
    data: Path
    out: Path
    format: str = "auto"
    config: str = "full"
    teacher: bool = True
    epochs: int | None = None
    max_train: int | None = None
    name: str | None = None
    teacher_vocab: bool | None = None  # None: the config's; False skips ~21k teacher word vectors (tests)
    # None: the config's. Seeds the student (initial weights, batch order, slot-swap copies) and any
    # split cut from train; the teacher keeps its own seeds and is reused while the splits are unchanged.
    seed: int | None = None


def _examples_json(xs: list[Example]) -> list[dict[str, Any]]:
    return [{"tokens": list(e.tokens), "tags": list(e.tags), "intent": e.intent} for e in xs]


def _examples(raw: list[dict[str, Any]]) -> list[Example]:
    return [Example(tuple(r["tokens"]), tuple(r["tags"]), r["intent"]) for r in raw]


def _config(opts: ChatRunOptions) -> ChatTrainConfig:
    cfg = CONFIGS[opts.config]
    if opts.epochs is not None:
        cfg = replace(
            cfg, epochs=opts.epochs, teacher=replace(cfg.teacher, epochs=max(1, min(opts.epochs, 2)))
        )
    if opts.max_train is not None:
        cfg = replace(cfg, max_train=opts.max_train, teacher=replace(cfg.teacher, max_train=opts.max_train))
    if opts.teacher_vocab is not None:
        cfg = replace(cfg, teacher_vocab=opts.teacher_vocab)
    if opts.seed is not None:
        cfg = replace(cfg, seed=opts.seed)
    return cfg


def _latency_ms(model: Path, tok: Tokenizer, examples: list[Example], n: int = 50) -> dict[str, float]:
    """Single-utterance ONNX latency on one thread, as a node runs it."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(model), opts, providers=["CPUExecutionProvider"])
    times = []
    for e in (examples * (n // max(1, len(examples)) + 1))[:n]:
        enc = tok.encode_batch([e.tokens], max_len=10_000)
        t0 = time.perf_counter()
        sess.run(None, {"word_ids": enc.word_ids, "ngram_ids": enc.ngram_ids})
        times.append((time.perf_counter() - t0) * 1e3)
    return {"p50": float(np.percentile(times, 50)), "p95": float(np.percentile(times, 95))}


def run_chat(opts: ChatRunOptions, log: Any = print) -> dict[str, Any]:
    """Run (or resume) every stage in ``opts.out``; returns the report also written there."""
    torch.set_num_threads(torch_threads())
    cfg = _config(opts)
    wd = WorkDir(opts.out, log)
    ds: ChatDataset = load_chat_dataset(opts.data, opts.format, seed=cfg.seed)
    name = opts.name or "chat-" + (re.sub(r"[^a-z0-9]+", "-", ds.source.stem.lower()).strip("-") or "data")

    # -- data
    k_data = digest("data", ds.fingerprint(), ds.format, cfg.seed, cfg.max_train)
    data_file = opts.out / "data" / "splits.json"

    def data_stage() -> None:
        train = ds.splits["train"]
        notes = list(ds.notes)
        if cfg.max_train is not None and len(train) > cfg.max_train:
            train = random.Random(cfg.seed).sample(train, cfg.max_train)
            notes.append(f"config {cfg.name}: trained on {cfg.max_train} sampled train utterances")
        valid, test = ds.splits["valid"], ds.splits["test"]
        if cfg.max_train is not None and max(len(valid), len(test)) > TINY_EVAL_CAP:
            valid, test = valid[:TINY_EVAL_CAP], test[:TINY_EVAL_CAP]
            notes.append(f"config {cfg.name}: valid and test capped at {TINY_EVAL_CAP} utterances")
        data_file.parent.mkdir(parents=True, exist_ok=True)
        data_file.write_text(
            json.dumps(
                {
                    "train": _examples_json(train),
                    "valid": _examples_json(valid),
                    "test": _examples_json(test),
                    "notes": notes,
                    "unseen": {
                        s: unseen_labels(train, x).as_dict() for s, x in (("valid", valid), ("test", test))
                    },
                },
                ensure_ascii=False,
            ),
            encoding="utf-8",
        )

    wd.stage("data", k_data, ["data/splits.json"], data_stage)
    saved = json.loads(data_file.read_text(encoding="utf-8"))
    train, valid, test = (_examples(saved[s]) for s in ("train", "valid", "test"))
    intents, tags = label_sets(train)
    for note in saved["notes"]:
        log(f"[data] {note}")
    for split, u in saved["unseen"].items():
        if u["intents"] or u["slots"]:
            log(
                f"[data] {split}: unseen in train (counted as errors): "
                f"intents {u['intents']} slots {u['slots']}"
            )

    # -- teacher: keyed by the splits themselves, not by the seed that may have cut them, so another
    # student seed on the same splits reuses the teacher (a seed spread costs students only).
    handle: MiniLmTeacherHandle | None = None
    k_splits = digest("splits", saved["train"], saved["valid"], saved["test"])
    k_teacher = digest("teacher", k_splits, asdict(cfg.teacher) if opts.teacher else None)
    teacher_file = opts.out / "teacher" / "teacher.json"

    def get_teacher() -> MiniLmTeacherHandle:
        nonlocal handle
        if handle is None:
            handle = load_or_train_teacher(
                cfg.teacher,
                train,
                intents,
                tags,
                data_key=k_splits,
                cache=opts.out / "teacher",
                score=teacher_valid_score(valid, train) if cfg.teacher.epochs > 1 else None,
            )
        return handle

    def teacher_stage() -> None:
        out: dict[str, Any] = {"used": opts.teacher}
        if opts.teacher:
            h = get_teacher()
            pi, pt = teacher_decode(h, test)
            gi, gt = [e.intent for e in test], [list(e.tags) for e in test]
            m = evaluate_nlu(gi, pi, gt, pt).as_dict()
            b = nlu_breakdown(gi, pi, gt, pt, intents, tags)
            m.update({k: b[k] for k in ("intent_acc_macro", "slot_f1_macro")})
            out.update(
                {
                    "test": m,
                    "size_bytes": h.size_bytes,
                    "train_seconds": h.train_seconds,
                    "train_cpu_seconds": h.train_cpu_seconds,
                    "history": h.history,
                }
            )
        teacher_file.parent.mkdir(parents=True, exist_ok=True)
        teacher_file.write_text(json.dumps(out, indent=2), encoding="utf-8")

    wd.stage("teacher", k_teacher, ["teacher/teacher.json"], teacher_stage)

    # -- student
    k_student = digest("student", k_teacher, asdict(cfg))
    sdir = opts.out / "student"

    def student_stage() -> None:
        aug = train + augment_swap_slots(train, cfg.augment_copies, cfg.seed)
        tok, vectors, soft = Tokenizer.build([e.tokens for e in train], n_buckets=cfg.n_buckets), None, None
        if opts.teacher:
            h = get_teacher()
            if cfg.teacher_vocab:
                tok = Tokenizer.build(
                    [e.tokens for e in train], n_buckets=cfg.n_buckets, extra_words=teacher_whole_words(h)
                )
                vectors = pca_table(teacher_word_vectors(h, tok.words), cfg.word_dim)
            soft = teacher_logits_for(h, aug)
        n_batches = cfg.epochs * ((len(aug) + cfg.batch_size - 1) // cfg.batch_size)
        bar = Progress(n_batches, "student", "batch")
        model, info = train_student(
            cfg,
            tok,
            aug,
            valid,
            intents,
            tags,
            soft,
            desc="student (distilled)" if soft is not None else "student (hard)",
            word_vectors=vectors,
            on_progress=lambda d, _t, m: bar.update(d, m),
        )
        bar.close()
        sdir.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), sdir / "model.pt")
        tok.save(sdir / "vocab.json")
        info["distilled"] = soft is not None
        (sdir / "info.json").write_text(json.dumps(info, indent=2), encoding="utf-8")

    wd.stage(
        "student", k_student, ["student/model.pt", "student/vocab.json", "student/info.json"], student_stage
    )
    info = json.loads((sdir / "info.json").read_text(encoding="utf-8"))
    tok = Tokenizer.load(sdir / "vocab.json")

    # -- export
    k_export = digest("export", k_student)
    fp32, int8 = opts.out / "export" / "student_fp32.onnx", opts.out / "export" / "student_int8.onnx"

    def export_stage() -> None:
        model = StudentTagger(StudentConfig(**info["student_config"]))
        model.load_state_dict(torch.load(sdir / "model.pt", map_location="cpu"))
        export_onnx(model, fp32, tok.max_ngrams)
        quantize_int8(fp32, int8, per_channel=True)

    wd.stage("export", k_export, ["export/student_fp32.onnx", "export/student_int8.onnx"], export_stage)

    # -- evaluate
    k_eval = digest("evaluate", k_export)
    eval_file = opts.out / "evaluate" / "test.json"

    def eval_stage() -> None:
        pi, pt = predict_onnx(int8, tok, test, intents, tags)
        gi, gt = [e.intent for e in test], [list(e.tags) for e in test]
        m = evaluate_nlu(gi, pi, gt, pt).as_dict()
        m.update(nlu_breakdown(gi, pi, gt, pt, intents, tags))
        vi, vt = predict_onnx(int8, tok, valid, intents, tags)
        v = evaluate_nlu([e.intent for e in valid], vi, [list(e.tags) for e in valid], vt).as_dict()
        eval_file.parent.mkdir(parents=True, exist_ok=True)
        eval_file.write_text(
            json.dumps({"test": m, "valid": v, "latency_ms": _latency_ms(int8, tok, test)}, indent=2),
            encoding="utf-8",
        )

    wd.stage("evaluate", k_eval, ["evaluate/test.json"], eval_stage)
    ev = json.loads(eval_file.read_text(encoding="utf-8"))
    teacher = json.loads(teacher_file.read_text(encoding="utf-8"))

    # -- bundle
    k_bundle = digest("bundle", k_eval, name)
    bundle_dir = opts.out / "bundle"

    def bundle_stage() -> None:
        if bundle_dir.exists():
            shutil.rmtree(bundle_dir)
        metrics = {f"test_{k}": float(v) for k, v in ev["test"].items() if isinstance(v, int | float)}
        write_bundle(
            bundle_dir,
            {
                "model.onnx": int8,
                "labels.json": json.dumps({"intents": intents, "tags": tags}).encode(),
                "vocab.json": json.dumps(tok.to_dict(), ensure_ascii=False).encode(),
            },
            {
                "name": name,
                "task": "intent-slots",
                "version": f"0.{int(time.time())}.0-{cfg.name}",  # semver: what EdgeModel accepts
                "metrics": metrics,
                "extra": {
                    "student_config": info["student_config"],
                    "distilled": info["distilled"],
                    "data": str(ds.source),
                    "format": ds.format,
                },
            },
        )

    wd.stage("bundle", k_bundle, ["bundle/manifest.json"], bundle_stage)

    report: dict[str, Any] = {
        "task": "chat",
        "config": cfg.name,
        "seed": cfg.seed,
        "data": str(ds.source),
        "format": ds.format,
        "notes": saved["notes"],
        "sizes": {"train": len(train), "valid": len(valid), "test": len(test)},
        "labels": {"intents": len(intents), "tags": len(tags)},
        "unseen": saved["unseen"],
        "test": ev["test"],
        "valid": ev["valid"],
        "latency_ms": ev["latency_ms"],
        "model_bytes": int8.stat().st_size,
        "bundle": str(bundle_dir),
        "bundle_bytes": sum(p.stat().st_size for p in bundle_dir.iterdir() if p.is_file()),
        "student": {k: v for k, v in info.items() if k != "history"},
        "stage_seconds": wd.seconds(),
        "stage_cpu_seconds": wd.cpu_seconds(),
        "stages_skipped": wd.skipped,
    }
    if teacher.get("test"):
        report["teacher_test"] = teacher["test"]
    write_report(opts.out, report, chat_markdown(report))
    return report
