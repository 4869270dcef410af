"""NAB (Numenta Anomaly Benchmark) loader, realKnownCause subset.

Each series is a ``timestamp,value`` CSV; anomalies are given as windows in
``labels/combined_windows.json`` keyed ``realKnownCause/<file>.csv``. A row is
anomalous if its timestamp falls inside a window, bounds included (NAB's own
scoring rule). Timestamps are naive and treated as UTC, as NAB does.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cloud_controller.datasets import data_root

__all__ = ["CATEGORY", "NabSeries", "list_series", "load_series", "load_windows", "nab_dir"]

CATEGORY = "realKnownCause"


class NabMissingError(FileNotFoundError):
    """NAB files are not where the data root says; the message names the path."""


@dataclass(frozen=True, slots=True, eq=False)
class NabSeries:
    name: str  # file stem, e.g. "nyc_taxi"
    timestamps: np.ndarray  # float64 epoch seconds (UTC)
    values: np.ndarray  # float64 [n]
    anomaly: np.ndarray  # bool [n]
    windows: list[tuple[float, float]]  # inclusive [start, end] epoch seconds

    def __len__(self) -> int:
        return int(self.timestamps.shape[0])


def nab_dir(root: str | Path | None = None) -> Path:
    path = data_root(root) / "nab"
    if not (path / "data" / CATEGORY).is_dir():
        raise NabMissingError(
            f"NAB directory {path / 'data' / CATEGORY} does not exist; "
            "set EDGELOOP_DATA (or pass root=) to the shared datasets"
        )
    return path


def list_series(root: str | Path | None = None) -> list[str]:
    """Series names (file stems), sorted."""
    base = nab_dir(root) / "data" / CATEGORY
    names = sorted(p.stem for p in base.glob("*.csv"))
    if not names:
        raise NabMissingError(f"no NAB CSV files under {base}; check EDGELOOP_DATA")
    return names


def _to_epoch(stamps: list[str], where: Path) -> np.ndarray:
    try:
        arr = np.array([s.strip() for s in stamps], dtype="datetime64[us]")
    except ValueError as exc:
        raise ValueError(f"{where}: bad timestamp ({exc})") from exc
    return arr.astype(np.int64).astype(np.float64) / 1e6


def load_windows(root: str | Path | None = None) -> dict[str, list[tuple[float, float]]]:
    """Anomaly windows per series name, as epoch-second pairs."""
    path = nab_dir(root) / "labels" / "combined_windows.json"
    if not path.is_file():
        raise NabMissingError(f"NAB label file {path} is missing; check EDGELOOP_DATA")
    raw = json.loads(path.read_text(encoding="utf-8"))
    out: dict[str, list[tuple[float, float]]] = {}
    for key, wins in raw.items():
        if not key.startswith(CATEGORY + "/"):
            continue
        name = Path(key).stem
        flat = _to_epoch([s for w in wins for s in w], path) if wins else np.zeros(0)
        out[name] = [(float(flat[i]), float(flat[i + 1])) for i in range(0, len(flat), 2)]
    return out


def load_series(name: str, root: str | Path | None = None) -> NabSeries:
    """Load one realKnownCause series with its inclusive anomaly labels."""
    path = nab_dir(root) / "data" / CATEGORY / f"{Path(name).stem}.csv"
    if not path.is_file():
        raise NabMissingError(f"NAB series {path} is missing (known: {list_series(root)})")
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        header = [h.strip() for h in next(reader, [])]
        if header[:2] != ["timestamp", "value"]:
            raise ValueError(f"{path}: unexpected header {header}")
        rows = [r for r in reader if r]
    timestamps = _to_epoch([r[0] for r in rows], path)
    try:
        values = np.array([float(r[1]) for r in rows], dtype=np.float64)
    except (ValueError, IndexError) as exc:
        raise ValueError(f"{path}: malformed row ({exc})") from exc
    windows = load_windows(root).get(path.stem, [])
    anomaly = np.zeros(len(rows), dtype=bool)
    for start, end in windows:
        anomaly |= (timestamps >= start) & (timestamps <= end)
    return NabSeries(path.stem, timestamps, values, anomaly, windows)
