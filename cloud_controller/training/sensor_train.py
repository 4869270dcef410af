"""Sensor teacher and int8 student on SKAB, following the SKAB outlier-detection protocol.

Protocol (waico/SKAB notebooks + ``core/metrics.py``, see ``docs/sensor-model.md``):
each of the 34 labelled experiments is scored on its own; a detector is fitted
on the experiment's first 400 rows (assumed normal, no labels used), its alarm
limit is the 0.999-quantile of its training scores times 4/3, and the whole
file (training rows included) is predicted point-wise. TP/FP/TN/FN are summed
over all files; F1 = TP / (TP + (FP+FN)/2), FAR = FP/(FP+TN), MAR = FN/(FN+TP).

Window-based deviations: features come from the agent's own 10 s window
summaries (the real :class:`WindowAggregator` is run over every file), the
"first 400 rows" are the device's first ``400 / window_s`` windows, and each
window's prediction is copied to every row in it for the point-wise metrics.

Teacher: a per-file detector, :class:`BaselineDetector` (geometric mean of the max baseline |z|
and a shrunk Mahalanobis distance, each divided by its protocol alarm limit).
Student: one global MLP over baseline-relative features, distilled from the
teacher's soft scores (no labels: the protocol is unsupervised), exported to
ONNX, int8-quantised, bundled. Student metrics are cross-validated over files
(the student never saw the experiments it is scored on); the shipped bundle
is trained on all files.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from cloud_controller.datasets.skab import list_experiments, load_experiment
from cloud_controller.training.export import quantize_int8
from edge_agent.config import WindowConfig
from edge_agent.models.features import FeatureSpec, feature_matrix, fit_baseline, model_input
from edge_agent.models.sensor_runtime import write_sensor_bundle
from edge_agent.preprocess.windows import WindowAggregator
from edge_agent.protocol.messages import WindowSummary

__all__ = [
    "BaselineDetector",
    "FileWindows",
    "SensorStudent",
    "SensorTrainConfig",
    "aggregate_skab",
    "build_files",
    "export_student",
    "fit",
    "point_predictions",
    "run",
    "skab_binary",
    "student_from_onnx",
    "train_student",
    "write_sensor_bundle",
]

DEVICE = "skab-pump"
PROTOCOL_TRAIN_ROWS = 400  # SKAB notebooks: df[:400] is the training part
UCL_QUANTILE = 0.999
UCL_FACTOR = 4.0 / 3.0


@dataclass(frozen=True)
class SensorTrainConfig:
    window_s: float = 10.0
    floor_frac: float = 0.5  # scale floor = this x median baseline std over training devices
    hidden: tuple[int, int] = (32, 16)
    epochs: int = 300
    lr: float = 3e-3
    weight_decay: float = 1e-4
    sharpness: float = 3.0  # soft target = sigmoid(sharpness * log(teacher score / UCL))
    folds: int = 4
    max_files: int | None = None  # tiny: a few files only
    free_chunk_rows: int = 1100  # anomaly-free file cut into pseudo-experiments of this many rows
    use_free: bool = True
    seed: int = 0
    # Re-distillation (warm start from the deployed student): shorter and gentler than training anew.
    finetune_epochs: int = 60
    finetune_lr: float = 1e-3

    @classmethod
    def named(cls, name: str) -> SensorTrainConfig:
        if name == "full":
            return cls()
        if name == "tiny":
            return cls(epochs=60, folds=2, max_files=6, use_free=False, hidden=(16, 8), finetune_epochs=20)
        raise ValueError(f"unknown config {name!r} (tiny|full)")


@dataclass
class FileWindows:
    """One experiment after the agent's window stage: rows (for point-wise metrics) and windows."""

    key: str
    timestamps: np.ndarray
    anomaly: np.ndarray | None
    starts: np.ndarray
    ends: np.ndarray
    x_raw: np.ndarray
    baseline_n: int = 0
    z: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))
    teacher: np.ndarray = field(default_factory=lambda: np.zeros(0))


