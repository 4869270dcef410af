"""Label the sensor hard examples the nodes send with a bigger sensor model (the sensor teacher).

A node sends a sensor window upstream when its student scored it inside the
uncertainty band (see ``edge_agent.pipeline.sensor_scoring``). The example carries the exact
model input the student scored: the window's features relative to the
device's own baseline. The cloud has no per-device baseline, so that vector is
the only input it can re-score; any sensor bundle built on the same
:class:`~edge_agent.models.features.FeatureSpec` (typically a larger model
trained on more data) reads it directly, with the same runtime the edge uses
(:class:`~edge_agent.models.sensor_runtime.SensorModel`), so the teacher
sees the input exactly as the student did.

Labelling happens inside ingest, before the one-transaction store, so the
stored row has ``label`` and ``confidence`` like a chat example and
``HardExampleStore.since(..., min_confidence)`` filters both the same way. It
runs on the event loop: one batched onnxruntime call per burst of a small MLP
costs well under a millisecond per hundred examples.

Never raises for bad examples: a vector whose length does not match the
teacher's input (a node running a student with another feature spec) is left
unlabelled and counted, because one odd node must not stall ingest for all.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge_agent.models.bundle import Bundle
from edge_agent.models.sensor_runtime import SensorModel

__all__ = ["SensorTeacher", "SensorTeacherStats", "load_sensor_teacher"]


@dataclass
class SensorTeacherStats:
    batches: int = 0  # calls that scored at least one vector
    labelled: int = 0
    feature_mismatch: int = 0  # vectors of the wrong length (left unlabelled)
    non_finite: int = 0  # vectors with NaN or infinity (left unlabelled)


class SensorTeacher:
    """A sensor bundle used as the teacher for sensor hard examples; ``label`` is the ingest hook.

    The session is built by :meth:`load` (the constructor does no I/O); call it
    off the event loop at start so a broken bundle fails the controller's start,
    not the first burst.
    """

    def __init__(self, bundle: Bundle | str | Path, intra_op_num_threads: int = 1) -> None:
        self.model = SensorModel(bundle, intra_op_num_threads=intra_op_num_threads)
        self.stats = SensorTeacherStats()

    def load(self) -> SensorTeacher:
        self.model.load()
        return self

    @property
    def version(self) -> str:
        """``name@version`` of the bundle: recorded in every label, so a training set can be audited."""
        self.model.load()
        assert self.model.bundle is not None
        m = self.model.bundle.manifest
        return f"{m.name}@{m.version}"

    @property
    def n_features(self) -> int:
        return self.model.spec.n_features

    @property
    def threshold(self) -> float:
        return self.model.threshold

    def label(self, features: Sequence[Sequence[float] | None]) -> list[dict[str, Any] | None]:
        """One teacher dict per feature vector, or None where the vector does not fit; one batched call.

        A dict is ``{"label": "anomaly"|"normal", "score": p, "confidence": max(p, 1-p),
        "model": "name@version"}`` with the bundle's threshold deciding the label.
        """
        n = self.n_features
        out: list[dict[str, Any] | None] = [None] * len(features)
        rows: list[int] = []
        for i, f in enumerate(features):
            if f is None or len(f) != n:
                self.stats.feature_mismatch += 1
            elif not all(math.isfinite(v) for v in f):
                self.stats.non_finite += 1
            else:
                rows.append(i)
        if not rows:
            return out
        x = np.asarray([features[i] for i in rows], dtype=np.float32)
        scores = self.model.score(x)
        self.stats.batches += 1
        threshold, version = self.threshold, self.version
        for i, p in zip(rows, scores.tolist(), strict=True):
            out[i] = {
                "label": "anomaly" if p > threshold else "normal",
                "score": p,
                "confidence": max(p, 1.0 - p),
                "model": version,
            }
        self.stats.labelled += len(rows)
        return out

    __call__ = label


def load_sensor_teacher(path: str | Path, intra_op_num_threads: int = 1) -> SensorTeacher:
    """Verify and load a sensor bundle as teacher (blocking: call it in a worker thread)."""
    return SensorTeacher(path, intra_op_num_threads=intra_op_num_threads).load()
