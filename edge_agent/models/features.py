"""Feature vectors of sensor windows, built from the agent's own :class:`WindowSummary` objects.

The sensor student never sees raw readings: it scores the summaries the
agent's :class:`~edge_agent.preprocess.windows.WindowAggregator` already
computes for the uplink. Training (cloud) and inference (edge) call exactly
these functions, so a feature can never mean one thing in training and
another on the device. Pure numpy: nothing here may pull torch.

A feature row is one device's window: for every metric of the spec, in the
spec's fixed order, the statistics named in ``FeatureSpec.stats``. The model
input is that raw row expressed relative to the device's *baseline* (its first
``baseline_windows`` windows, assumed normal, exactly as the SKAB protocol
fits each detector on the first part of every experiment), then squashed with
a signed log so that a 50-sigma excursion does not saturate an int8 model.
Baseline statistics are per device (each pump has its own operating point);
everything global (floors, clip) lives in the spec, which ships in the bundle.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from edge_agent.protocol.messages import WindowSummary

__all__ = [
    "STATS",
    "DeviceBaseline",
    "FeatureSpec",
    "FeatureSpecError",
    "feature_matrix",
    "feature_row",
    "fit_baseline",
    "group_windows",
    "model_input",
]

# Statistic name -> how to read it from a WindowSummary. ``delta`` is last-first: the
# within-window change, which separates a step (valve closing) from steady noise.
STATS: dict[str, Any] = {
    "mean": lambda s: s.mean,
    "std": lambda s: s.std,
    "min": lambda s: s.min,
    "max": lambda s: s.max,
    "slope": lambda s: s.slope,
    "delta": lambda s: s.last - s.first,
    "range": lambda s: s.max - s.min,
}

SPEC_KIND = "edgeloop.sensor-features"
SPEC_VERSION = 1


class FeatureSpecError(ValueError):
    """The feature spec is malformed or does not match the data or model it is used with."""


@dataclass(frozen=True)
class FeatureSpec:
    """Everything needed to turn window summaries into model input; JSON-serialisable, shipped in the bundle.

    ``scale_floor`` (one per feature) bounds the baseline standard deviation
    from below: a sensor that was perfectly flat during the baseline would
    otherwise turn its first 1e-6 wiggle into an infinite z-score. It is set
    in training from the pooled baseline spread of all training devices.
    """

    metrics: tuple[str, ...]
    stats: tuple[str, ...] = ("mean", "std", "min", "max", "slope", "delta")
    window_s: float = 10.0
    baseline_windows: int = 40
    scale_floor: tuple[float, ...] = ()
    clip: float = 1000.0
    kind: str = SPEC_KIND
    version: int = SPEC_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.metrics or len(set(self.metrics)) != len(self.metrics):
            raise FeatureSpecError(f"metrics must be a non-empty list of unique names: {self.metrics!r}")
        unknown = [s for s in self.stats if s not in STATS]
        if not self.stats or unknown or len(set(self.stats)) != len(self.stats):
            raise FeatureSpecError(f"stats must be unique names from {sorted(STATS)}: {self.stats!r}")
        if self.scale_floor and len(self.scale_floor) != self.n_features:
            raise FeatureSpecError(f"scale_floor has {len(self.scale_floor)} values, need {self.n_features}")
        if self.baseline_windows < 2 or not (self.window_s > 0) or not (self.clip > 0):
            raise FeatureSpecError("baseline_windows must be >= 2, window_s and clip > 0")

    @property
    def n_features(self) -> int:
        return len(self.metrics) * len(self.stats)

    @property
    def names(self) -> list[str]:
        """``metric.stat`` per column, in model-input order."""
        return [f"{m}.{s}" for m in self.metrics for s in self.stats]

    def with_floor(self, floor: Sequence[float]) -> FeatureSpec:
        d = self.to_json()
        d["scale_floor"] = [float(x) for x in floor]
        return FeatureSpec.from_json(d)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["metrics"] = list(self.metrics)
        d["stats"] = list(self.stats)
        d["scale_floor"] = list(self.scale_floor)
        return d

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> FeatureSpec:
        if data.get("kind") != SPEC_KIND:
            raise FeatureSpecError(f"not a sensor feature spec (kind={data.get('kind')!r})")
        if int(data.get("version", 0)) > SPEC_VERSION:
            raise FeatureSpecError(f"feature spec version {data.get('version')} is newer than {SPEC_VERSION}")
        try:
            return cls(
                metrics=tuple(str(m) for m in data["metrics"]),
                stats=tuple(str(s) for s in data["stats"]),
                window_s=float(data["window_s"]),
                baseline_windows=int(data["baseline_windows"]),
                scale_floor=tuple(float(x) for x in data.get("scale_floor", ())),
                clip=float(data.get("clip", 1000.0)),
                extra=dict(data.get("extra", {})),
            )
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, FeatureSpecError):
                raise
            raise FeatureSpecError(f"malformed feature spec: {exc}") from exc


def feature_row(windows: Mapping[str, WindowSummary], spec: FeatureSpec) -> np.ndarray:
    """Raw (unnormalised) feature vector of one device window; every spec metric must be present."""
    missing = [m for m in spec.metrics if m not in windows]
    if missing:
        raise FeatureSpecError(f"window lacks metrics {missing}")
    getters = [STATS[s] for s in spec.stats]
    out = np.empty(spec.n_features, dtype=np.float64)
    i = 0
    for m in spec.metrics:
        w = windows[m]
        for g in getters:
            out[i] = g(w)
            i += 1
    return out


def group_windows(
    summaries: Iterable[WindowSummary], device: str, metrics: Sequence[str] | None = None
) -> list[tuple[float, float, dict[str, WindowSummary]]]:
    """Group one device's summaries by window start: ``[(start, end, {metric: summary})]`` sorted by start.

    Only windows in which every metric of ``metrics`` is present are kept (a
    half-reported window cannot be scored). With a deadband, merged windows of
    different metrics start at different times and are dropped too: the
    sensor model assumes ``deadband=0`` for its metrics.
    """
    by_start: dict[float, dict[str, WindowSummary]] = {}
    ends: dict[float, float] = {}
    for s in summaries:
        if s.device != device:
            continue
        by_start.setdefault(s.start, {})[s.metric] = s
        ends[s.start] = max(ends.get(s.start, s.end), s.end)
    need = set(metrics) if metrics is not None else None
    out = []
    for start in sorted(by_start):
        group = by_start[start]
        if need is not None and not need.issubset(group):
            continue
        out.append((start, ends[start], group))
    return out


def feature_matrix(
    summaries: Iterable[WindowSummary], device: str, spec: FeatureSpec
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(starts, ends, X_raw)`` of one device's complete windows, in time order."""
    groups = group_windows(summaries, device, spec.metrics)
    starts = np.array([g[0] for g in groups], dtype=np.float64)
    ends = np.array([g[1] for g in groups], dtype=np.float64)
    x = np.stack([feature_row(g[2], spec) for g in groups]) if groups else np.zeros((0, spec.n_features))
    return starts, ends, x


