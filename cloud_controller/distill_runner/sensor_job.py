"""The sensor half of a DistillationJob run: SKAB base data + the fleet's uncertain windows.

Called by :func:`cloud_controller.distill_runner.job.run` for ``task: sensor``; same
files protocol (:mod:`cloud_controller.distill_runner.protocol`), same metric naming
(``fixed_*`` / ``new_*`` before and after), so the reconciler's gate does not
care which task it is judging.

What a sensor hard example is. An edge node reports a window as *uncertain*
when its student's score falls inside the uncertainty band (default 0.35 to
0.65); it uploads the window's model-input vector (baseline-relative, squashed
z-scores: no raw readings leave the device) and the cloud's sensor teacher
labels it with a probability (``teacher.score``). Rows without a usable
teacher probability, or whose vector has another length than the feature spec,
are dropped and counted.

Recipe (see ``docs/sensor-model.md``, measured by ``bench/bench_loop.py``):

* base data = the SKAB experiments of the base groups (``skab?groups=valve1``)
  plus the anomaly-free recording, soft targets from the per-experiment
  statistical detector (the protocol is unsupervised: no gold labels are used
  for training);
* the feature spec is the parent's (the hard examples were computed with it,
  and a node's baselines stay valid across versions);
* targets: the base keeps the soft scores of the detector (as the first
  student was trained); a hard example's target is ``alpha`` x the teacher's
  probability + (1 - ``alpha``) x its decision (the job's ``alpha``, as for
  chat's soft and hard terms): the windows the edge was unsure about get an
  answer, not just another "maybe";
* without a parent, ``studentParams`` may ask for ``members`` (an ensemble of that
  many students in one graph) and ``context`` (targets over that many windows):
  the sensor teacher's recipe, :mod:`cloud_controller.training.sensor_ensemble`;
* with a parent bundle the student is *warm-started* from the parent's
  (dequantised int8) weights and fine-tuned for ``finetune_epochs`` on base +
  hard examples (oversampled ``hard_repeat`` times); without one it is trained
  from scratch. Fresh draws differ from seed to seed by about as much as one
  turn of the loop gains (F1 0.70 to 0.73 on unseen valve2/other), so
  continuing from the deployed function is what makes the gain reliable.

Evaluation runs the int8 bundle through the edge's own
:class:`edge_agent.models.sensor_runtime.SensorModel`:

* ``fixed_*``: the base groups' experiments with their gold labels, SKAB
  protocol point-wise (``f1``, ``acc`` in %, ``far``/``mar`` in %), and the
  share of windows in the uncertainty band (``escalation_rate``, a fraction);
* ``new_*``: the held-out hard examples, the teacher's decision as gold
  (``acc``, window-level ``f1`` in %), ``escalation_rate`` and ``mean_confidence``;
* ``heldback_*`` (with ``data.heldBack``): labelled experiments that are neither
  base data nor hard examples of this job, the ``fixed_*`` figures on them. This
  is where a gain means the loop generalised (``gate.gainOn: heldback``); the
  ``new_*`` agreement only says the student now repeats the teacher on windows
  it was shown. They are dropped from the base if it names them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cloud_controller.distill_runner.collect import held_out
from cloud_controller.distill_runner.protocol import RunnerSpec, parse_base
from cloud_controller.ingest.contracts import StoredHardExample
from edge_agent.models.sensor_runtime import SensorModel

if TYPE_CHECKING:
    from cloud_controller.training.sensor_train import FileWindows, SensorTrainConfig
    from edge_agent.models.features import FeatureSpec

__all__ = ["evaluate_fixed", "evaluate_new", "run_sensor", "teacher_probability"]

ProgressFn = Callable[[Any, float, str], None]


def teacher_probability(h: StoredHardExample) -> float | None:
    """The teacher's anomaly probability, on the side of 0.5 its decision is on; None if unusable.

    ``score`` when given, else label + confidence. A teacher bundle may have
    another threshold than 0.5: when its label and its score disagree about the
    side, the label wins (the probability is mirrored), because the student's
    threshold is 0.5 and the label is what the teacher decided.
    """
    t = h.teacher or {}
    label = t.get("label", h.label)
    s = t.get("score")
    if isinstance(s, int | float) and not isinstance(s, bool) and 0.0 <= float(s) <= 1.0:
        p = float(s)
        if label in ("anomaly", "normal") and (p > 0.5) != (label == "anomaly"):
            p = 1.0 - p
        return p
    conf = t.get("confidence", h.confidence)
    if label in ("anomaly", "normal") and isinstance(conf, int | float) and 0.0 <= float(conf) <= 1.0:
        return float(conf) if label == "anomaly" else 1.0 - float(conf)
    return None


def _band_share(scores: np.ndarray, band: tuple[float, float]) -> float:
    if not len(scores):
        return 0.0
    lo, hi = band
    return float(((scores > lo) & (scores < hi)).mean())


def evaluate_fixed(
    bundle: Path, files: Sequence[FileWindows], band: tuple[float, float], prefix: str = "fixed"
) -> dict[str, float]:
    """SKAB protocol metrics of a bundle on labelled experiments (through the edge runtime)."""
    from cloud_controller.training.sensor_train import evaluate

    if not files:
        return {f"{prefix}_n": 0.0}
    model = SensorModel(bundle).load()
    scores = [model.score(f.z) for f in files]
    m = evaluate(files, [s > model.threshold for s in scores])
    total = m["tp"] + m["fp"] + m["fn"] + m["tn"]
    all_scores = np.concatenate(scores)
    return {
        f"{prefix}_f1": round(100 * m["f1"], 3),
        f"{prefix}_acc": round(100 * (m["tp"] + m["tn"]) / max(1, total), 3),
        f"{prefix}_far": round(m["far"], 3),
        f"{prefix}_mar": round(m["mar"], 3),
        f"{prefix}_escalation_rate": round(_band_share(all_scores, band), 4),
        f"{prefix}_n": float(len(all_scores)),
        f"{prefix}_files": float(len(files)),
    }


def evaluate_new(
    bundle: Path, x: np.ndarray, p_teacher: np.ndarray, band: tuple[float, float], prefix: str = "new"
) -> dict[str, float]:
    """Agreement with the teacher's decisions on held-out hard examples (through the edge runtime)."""
    if not len(x):
        return {f"{prefix}_n": 0.0}
    model = SensorModel(bundle).load()
    s = model.score(x)
    pred, gold = s > model.threshold, p_teacher > 0.5
    tp = int((pred & gold).sum())
    fp = int((pred & ~gold).sum())
    fn = int((~pred & gold).sum())
    return {
        f"{prefix}_acc": round(100 * float((pred == gold).mean()), 3),
        f"{prefix}_f1": round(100 * tp / (tp + (fp + fn) / 2), 3) if tp + fp + fn else 100.0,
        f"{prefix}_escalation_rate": round(_band_share(s, band), 4),
        f"{prefix}_mean_confidence": round(float(np.maximum(s, 1 - s).mean()), 4),
        f"{prefix}_n": float(len(x)),
    }


