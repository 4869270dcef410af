"""``cloud-controller train sensor``: labelled sensor CSVs -> per-series teacher -> distilled int8 student.

The recipe is :mod:`.sensor_train`'s (the SKAB protocol), applied to any CSV
series: each series is one experiment, its first rows are its baseline
(assumed normal; labels are used only to score), the teacher is the per-series
:class:`BaselineDetector`, the student an MLP distilled from its soft scores.
Student figures are cross-validated over series (held-out series play the
test split); with fewer than ``2 x folds`` series, each series is cut into
contiguous pieces first, and the report says so.

Two choices follow the data instead of a config, so that 1-second pump data
and 5-minute NAB data both work without tuning: the window is the config's
(10 s) or 5 rows, whichever is longer, and the baseline is the first 400 rows
(the SKAB protocol) or a quarter of the shortest series, whichever is smaller.
"""

from __future__ import annotations

import hashlib
import json
import math
import pickle
import re
import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch

from cloud_controller.datasets.formats.format_errors import DatasetFormatError
from cloud_controller.datasets.formats.sensor_csv import SensorSeries, find_windows_file, load_sensor_dataset
from cloud_controller.training.progress import Progress
from cloud_controller.training.sensor_train import (
    DEVICE,
    PROTOCOL_TRAIN_ROWS,
    BaselineDetector,
    FileWindows,
    SensorTrainConfig,
    aggregate_skab,
    evaluate,
    export_student,
    fit,
    fit_floor,
    onnx_scores,
    prepare,
    soft_targets,
)
from cloud_controller.training.stages import WorkDir, digest
from cloud_controller.training.train_report import sensor_markdown, write_report
from edge_agent.models.features import FeatureSpec, feature_matrix
from edge_agent.models.sensor_runtime import write_sensor_bundle

__all__ = ["SensorRunOptions", "run_sensor"]

MIN_ROWS_PER_WINDOW = 5
THRESHOLD = 0.5  # soft targets put the teacher's alarm limit at 0.5


@dataclass(frozen=True)
class SensorRunOptions:
    data: Path
    out: Path
    config: str = "full"
    windows: Path | None = None
    epochs: int | None = None
    name: str | None = None
    seed: int | None = None  # None: the config's (the students' initial weights and batch order)


def _pieces(series: list[SensorSeries], want: int) -> tuple[list[SensorSeries], str | None]:
    if len(series) >= want:
        return series, None
    k = math.ceil(want / len(series))
    out = []
    for s in series:
        bounds = np.linspace(0, len(s.timestamps), k + 1).astype(int)
        for j in range(k):
            sl = slice(bounds[j], bounds[j + 1])
            out.append(
                SensorSeries(
                    f"{s.key}#{j + 1}",
                    s.timestamps[sl],
                    s.values[sl],
                    s.columns,
                    None if s.anomaly is None else s.anomaly[sl],
                )
            )
    return out, f"{len(series)} series < {want}: each cut into {k} contiguous pieces for cross-validation"


def _inputs_digest(data: Path, windows: Path | None) -> str:
    files = sorted(data.rglob("*.csv")) if data.is_dir() else [data]
    h = hashlib.sha256()
    for f in [*files, *([windows] if windows else [])]:
        h.update(f.name.encode() + b"\0" + hashlib.sha256(f.read_bytes()).digest())
    return h.hexdigest()


def _prf(m: dict[str, float]) -> dict[str, float]:
    tp, fp, fn = m["tp"], m["fp"], m["fn"]
    return {
        "f1": float(m["f1"]),
        "precision": 100.0 * tp / (tp + fp) if tp + fp else 0.0,
        "recall": 100.0 * tp / (tp + fn) if tp + fn else 0.0,
        "far": float(m["far"]),
        "mar": float(m["mar"]),
    }