def fit_baseline(x_raw: np.ndarray, spec: FeatureSpec) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature baseline centre and scale of a device from its first (assumed normal) windows.

    The scale is the population std, floored by the spec's ``scale_floor``:
    a robust spread would be nicer but 40 windows are too few for quantiles.
    """
    if x_raw.ndim != 2 or x_raw.shape[1] != spec.n_features or x_raw.shape[0] < 2:
        raise FeatureSpecError(f"baseline needs >= 2 rows of {spec.n_features} features, got {x_raw.shape}")
    mu = x_raw.mean(axis=0)
    sd = x_raw.std(axis=0)
    if spec.scale_floor:
        sd = np.maximum(sd, np.asarray(spec.scale_floor, dtype=np.float64))
    sd = np.where(sd > 0, sd, 1.0)
    return mu, sd


def model_input(x_raw: np.ndarray, mu: np.ndarray, sd: np.ndarray, spec: FeatureSpec) -> np.ndarray:
    """Baseline z-scores, clipped and squashed by ``sign(z)*log1p(|z|)``; float32, ready for onnxruntime."""
    z = (np.atleast_2d(x_raw) - mu) / sd
    z = np.clip(z, -spec.clip, spec.clip)
    return (np.sign(z) * np.log1p(np.abs(z))).astype(np.float32)


class DeviceBaseline:
    """Per-device baseline that the edge learns online from the device's first windows.

    Until ``spec.baseline_windows`` complete windows have been seen the device
    is *calibrating* and :meth:`update` returns ``None`` (no score is
    published rather than a meaningless one). This mirrors the SKAB protocol,
    where each detector is fitted on the first part of its experiment.
    """

    __slots__ = ("_rows", "mu", "sd", "spec")

    def __init__(self, spec: FeatureSpec) -> None:
        self.spec = spec
        self._rows: list[np.ndarray] = []
        self.mu: np.ndarray | None = None
        self.sd: np.ndarray | None = None

    @property
    def ready(self) -> bool:
        return self.mu is not None

    def update(self, x_raw_row: np.ndarray) -> np.ndarray | None:
        """Feed one raw feature row; return its model input once the baseline is fitted, else ``None``."""
        if self.mu is None or self.sd is None:
            self._rows.append(np.asarray(x_raw_row, dtype=np.float64))
            if len(self._rows) < self.spec.baseline_windows:
                return None
            self.mu, self.sd = fit_baseline(np.stack(self._rows), self.spec)
            self._rows = []
            # The baseline windows themselves are scored too (as in the protocol); the
            # caller gets only the current row here, the earlier ones were reported unscored.
        return model_input(x_raw_row, self.mu, self.sd, self.spec)[0]