def _split_hard(
    hard: Sequence[StoredHardExample], n_features: int, fraction: float, holdout: Callable[[str, float], bool]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    tr_x: list[list[float]] = []
    tr_p: list[float] = []
    ev_x: list[list[float]] = []
    ev_p: list[float] = []
    dropped = 0
    for h in hard:
        p = teacher_probability(h)
        feats = h.features or []
        if p is None or len(feats) != n_features or not all(np.isfinite(feats)):
            dropped += 1
            continue
        if holdout(h.id, fraction):
            ev_x.append(feats)
            ev_p.append(p)
        else:
            tr_x.append(feats)
            tr_p.append(p)

    def arr(rows: list[list[float]]) -> np.ndarray:
        return np.asarray(rows, np.float32).reshape(len(rows), n_features)

    return arr(tr_x), np.asarray(tr_p, np.float32), arr(ev_x), np.asarray(ev_p, np.float32), dropped


def _spec_of_parent(parent: str | None) -> FeatureSpec | None:
    if not parent:
        return None
    return SensorModel(parent).load().spec


def _held_back_files(spec: RunnerSpec, cfg: SensorTrainConfig) -> list[FileWindows]:
    """The labelled experiments of ``spec.held_back`` (every one, whatever the config's file cap)."""
    from cloud_controller.training.sensor_train import build_files

    if not spec.held_back:
        return []
    hb = parse_base(spec.held_back)
    if hb.dataset != "skab":
        raise ValueError(f"held-back data {spec.held_back!r}: only skab experiments can be held back")
    every = replace(cfg, max_files=None, use_free=False)
    files, _, _ = build_files(every, spec.data_root, lambda *_: None, groups=hb.groups or None)
    keep = [f for f in files if (not hb.experiments or f.key in hb.experiments) and f.key not in hb.exclude]
    unknown = sorted(set(hb.experiments) - {f.key for f in keep})
    if unknown:
        raise ValueError(f"held-back data {spec.held_back!r}: unknown SKAB experiment(s) {unknown}")
    return keep


def run_sensor(
    spec: RunnerSpec, out: Path, progress: ProgressFn, hard: Sequence[StoredHardExample]
) -> dict[str, Any]:
    """Collect, re-distill, quantize, evaluate (sensor); returns what goes into result.json."""
    from cloud_controller.training.sensor_train import (
        BaselineDetector,
        SensorTrainConfig,
        build_files,
        export_student,
        fit,
        fit_floor,
        prepare,
        soft_targets,
        student_from_onnx,
        write_sensor_bundle,
    )

    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    base = parse_base(spec.base)
    if base.dataset != "skab":
        raise ValueError(f"unknown base data set {base.dataset!r} for task sensor (expected skab)")
    cfg = SensorTrainConfig.named(spec.config)
    if spec.seed is not None:
        cfg = replace(cfg, seed=spec.seed)
    band = spec.uncertain_band

    progress("Collecting", 0.02, f"loading SKAB groups {base.groups or 'all'}")
    files, free, raw_spec = build_files(cfg, spec.data_root, lambda *_: None, groups=base.groups or None)
    held = _held_back_files(spec, cfg)
    # Never train on what is scored as held back, nor on what the base excludes.
    drop = set(base.exclude) | {f.key for f in held}
    files = [f for f in files if f.key not in drop]
    if base.experiments:
        files = [f for f in files if f.key in set(base.experiments)]
    if not files:
        raise ValueError(f"no SKAB experiments left in the base {spec.base!r}")
    parent_spec = _spec_of_parent(spec.parent_bundle)
    fspec = parent_spec or fit_floor([*files, *free], raw_spec, cfg.floor_frac)
    if parent_spec is not None and tuple(parent_spec.metrics) != tuple(raw_spec.metrics):
        raise ValueError(f"parent's metrics {parent_spec.metrics} differ from SKAB's {raw_spec.metrics}")
    prepare([*files, *free, *held], fspec, BaselineDetector())
    hx, hp, ex, ep, dropped = _split_hard(hard, fspec.n_features, spec.new_eval_fraction, held_out)
    in_train = len(ex) < 4 and len(hx) > 0
    if in_train:  # too few to hold out: evaluate on all of them (reported as new_in_train = 1)
        ex, ep = np.concatenate([hx, ex]), np.concatenate([hp, ep])
    progress(
        "Collecting",
        0.1,
        f"{len(files)} base experiments + {len(free)} anomaly-free series, "
        f"{len(hx)} new windows ({dropped} unusable)"
        + (f", {len(held)} held-back experiments (scored only)" if held else ""),
    )
    timings["collect_s"] = time.perf_counter() - t0

    t1 = time.perf_counter()
    import torch
    from torch import nn

    from cloud_controller.training.sensor_ensemble import context_scores, fit_ensemble

    torch.set_num_threads(1)
    # studentParams.context (the sensor teacher's recipe, :mod:`.sensor_ensemble`): a window's target
    # is the detector's highest score over it and its neighbours; 1 (students) = the window alone.
    p = spec.student_params
    context = int(p.get("context", 1))
    x_base = np.concatenate([f.z for f in [*files, *free]]).astype(np.float32)
    y_base = np.concatenate(
        [soft_targets(context_scores(f.teacher, context), cfg.sharpness) for f in [*files, *free]]
    ).astype(np.float32)
    # The teacher's answers on what the edge escalated: alpha x its probability + (1 - alpha) x its
    # decision, like chat's soft + hard terms. The base keeps v1's soft targets, so the one thing
    # that changes between parent and candidate is the fleet's new data.
    a = spec.alpha
    y_hard = (a * hp + (1 - a) * (hp > 0.5)).astype(np.float32)
    x = np.concatenate([x_base, np.repeat(hx, spec.hard_repeat, axis=0)])
    y = np.concatenate([y_base, np.repeat(y_hard, spec.hard_repeat)])
    init = None
    if spec.parent_bundle:
        try:
            init = student_from_onnx(Path(spec.parent_bundle) / "model.onnx")
        except ValueError as exc:  # another architecture: fall back to training anew
            progress("Training", 0.11, f"cannot warm-start from the parent ({exc}); training anew")
    if init is not None and (init.weights[0].shape[0] != fspec.n_features):
        init = None
    if init is not None:
        cfg = replace(cfg, hidden=(int(init.weights[0].shape[1]), int(init.weights[1].shape[1])))
    else:
        cfg = replace(cfg, hidden=(int(p.get("hidden", cfg.hidden[0])), int(p.get("hidden2", cfg.hidden[1]))))
    # studentParams.members: an ensemble of that many students in one graph (the sensor teacher's
    # recipe); a warm start continues the one parent.
    members = 1 if init is not None else max(1, int(p.get("members", 1)))
    epochs = spec.epochs or (cfg.finetune_epochs if init is not None else cfg.epochs)
    mode = "fine-tuning the parent" if init is not None else "training a new student"
    what = f"{members} x hidden {cfg.hidden}" if members > 1 else f"hidden {cfg.hidden}"
    ctx = f", targets over {context} windows" if context > 1 else ""
    progress("Training", 0.12, f"{mode}: {len(x)} rows, {epochs} epochs, {what}{ctx}")
    last = [0.0]

    def on_epoch(ep_i: int, n: int) -> None:
        now = time.perf_counter()
        if now - last[0] >= 1.0 or ep_i == n:  # at most a line a second
            last[0] = now
            progress("Training", 0.12 + 0.56 * ep_i / n, f"epoch {ep_i}/{n}")

    model: nn.Module
    if members > 1:
        model = fit_ensemble(x, y, cfg, members, epochs=epochs, on_epoch=on_epoch)
    else:
        model = fit(
            x,
            y,
            cfg,
            init=init,
            epochs=epochs,
            lr=cfg.finetune_lr if init is not None else cfg.lr,
            on_epoch=on_epoch,
        )
    progress("Training", 0.7, "exporting int8")
    fp32, int8 = out / "student_fp32.onnx", out / "student_int8.onnx"
    export_student(model, fspec.n_features, fp32, int8)
    manifest: dict[str, Any] = {
        "name": spec.output_model,
        "version": spec.version,
        "parent_version": spec.parent_version,
        "extra": {
            "recipe": {
                "config": spec.config,
                "hidden": list(cfg.hidden),
                "epochs": epochs,
                "members": members,
                "context": context,
            },
            "warm_start": init is not None,
            "job": spec.job,
            "base": spec.base,
        },
    }
    candidate = out / "candidate"
    if not candidate.exists():
        write_sensor_bundle(candidate, int8, fspec, 0.5, {**manifest, "created": "2000-01-01T00:00:00Z"})
    timings["train_s"] = time.perf_counter() - t1

    progress("Evaluating", 0.75, f"{len(files)} fixed experiments + {len(ex)} new windows")
    t2 = time.perf_counter()
    def scores(b: Path) -> dict[str, float]:
        m = {**evaluate_fixed(b, files, band), **evaluate_new(b, ex, ep, band)}
        return {**m, **evaluate_fixed(b, held, band, "heldback")} if held else m

    after = scores(candidate)
    before = scores(Path(spec.parent_bundle)) if spec.parent_bundle else {}
    after["new_in_train"] = float(in_train)
    progress("Evaluating", 0.95, "writing the bundle")
    bundle = out / "bundle"
    if not bundle.exists():
        write_sensor_bundle(bundle, int8, fspec, 0.5, {**manifest, "metrics": after})
    timings["evaluate_s"] = time.perf_counter() - t2
    timings["total_s"] = time.perf_counter() - t0
    return {
        "ok": True,
        "version": spec.version,
        "bundle": bundle.name,
        "metrics_before": before,
        "metrics_after": after,
        "examples": len(x),
        "hard_examples": {
            "total": len(hard),
            "train": len(hx),
            "eval": len(ex),
            "dropped": dropped,
        },
        "timings": {k: round(v, 3) for k, v in timings.items()},
    }
