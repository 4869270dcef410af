"""Run a sensor student bundle with onnxruntime: window features -> anomaly score in [0, 1].

The bundle is the same format as the chat student's
(:mod:`edge_agent.models.bundle`), with the sensor meaning of its two JSON
payloads (the bundle format fixes their file names):

* ``vocab.json`` — the model's input vocabulary: the :class:`FeatureSpec`
  (metric order, statistics, window length, baseline length, scale floors);
* ``labels.json`` — ``{"task": "sensor-anomaly", "labels": ["normal", "anomaly"],
  "threshold": t, "input": name, "output": name}``.

The ONNX graph ends in a sigmoid, so ``score`` is already a probability-like
number; nothing model-specific is hard-coded here. One window is ~0.02 ms on
one thread, so the agent can call this inline from its event loop.

Uncertain windows. A score near the middle of [0, 1] is where the student is
least sure, so those windows are what a bigger teacher should label for the
next distillation: :meth:`SensorModel.annotate` reports them with the exact
model input the student scored (the cloud has no baseline of the device, so
the baseline-relative vector is the only input it can re-score).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import onnxruntime as ort

from edge_agent.models.bundle import Bundle, BundleError, load_bundle, write_bundle
from edge_agent.models.features import (
    DeviceBaseline,
    FeatureSpec,
    FeatureSpecError,
    feature_row,
    group_windows,
)
from edge_agent.protocol.messages import WindowSummary

__all__ = [
    "DEFAULT_UNCERTAIN_BAND",
    "SENSOR_TASK",
    "Annotation",
    "SensorModel",
    "UncertainWindow",
    "write_sensor_bundle",
]

SENSOR_TASK = "sensor-anomaly"
# Scores strictly inside this band are "uncertain"; the agent passes its configured band.
DEFAULT_UNCERTAIN_BAND = (0.35, 0.65)


@dataclasses.dataclass(frozen=True, slots=True)
class UncertainWindow:
    """A scored window the student was unsure about, with the exact input it scored."""

    start: float
    end: float
    score: float
    x: np.ndarray  # float32, length spec.n_features: baseline-relative model input


class Annotation(NamedTuple):
    """What :meth:`SensorModel.annotate` found in one device's closed windows."""

    summaries: list[WindowSummary]  # annotated (scored windows carry ``anomaly_score``)
    events: list[tuple[float, float]]  # (start, score) of windows over the threshold
    uncertain: list[UncertainWindow]  # windows scored strictly inside the uncertainty band


