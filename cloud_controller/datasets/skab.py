"""SKAB (Skoltech Anomaly Benchmark) loader: multivariate water-pump sensor experiments.

Format (see ``shared/datasets/README.md``): ``;``-separated CSV, one row per
second, ``datetime`` in ``YYYY-mm-dd HH:MM:SS`` (treated as UTC), 8 sensor
columns, then ``anomaly`` / ``changepoint`` (absent in the anomaly-free file).
Sensor names are normalised to snake_case metric names once, here, so every
consumer (replay, training, dashboards) uses the same metric names.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from cloud_controller.datasets import data_root

__all__ = [
    "GROUPS",
    "SENSOR_COLUMNS",
    "SkabData",
    "SkabExperiment",
    "list_experiments",
    "load_experiment",
    "metric_name",
    "skab_dir",
]

Group = Literal["anomaly-free", "valve1", "valve2", "other"]
GROUPS: tuple[Group, ...] = ("anomaly-free", "valve1", "valve2", "other")
SENSOR_COLUMNS: tuple[str, ...] = (
    "Accelerometer1RMS",
    "Accelerometer2RMS",
    "Current",
    "Pressure",
    "Temperature",
    "Thermocouple",
    "Voltage",
    "Volume Flow RateRMS",
)


class SkabMissingError(FileNotFoundError):
    """SKAB files are not where the data root says; the message names the path."""


@dataclass(frozen=True, slots=True)
class SkabExperiment:
    group: Group
    name: str  # file stem: "0".."15" or "anomaly-free"
    path: Path

    @property
    def key(self) -> str:
        return f"{self.group}/{self.name}"


@dataclass(frozen=True, slots=True, eq=False)
class SkabData:
    timestamps: np.ndarray  # float64 epoch seconds (UTC)
    values: np.ndarray  # float64 [n, 8]
    columns: list[str]  # snake_case metric names, aligned with values' columns
    anomaly: np.ndarray | None  # bool [n], None for the anomaly-free file
    changepoint: np.ndarray | None  # bool [n]

    def __len__(self) -> int:
        return int(self.timestamps.shape[0])


def metric_name(column: str) -> str:
    """Snake-case a SKAB column: ``Volume Flow RateRMS`` -> ``volume_flow_rate_rms``."""
    s = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", column.strip())
    s = re.sub(r"[^A-Za-z0-9]+", "_", s)
    return s.strip("_").lower()


def skab_dir(root: str | Path | None = None) -> Path:
    path = data_root(root) / "skab" / "data"
    if not path.is_dir():
        raise SkabMissingError(
            f"SKAB directory {path} does not exist; set EDGELOOP_DATA (or pass root=) to the shared datasets"
        )
    return path


def _sort_key(path: Path) -> tuple[int, str]:
    return (int(path.stem), "") if path.stem.isdigit() else (1 << 30, path.stem)


def list_experiments(root: str | Path | None = None) -> list[SkabExperiment]:
    """All experiments in a stable order (group order of GROUPS, then numeric file order)."""
    base = skab_dir(root)
    out: list[SkabExperiment] = []
    for group in GROUPS:
        gdir = base / group
        if not gdir.is_dir():
            continue
        for path in sorted(gdir.glob("*.csv"), key=_sort_key):
            out.append(SkabExperiment(group, path.stem, path))
    if not out:
        raise SkabMissingError(f"no SKAB CSV files under {base}; check EDGELOOP_DATA")
    return out


def _epoch_seconds(stamps: list[str], path: Path) -> np.ndarray:
    try:
        arr = np.array(stamps, dtype="datetime64[us]")
    except ValueError as exc:
        raise ValueError(f"{path}: bad datetime value ({exc})") from exc
    return arr.astype(np.int64).astype(np.float64) / 1e6


def load_experiment(exp: SkabExperiment | str | Path) -> SkabData:
    """Load one experiment file (an entry of :func:`list_experiments` or a CSV path)."""
    path = exp.path if isinstance(exp, SkabExperiment) else Path(exp)
    if not path.is_file():
        raise SkabMissingError(f"SKAB file {path} is missing; check EDGELOOP_DATA")
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh, delimiter=";")
        try:
            header = [h.strip() for h in next(reader)]
        except StopIteration:
            raise ValueError(f"{path}: empty file") from None
        rows = [r for r in reader if r]
    try:
        ts_i = header.index("datetime")
        sensor_i = [header.index(c) for c in SENSOR_COLUMNS]
    except ValueError as exc:
        raise ValueError(f"{path}: unexpected header {header} ({exc})") from exc
    n = len(rows)
    timestamps = _epoch_seconds([r[ts_i] for r in rows], path)
    try:
        values = np.array([[float(r[i]) for i in sensor_i] for r in rows], dtype=np.float64).reshape(n, 8)
        labels: dict[str, np.ndarray | None] = {}
        for col in ("anomaly", "changepoint"):
            if col in header:
                j = header.index(col)
                labels[col] = np.array([float(r[j]) for r in rows], dtype=np.float64) > 0.5
            else:
                labels[col] = None
    except (ValueError, IndexError) as exc:
        raise ValueError(f"{path}: malformed row ({exc})") from exc
    return SkabData(
        timestamps=timestamps,
        values=values,
        columns=[metric_name(c) for c in SENSOR_COLUMNS],
        anomaly=labels["anomaly"],
        changepoint=labels["changepoint"],
    )