def _fit(files: list[FileWindows], cfg: SensorTrainConfig, desc: str) -> Any:
    x = np.concatenate([f.z for f in files]).astype(np.float32)
    y = np.concatenate([soft_targets(f.teacher, cfg.sharpness) for f in files]).astype(np.float32)
    bar = Progress(cfg.epochs, desc, "epoch")
    model = fit(x, y, cfg, on_epoch=lambda d, _n: bar.update(d))
    bar.close()
    return model


def run_sensor(opts: SensorRunOptions, log: Any = print) -> dict[str, Any]:
    torch.set_num_threads(1)
    cfg = SensorTrainConfig.named(opts.config)
    if opts.epochs is not None:
        cfg = replace(cfg, epochs=opts.epochs)
    if opts.seed is not None:
        cfg = replace(cfg, seed=opts.seed)
    wd = WorkDir(opts.out, log)
    wfile = opts.windows or find_windows_file(Path(opts.data))
    raw = load_sensor_dataset(Path(opts.data), wfile)
    unlabelled = [s.key for s in raw if s.anomaly is None]
    if unlabelled:
        raise DatasetFormatError(
            Path(opts.data) / unlabelled[0],
            "no labels: give an 'anomaly' column or anomaly windows (--windows FILE.json, NAB format)",
        )
    h = _inputs_digest(Path(opts.data), wfile)
    name = opts.name or "sensor-" + (
        re.sub(r"[^a-z0-9]+", "-", Path(opts.data).stem.lower()).strip("-") or "data"
    )

    # -- windows + teacher (numpy, seconds)
    k_win = digest("windows", h, asdict(cfg))
    win_file = opts.out / "windows" / "files.pkl"

    def windows_stage() -> None:
        series, note = _pieces(raw, 2 * cfg.folds)
        notes = [note] if note else []
        notes.append(
            f"no test split for sensors: student figures are {cfg.folds}-fold cross-validated over series"
        )
        dt = float(np.median(np.concatenate([np.diff(s.timestamps) for s in series])))
        window_s = max(cfg.window_s, MIN_ROWS_PER_WINDOW * dt)
        base_rows = min(PROTOCOL_TRAIN_ROWS, min(len(s.timestamps) for s in series) // 4)
        spec = FeatureSpec(
            metrics=tuple(series[0].columns),
            window_s=window_s,
            baseline_windows=max(2, round(base_rows * dt / window_s)),
        )
        files = []
        bar = Progress(len(series), "windows", "series")
        for i, s in enumerate(series):
            summaries = aggregate_skab(s.timestamps, s.values, s.columns, window_s)
            starts, ends, x = feature_matrix(summaries, DEVICE, spec)
            files.append(FileWindows(s.key, s.timestamps, s.anomaly, starts, ends, x))
            bar.update(i + 1)
        bar.close()
        spec = fit_floor(files, spec, cfg.floor_frac)
        prepare(files, spec, BaselineDetector())
        win_file.parent.mkdir(parents=True, exist_ok=True)
        with win_file.open("wb") as fh:
            pickle.dump({"files": files, "spec": spec.to_json(), "notes": notes, "dt": dt}, fh)

    wd.stage("windows", k_win, ["windows/files.pkl"], windows_stage)
    with win_file.open("rb") as fh:
        saved = pickle.load(fh)  # our own work dir, written by the stage above
    files: list[FileWindows] = saved["files"]
    spec = FeatureSpec.from_json(saved["spec"])
    for note in saved["notes"]:
        log(f"[windows] {note}")

    # -- student: cross-validated students, then the final one on every series; int8 export
    k_student = digest("student", k_win)
    sdir = opts.out / "student"

    def student_stage() -> None:
        sdir.mkdir(parents=True, exist_ok=True)
        cv: list[np.ndarray | None] = [None] * len(files)
        for fi in range(cfg.folds):
            held = list(range(fi, len(files), cfg.folds))
            model = _fit([f for i, f in enumerate(files) if i not in held], cfg, f"fold {fi + 1}/{cfg.folds}")
            export_student(model, spec.n_features, sdir / "cv.fp32.onnx", sdir / "cv.int8.onnx")
            for i in held:
                cv[i] = onnx_scores(sdir / "cv.int8.onnx", files[i].z)
        np.savez(sdir / "cv_scores.npz", *[c for c in cv if c is not None])
        final = _fit(files, cfg, "final student")
        export_student(final, spec.n_features, sdir / "student.fp32.onnx", sdir / "student.int8.onnx")

    wd.stage("student", k_student, ["student/student.int8.onnx", "student/cv_scores.npz"], student_stage)
    int8 = sdir / "student.int8.onnx"

    # -- evaluate
    k_eval = digest("evaluate", k_student)
    eval_file = opts.out / "evaluate" / "metrics.json"

    def eval_stage() -> None:
        with np.load(sdir / "cv_scores.npz") as z:
            cv = [z[f"arr_{i}"] for i in range(len(files))]
        metrics = {
            "teacher (per series)": _prf(evaluate(files, [f.teacher > 1.0 for f in files])),
            "student int8 (cross-validated)": _prf(evaluate(files, [s > THRESHOLD for s in cv])),
            "student int8 (final, in-sample)": _prf(
                evaluate(files, [onnx_scores(int8, f.z) > THRESHOLD for f in files])
            ),
        }
        z1 = files[0].z[:1].astype(np.float32)
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        sess = ort.InferenceSession(str(int8), so, providers=["CPUExecutionProvider"])
        times = []
        for _ in range(200):
            t0 = time.perf_counter()
            sess.run(["score"], {"features": z1})
            times.append((time.perf_counter() - t0) * 1e3)
        eval_file.parent.mkdir(parents=True, exist_ok=True)
        eval_file.write_text(
            json.dumps(
                {
                    "metrics": metrics,
                    "latency_ms": {
                        "p50": float(np.percentile(times, 50)),
                        "p95": float(np.percentile(times, 95)),
                    },
                },
                indent=2,
            ),
            encoding="utf-8",
        )

    wd.stage("evaluate", k_eval, ["evaluate/metrics.json"], eval_stage)
    ev = json.loads(eval_file.read_text(encoding="utf-8"))

    # -- bundle
    k_bundle = digest("bundle", k_eval, name)
    bundle_dir = opts.out / "bundle"

    def bundle_stage() -> None:
        if bundle_dir.exists():
            shutil.rmtree(bundle_dir)
        cvm, tm = ev["metrics"]["student int8 (cross-validated)"], ev["metrics"]["teacher (per series)"]
        flat = {
            **{f"student_int8_cv_{k}": float(v) for k, v in cvm.items()},
            **{f"teacher_{k}": float(v) for k, v in tm.items()},
        }
        write_sensor_bundle(
            bundle_dir,
            int8,
            spec,
            THRESHOLD,
            {
                "name": name,
                "version": f"0.{int(time.time())}.0-{opts.config}",  # semver: what EdgeModel accepts
                "metrics": flat,
                "extra": {
                    "config": opts.config,
                    "recipe": asdict(cfg),
                    "data": str(opts.data),
                    "series": [f.key for f in files],
                },
            },
        )

    wd.stage("bundle", k_bundle, ["bundle/manifest.json"], bundle_stage)
    report: dict[str, Any] = {
        "task": "sensor",
        "config": opts.config,
        "seed": cfg.seed,
        "data": str(opts.data),
        "format": "csv" + (f" + windows {wfile}" if wfile else " (label column)"),
        "notes": saved["notes"],
        "metrics": ev["metrics"],
        "latency_ms": ev["latency_ms"],
        "n_series": len(files),
        "n_windows": int(sum(len(f.starts) for f in files)),
        "n_features": spec.n_features,
        "window_s": spec.window_s,
        "baseline_windows": spec.baseline_windows,
        "model_bytes": int8.stat().st_size,
        "bundle": str(bundle_dir),
        "bundle_bytes": sum(p.stat().st_size for p in bundle_dir.iterdir() if p.is_file()),
        "stage_seconds": wd.seconds(),
        "stages_skipped": wd.skipped,
    }
    write_report(opts.out, report, sensor_markdown(report))
    return report