class SensorModel:
    """A verified sensor bundle loaded into an onnxruntime session (created lazily, not in ``__init__``)."""

    def __init__(self, bundle: Bundle | str | Path, intra_op_num_threads: int = 1) -> None:
        self.bundle = bundle if isinstance(bundle, Bundle) else None
        self._path = None if isinstance(bundle, Bundle) else Path(bundle)
        self._threads = intra_op_num_threads
        self._session: ort.InferenceSession | None = None
        self._spec: FeatureSpec | None = None
        self._threshold = 0.5
        self._input = "features"
        self._output = "score"

    # ---------------------------------------------------------------- loading

    def load(self) -> SensorModel:
        """Verify the bundle (if given a path) and build the session; idempotent."""
        if self._session is not None:
            return self
        if self.bundle is None:
            assert self._path is not None
            self.bundle = load_bundle(self._path)
        b = self.bundle
        labels: dict[str, Any] = b.labels
        if labels.get("task") != SENSOR_TASK or b.manifest.task != SENSOR_TASK:
            raise BundleError(f"{b.path}: not a sensor bundle (task {b.manifest.task!r})")
        try:
            self._spec = FeatureSpec.from_json(b.vocab)
            self._threshold = float(labels["threshold"])
        except (FeatureSpecError, KeyError, TypeError, ValueError) as exc:
            raise BundleError(f"{b.path}: bad sensor spec or labels: {exc}") from exc
        self._input = str(labels.get("input", "features"))
        self._output = str(labels.get("output", "score"))
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self._threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        # Single small requests: the arena's pre-grown blocks cost more RSS than they save time.
        opts.enable_cpu_mem_arena = False
        self._session = ort.InferenceSession(
            b.model_bytes, sess_options=opts, providers=["CPUExecutionProvider"]
        )
        # The session holds its own copy of the weights; keeping the file's bytes too doubles them.
        self.bundle = dataclasses.replace(b, model_bytes=b"")
        return self

    @property
    def spec(self) -> FeatureSpec:
        self.load()
        assert self._spec is not None
        return self._spec

    @property
    def threshold(self) -> float:
        self.load()
        return self._threshold

    # ---------------------------------------------------------------- scoring

    def score(self, features: np.ndarray) -> np.ndarray:
        """Anomaly score in [0, 1] per row of *model input* (see :func:`features.model_input`)."""
        self.load()
        assert self._session is not None
        x = np.ascontiguousarray(np.atleast_2d(features), dtype=np.float32)
        if x.shape[1] != self.spec.n_features:
            raise FeatureSpecError(f"model expects {self.spec.n_features} features, got {x.shape[1]}")
        (out,) = self._session.run([self._output], {self._input: x})
        return np.clip(np.asarray(out, dtype=np.float64).reshape(-1), 0.0, 1.0)

    def predict(self, features: np.ndarray) -> np.ndarray:
        """Boolean anomaly flag per row, using the bundle's threshold."""
        return self.score(features) > self._threshold

    def new_baseline(self) -> DeviceBaseline:
        """Per-device calibration state for this model's feature spec (one per device)."""
        return DeviceBaseline(self.spec)

    def annotate(
        self,
        summaries: Sequence[WindowSummary],
        device: str,
        baseline: DeviceBaseline,
        band: tuple[float, float] = DEFAULT_UNCERTAIN_BAND,
    ) -> Annotation:
        """Score one device's closed windows and copy the score into every summary of each window.

        Returns the annotated summaries (unscored ones unchanged: incomplete
        windows, other devices, or a baseline still calibrating), the
        ``(start, score)`` of windows over the threshold, for the caller's
        events, and the windows whose score lies strictly inside ``band``
        (``lo < score < hi``), for the caller's hard examples.
        """
        spec = self.spec
        lo, hi = band
        scored: dict[float, float] = {}
        events: list[tuple[float, float]] = []
        uncertain: list[UncertainWindow] = []
        for start, end, group in group_windows(summaries, device, spec.metrics):
            x = baseline.update(feature_row(group, spec))
            if x is None:
                continue
            s = float(self.score(x)[0])
            scored[start] = s
            if s > self._threshold:
                events.append((start, s))
            if lo < s < hi:
                uncertain.append(UncertainWindow(start, end, s, np.asarray(x, dtype=np.float32)))
        out = [
            w.model_copy(update={"anomaly_score": scored[w.start]})
            if w.device == device and w.start in scored and w.metric in spec.metrics
            else w
            for w in summaries
        ]
        return Annotation(out, events, uncertain)


def write_sensor_bundle(
    directory: str | Path,
    model: bytes | str | Path,
    spec: FeatureSpec,
    threshold: float,
    manifest: dict[str, Any],
) -> Path:
    """A sensor bundle in the format :class:`SensorModel` reads: the ONNX model, its threshold and
    input/output names (``labels.json``), the feature spec (``vocab.json``). Here, next to the reader,
    so the trainer and the tests cannot drift from it."""
    labels = {
        "task": SENSOR_TASK,
        "labels": ["normal", "anomaly"],
        "threshold": threshold,
        "input": "features",
        "output": "score",
    }
    return write_bundle(
        directory,
        {
            "model.onnx": model,
            "labels.json": json.dumps(labels).encode(),
            "vocab.json": json.dumps(spec.to_json()).encode(),
        },
        {"task": SENSOR_TASK, **manifest},
    )