def aggregate_skab(
    timestamps: np.ndarray, values: np.ndarray, columns: Sequence[str], window_s: float, device: str = DEVICE
) -> list[WindowSummary]:
    """Replay rows through the agent's real WindowAggregator (event-time clock, deadband 0)."""
    agg = WindowAggregator(WindowConfig(length_s=window_s))
    out: list[WindowSummary] = []
    cols = list(columns)
    for i in range(len(timestamps)):
        ts = float(timestamps[i])
        row = values[i]
        for j, m in enumerate(cols):
            agg.add(device, m, ts, float(row[j]), ts)
        out.extend(agg.poll(ts))
    out.extend(agg.flush_all())
    return out


def _windows_of(
    key: str, ts: np.ndarray, vals: np.ndarray, cols: list[str], anomaly: np.ndarray | None, spec: FeatureSpec
) -> FileWindows:
    summaries = aggregate_skab(ts, vals, cols, spec.window_s)
    starts, ends, x = feature_matrix(summaries, DEVICE, spec)
    return FileWindows(key, ts, anomaly, starts, ends, x)


def build_files(
    cfg: SensorTrainConfig,
    data_root: str | Path | None = None,
    log: Any = print,
    groups: Sequence[str] | None = None,
) -> tuple[list[FileWindows], list[FileWindows], FeatureSpec]:
    """(labelled experiments, anomaly-free pseudo-experiments, spec without floors).

    ``groups`` restricts the labelled experiments to some SKAB groups (``valve1``,
    ``valve2``, ``other``): a first student that has only seen one kind of fault.
    """
    exps = list_experiments(data_root)
    labelled = [e for e in exps if e.group != "anomaly-free"]
    if groups:
        known = {e.group for e in labelled}
        unknown = sorted(set(groups) - known)
        if unknown:
            raise ValueError(f"unknown SKAB group(s) {unknown}; known: {sorted(known)}")
        labelled = [e for e in labelled if e.group in set(groups)]
    if cfg.max_files is not None:
        labelled = labelled[:: max(1, len(labelled) // cfg.max_files)][: cfg.max_files]
    first = load_experiment(labelled[0])
    spec = FeatureSpec(
        metrics=tuple(first.columns),
        window_s=cfg.window_s,
        baseline_windows=round(PROTOCOL_TRAIN_ROWS / cfg.window_s),
    )
    files: list[FileWindows] = []
    for e in labelled:
        d = load_experiment(e)
        files.append(_windows_of(e.key, d.timestamps, d.values, d.columns, d.anomaly, spec))
    log(f"  windowed {len(files)} labelled experiments -> {sum(len(f.starts) for f in files)} windows")
    free: list[FileWindows] = []
    if cfg.use_free:
        for e in (e for e in exps if e.group == "anomaly-free"):
            d = load_experiment(e)
            for k, lo in enumerate(range(0, len(d) - cfg.free_chunk_rows // 2, cfg.free_chunk_rows)):
                sl = slice(lo, lo + cfg.free_chunk_rows)
                free.append(
                    _windows_of(
                        f"anomaly-free/{k}",
                        d.timestamps[sl],
                        d.values[sl],
                        d.columns,
                        np.zeros(len(d.timestamps[sl]), bool),
                        spec,
                    )
                )
        log(f"  anomaly-free file -> {len(free)} pseudo-experiments")
    return files, free, spec


# -------------------------------------------------------------------------------- teacher


class BaselineDetector:
    """Per-experiment detector fitted on the baseline windows only (numpy, no labels).

    The teacher of sensor training: its scores are the student's soft targets. Not
    to be confused with :class:`cloud_controller.teachers.sensor_labeller.SensorTeacher`,
    the bundle that labels the fleet's escalated windows at ingest.

    Two views of "unlike the baseline": the largest single-feature z-score
    (catches one sensor going off) and a shrunk Mahalanobis distance (catches
    combinations that are individually small). Each is divided by its own
    protocol alarm limit (0.999-quantile of the baseline scores x 4/3) and the
    geometric mean is taken, so 1.0 is the alarm limit and the two must agree.
    40 baseline windows cannot support a full 48x48 covariance, hence the
    shrinkage towards the diagonal.
    """

    def __init__(self, shrink: float = 0.5, ridge: float = 1e-3) -> None:
        self.shrink = shrink
        self.ridge = ridge

    @staticmethod
    def _ucl(train_scores: np.ndarray) -> float:
        return float(max(np.quantile(train_scores, UCL_QUANTILE) * UCL_FACTOR, 1e-9))

    def score(self, z_base: np.ndarray, z: np.ndarray) -> np.ndarray:
        zb = z_base.astype(np.float64)
        za = z.astype(np.float64)
        maxz_b, maxz = np.abs(zb).max(1), np.abs(za).max(1)
        mu = zb.mean(0)
        c = np.cov(zb.T)
        c = (1 - self.shrink) * c + self.shrink * np.diag(np.diag(c)) + self.ridge * np.eye(len(mu))
        ic = np.linalg.inv(c)

        def maha(a: np.ndarray) -> np.ndarray:
            d = a - mu
            return np.sqrt(np.maximum(np.einsum("ij,jk,ik->i", d, ic, d), 0.0))

        s1 = maxz / self._ucl(maxz_b)
        s2 = maha(za) / self._ucl(maha(zb))
        return np.sqrt(s1 * s2)


def prepare(files: Sequence[FileWindows], spec: FeatureSpec, teacher: BaselineDetector) -> None:
    """Fill each file's baseline-relative model input and teacher score, in place."""
    for f in files:
        n = min(spec.baseline_windows, len(f.starts))
        mu, sd = fit_baseline(f.x_raw[:n], spec)
        f.baseline_n = n
        f.z = model_input(f.x_raw, mu, sd, spec)
        f.teacher = teacher.score(f.z[:n], f.z)


def fit_floor(files: Sequence[FileWindows], spec: FeatureSpec, frac: float) -> FeatureSpec:
    """Scale floors from the pooled baseline spread of the training devices (stored in the spec)."""
    sds = np.stack([f.x_raw[: spec.baseline_windows].std(0) for f in files])
    return spec.with_floor(np.median(sds, axis=0) * frac)


# -------------------------------------------------------------------------------- metrics


def point_predictions(
    timestamps: np.ndarray, starts: np.ndarray, ends: np.ndarray, window_pred: np.ndarray
) -> np.ndarray:
    """Copy each window's prediction to every row inside ``[start, end)`` (rows outside any window: 0)."""
    k = np.searchsorted(starts, timestamps, side="right") - 1
    ok = k >= 0
    ok[ok] = timestamps[ok] < ends[k[ok]]
    out = np.zeros(len(timestamps), dtype=bool)
    out[ok] = np.asarray(window_pred, dtype=bool)[k[ok]]
    return out


def skab_binary(pairs: Sequence[tuple[np.ndarray, np.ndarray]]) -> dict[str, float]:
    """SKAB ``chp_score(metric='binary')``: confusion counts summed over files, F1 and FAR/MAR in %."""
    tp = fp = fn = tn = 0
    for y, p in pairs:
        y, p = np.asarray(y, bool), np.asarray(p, bool)
        tp += int((y & p).sum())
        fp += int((~y & p).sum())
        fn += int((y & ~p).sum())
        tn += int((~y & ~p).sum())
    return {
        "f1": tp / (tp + (fn + fp) / 2) if tp + fn + fp else 1.0,
        "far": 100.0 * fp / (fp + tn) if fp + tn else 0.0,
        "mar": 100.0 * fn / (fn + tp) if fn + tp else 0.0,
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "tn": tn,
    }


def evaluate(files: Sequence[FileWindows], window_preds: Sequence[np.ndarray]) -> dict[str, float]:
    pairs = []
    for f, pw in zip(files, window_preds, strict=True):
        assert f.anomaly is not None
        pairs.append((f.anomaly, point_predictions(f.timestamps, f.starts, f.ends, pw)))
    return skab_binary(pairs)


# -------------------------------------------------------------------------------- student


class SensorStudent(nn.Module):
    """Two hidden ReLU layers and a sigmoid, so the ONNX output already is the score in [0, 1].

    Explicit matmuls export as ``MatMul`` (which ``quantize_dynamic`` turns
    into int8 ``MatMulInteger``) rather than ``Gemm`` (which it leaves fp32).
    """

    def __init__(self, n_in: int, hidden: tuple[int, int]) -> None:
        super().__init__()
        dims = [n_in, *hidden, 1]
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for a, b in itertools.pairwise(dims):
            w = torch.empty(a, b)
            nn.init.kaiming_uniform_(w.T, a=5**0.5)
            self.weights.append(nn.Parameter(w))
            self.biases.append(nn.Parameter(torch.zeros(b)))

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        last = len(self.weights) - 1
        for i, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            h = torch.matmul(h, w) + b
            if i < last:
                h = torch.relu(h)
        return h

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logits(x))


def soft_targets(teacher_scores: np.ndarray, sharpness: float) -> np.ndarray:
    """Teacher score (1.0 = alarm limit) -> probability, 0.5 exactly at the limit."""
    s = np.maximum(teacher_scores, 1e-6)
    return 1.0 / (1.0 + s ** (-sharpness))


def fit(
    x_np: np.ndarray,
    y_np: np.ndarray,
    cfg: SensorTrainConfig,
    *,
    init: SensorStudent | None = None,
    epochs: int | None = None,
    lr: float | None = None,
    on_epoch: Callable[[int, int], None] | None = None,
) -> SensorStudent:
    """BCE against soft targets in [0, 1], minibatch AdamW: thousands of rows, seconds.

    ``init`` warm-starts from an existing student (the one the fleet runs):
    a re-distillation then moves the deployed function towards the teacher on
    the new data instead of drawing a fresh one, whose seed-to-seed spread on
    unseen experiments is as large as the gain we are after.
    """
    torch.manual_seed(cfg.seed)
    x = torch.from_numpy(np.asarray(x_np, np.float32))
    y = torch.from_numpy(np.asarray(y_np, np.float32))
    model = SensorStudent(x.shape[1], cfg.hidden)
    if init is not None:
        model.load_state_dict(init.state_dict())
    opt = torch.optim.AdamW(model.parameters(), lr=lr or cfg.lr, weight_decay=cfg.weight_decay)
    loss_fn = nn.BCEWithLogitsLoss()
    gen = torch.Generator().manual_seed(cfg.seed)
    n_epochs = epochs or cfg.epochs
    model.train()
    for ep in range(n_epochs):
        perm = torch.randperm(len(x), generator=gen)
        for idx in perm.split(256):
            opt.zero_grad()
            loss = loss_fn(model.logits(x[idx]).squeeze(-1), y[idx])
            loss.backward()
            opt.step()
        if on_epoch is not None:
            on_epoch(ep + 1, n_epochs)
    model.eval()
    return model


def train_student(files: Sequence[FileWindows], cfg: SensorTrainConfig, n_in: int) -> SensorStudent:
    """Distil the teacher's soft scores (no labels: the SKAB protocol is unsupervised)."""
    x = np.concatenate([f.z for f in files]).astype(np.float32)
    y = np.concatenate([soft_targets(f.teacher, cfg.sharpness) for f in files]).astype(np.float32)
    assert x.shape[1] == n_in, (x.shape, n_in)
    return fit(x, y, cfg)


def student_from_onnx(path: str | Path) -> SensorStudent:
    """A torch student with the weights of an exported one (int8 weights dequantised).

    Why: the cloud keeps only signed bundles, and the bundle holds the int8
    model the fleet actually runs; warm-starting from it continues from what
    the nodes answer with. Works on the fp32 export too.
    """
    from onnx import numpy_helper

    inits = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer}
    weights: list[np.ndarray] = []
    biases: list[np.ndarray] = []
    for i in itertools.count():
        b = inits.get(f"biases.{i}")
        if b is None:
            break
        if f"weights.{i}" in inits:
            w = inits[f"weights.{i}"].astype(np.float32)
        elif f"weights.{i}_quantized" in inits:
            q = inits[f"weights.{i}_quantized"].astype(np.float32)
            zp = inits[f"weights.{i}_zero_point"].astype(np.float32)
            w = (q - zp) * inits[f"weights.{i}_scale"].astype(np.float32)
        else:
            raise ValueError(f"{path}: no weights for layer {i}; not a SensorStudent export")
        weights.append(w)
        biases.append(b.astype(np.float32))
    if len(weights) != 3:
        raise ValueError(f"{path}: expected 3 layers, found {len(weights)}; not a SensorStudent export")
    model = SensorStudent(weights[0].shape[0], (weights[0].shape[1], weights[1].shape[1]))
    with torch.no_grad():
        for p, w in zip(model.weights, weights, strict=True):
            p.copy_(torch.from_numpy(w))
        for p, b in zip(model.biases, biases, strict=True):
            p.copy_(torch.from_numpy(b))
    model.eval()
    return model


def torch_scores(model: SensorStudent, z: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(np.asarray(z, np.float32))).squeeze(-1).double().numpy()


def export_student(model: nn.Module, n_in: int, fp32_path: Path, int8_path: Path) -> None:
    """ONNX (opset 17, dynamic batch) then dynamic int8 weights via the shared ``quantize_int8``.

    Any module from ``features`` to a score in [0, 1] (a :class:`SensorStudent`, or the teacher's
    :class:`~cloud_controller.training.sensor_ensemble.SensorEnsemble`).
    """
    model.eval()
    fp32_path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (torch.zeros(2, n_in),),
            str(fp32_path),
            input_names=["features"],
            output_names=["score"],
            opset_version=17,
            dynamo=False,
            do_constant_folding=True,
            dynamic_axes={"features": {0: "batch"}, "score": {0: "batch"}},
        )
    onnx.checker.check_model(str(fp32_path))
    quantize_int8(fp32_path, int8_path, per_channel=False)


def onnx_scores(path: Path, z: np.ndarray) -> np.ndarray:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    (out,) = sess.run(["score"], {"features": np.asarray(z, np.float32)})
    return np.asarray(out, np.float64).reshape(-1)


# -------------------------------------------------------------------------------- pipeline


def _folds(n: int, k: int) -> list[list[int]]:
    """Round-robin over the stable file order: each fold mixes valve1, valve2 and other."""
    return [list(range(i, n, k)) for i in range(k)]


def run(
    cfg: SensorTrainConfig,
    out: Path,
    data_root: str | Path | None = None,
    log: Any = print,
    name: str = "full",
) -> dict[str, Any]:
    """Build features, teacher, cross-validated students, the final int8 bundle; return the report."""
    t_start = time.perf_counter()
    torch.set_num_threads(1)
    log(f"[sensor] config {name}: {asdict(cfg)}")
    files, free, spec = build_files(cfg, data_root, log)
    spec = fit_floor([*files, *free], spec, cfg.floor_frac)
    teacher = BaselineDetector()
    prepare([*files, *free], spec, teacher)
    threshold = 0.5  # soft targets put the teacher's alarm limit exactly at 0.5
    teacher_m = evaluate(files, [f.teacher > 1.0 for f in files])
    log(f"[sensor] teacher  F1={teacher_m['f1']:.3f} FAR={teacher_m['far']:.2f}% MAR={teacher_m['mar']:.2f}%")

    # Cross-validated student (held-out experiments; the anomaly-free chunks always train).
    cv_torch: list[np.ndarray | None] = [None] * len(files)
    cv_int8: list[np.ndarray | None] = [None] * len(files)
    work = Path(tempfile.mkdtemp(prefix="sensor-cv-", dir=out.parent if out.parent.exists() else None))
    try:
        for fi, test_idx in enumerate(_folds(len(files), cfg.folds)):
            train = [f for i, f in enumerate(files) if i not in test_idx] + free
            t0 = time.perf_counter()
            model = train_student(train, cfg, spec.n_features)
            export_student(model, spec.n_features, work / f"f{fi}.onnx", work / f"f{fi}.int8.onnx")
            for i in test_idx:
                cv_torch[i] = torch_scores(model, files[i].z)
                cv_int8[i] = onnx_scores(work / f"f{fi}.int8.onnx", files[i].z)
            log(
                f"[sensor] fold {fi + 1}/{cfg.folds}: trained on {len(train)} series in "
                f"{time.perf_counter() - t0:.1f}s, held out {len(test_idx)}"
            )
    finally:
        for p in work.glob("*"):
            p.unlink()
        work.rmdir()
    fp32_m = evaluate(files, [s > threshold for s in cv_torch if s is not None])
    int8_m = evaluate(files, [s > threshold for s in cv_int8 if s is not None])
    log(f"[sensor] student fp32 (cv) F1={fp32_m['f1']:.3f} FAR={fp32_m['far']:.2f}% MAR={fp32_m['mar']:.2f}%")
    log(f"[sensor] student int8 (cv) F1={int8_m['f1']:.3f} FAR={int8_m['far']:.2f}% MAR={int8_m['mar']:.2f}%")

    # Final student on every file: this is what ships.
    t0 = time.perf_counter()
    final = train_student([*files, *free], cfg, spec.n_features)
    train_s = time.perf_counter() - t0
    out.mkdir(parents=True, exist_ok=True)
    version = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    fp32_path, int8_path = out / "student.fp32.onnx", out / "student.int8.onnx"
    export_student(final, spec.n_features, fp32_path, int8_path)
    all_z = np.concatenate([f.z for f in files])
    max_diff = float(np.abs(onnx_scores(fp32_path, all_z) - torch_scores(final, all_z)).max())
    final_int8_m = evaluate(files, [onnx_scores(int8_path, f.z) > threshold for f in files])
    log(
        f"[sensor] final int8 (in-sample) F1={final_int8_m['f1']:.3f}; "
        f"onnx fp32 vs torch max |diff|={max_diff:.2e}"
    )

    def trio(prefix: str, m: dict[str, float]) -> dict[str, float]:
        return {f"{prefix}_{k}": float(m[k]) for k in ("f1", "far", "mar")}

    metrics = {
        **trio("teacher", teacher_m),
        **trio("student_fp32_cv", fp32_m),
        **trio("student_int8_cv", int8_m),
        **trio("student_int8_insample", final_int8_m),
        "onnx_fp32_max_abs_diff": max_diff,
        "train_seconds_final": train_s,
    }
    bundle_dir = out / "bundle" / version
    write_sensor_bundle(
        bundle_dir,
        int8_path,
        spec,
        threshold,
        {
            "name": "skab-sensor-student",
            "version": version,
            "metrics": metrics,
            "extra": {
                "config": name,
                "recipe": asdict(cfg),
                "teacher": "per-file maxz x shrunk-Mahalanobis",
                "protocol": "SKAB outlier detection, first 400 rows normal, UCL=q0.999*4/3",
                "files": [f.key for f in files],
            },
        },
    )
    report = {
        "config": name,
        "metrics": metrics,
        "bundle": str(bundle_dir),
        "n_files": len(files),
        "n_free_series": len(free),
        "n_windows": int(sum(len(f.starts) for f in files)),
        "n_features": spec.n_features,
        "total_seconds": time.perf_counter() - t_start,
        "bundle_bytes": sum(p.stat().st_size for p in bundle_dir.iterdir()),
        "model_bytes": (bundle_dir / "model.onnx").stat().st_size,
    }
    (out / "report.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    log(
        f"[sensor] bundle {bundle_dir} ({report['bundle_bytes']} bytes), total {report['total_seconds']:.1f}s"
    )
    return report


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", choices=["tiny", "full"], default="full")
    ap.add_argument("--out", type=Path, default=Path(".cache/sensor"))
    ap.add_argument("--data-root", default=None)
    args = ap.parse_args(argv)
    run(SensorTrainConfig.named(args.config), args.out, args.data_root, name=args.config)
    return 0


if __name__ == "__main__":
    sys.exit(main())
