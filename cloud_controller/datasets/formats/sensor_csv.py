"""Sensor series from CSV: a timestamp column, one or more numeric value columns, labels.

* The timestamp column is the one named ``timestamp``, ``datetime``, ``time`` or ``ts``
  (else the first column): ISO dates (``2014-04-01 00:00:00``, naive = UTC) or epoch seconds.
* Labels: a column named ``anomaly``, ``label`` or ``is_anomaly`` (0/1), or anomaly
  windows in a JSON file as NAB publishes them
  (``{"<dir>/<file>.csv": [["start", "end"], ...]}``, bounds inclusive; a key
  matches a file by its path relative to the data folder or by its file name).
* ``changepoint`` is read and ignored (SKAB ships it); every other column must be
  numeric: a text value names its file, line and column.
* The delimiter is ``,`` or ``;`` (SKAB), whichever the header uses.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cloud_controller.datasets.formats.format_errors import DatasetFormatError, read_text_lines
from cloud_controller.datasets.skab import metric_name

__all__ = ["LABEL_COLUMNS", "SensorSeries", "find_windows_file", "load_sensor_dataset", "load_windows_json"]

TIME_COLUMNS = ("timestamp", "datetime", "time", "ts")
LABEL_COLUMNS = ("anomaly", "label", "is_anomaly")
IGNORED_COLUMNS = ("changepoint",)


@dataclass(frozen=True, eq=False)
class SensorSeries:
    key: str  # path relative to the data folder
    timestamps: np.ndarray  # float64 epoch seconds, [n]
    values: np.ndarray  # float64 [n, k]
    columns: list[str]  # metric names (snake_case), aligned with values
    anomaly: np.ndarray | None  # bool [n]


def _epoch(stamp: str, path: Path, line: int) -> float:
    try:
        return float(stamp)
    except ValueError:
        pass
    try:
        return float(np.datetime64(stamp.strip().replace("T", " ").rstrip("Z"), "us").astype(np.int64)) / 1e6
    except ValueError as exc:
        raise DatasetFormatError(path, f"bad timestamp {stamp!r}", line) from exc


def load_windows_json(path: Path) -> dict[str, list[tuple[float, float]]]:
    """NAB ``combined_windows.json``: key -> inclusive (start, end) epoch-second windows."""
    lines = read_text_lines(path)
    try:
        raw = json.loads("\n".join(lines))
    except json.JSONDecodeError as exc:
        raise DatasetFormatError(path, f"bad JSON ({exc.msg})", exc.lineno) from exc
    if not isinstance(raw, dict):
        raise DatasetFormatError(path, 'expected {"<file>.csv": [[start, end], ...]}')
    out: dict[str, list[tuple[float, float]]] = {}
    for key, wins in raw.items():
        pairs: list[tuple[float, float]] = []
        for w in wins if isinstance(wins, list) else [None]:
            if not (isinstance(w, list) and len(w) == 2):
                raise DatasetFormatError(path, f"{key}: a window must be [start, end]")
            pairs.append((_epoch(str(w[0]), path, 0), _epoch(str(w[1]), path, 0)))
        out[str(key)] = pairs
    return out


def find_windows_file(root: Path) -> Path | None:
    """``labels/combined_windows.json`` (the NAB layout) or a lone ``*windows*.json`` next to the data."""
    base = root if root.is_dir() else root.parent
    for cand in (base / "labels" / "combined_windows.json", base / "combined_windows.json"):
        if cand.is_file():
            return cand
    found = sorted(base.glob("*windows*.json"))
    return found[0] if len(found) == 1 else None


def _load_csv(path: Path, key: str, windows: dict[str, list[tuple[float, float]]] | None) -> SensorSeries:
    lines = read_text_lines(path)
    if not lines:
        raise DatasetFormatError(path, "empty file", 1)
    delim = ";" if lines[0].count(";") > lines[0].count(",") else ","
    rows = list(csv.reader(lines, delimiter=delim))
    header = [h.strip() for h in rows[0]]
    lower = [h.lower() for h in header]
    t_i = next((lower.index(c) for c in TIME_COLUMNS if c in lower), 0)
    y_i = next((lower.index(c) for c in LABEL_COLUMNS if c in lower), None)
    v_idx = [i for i, h in enumerate(lower) if i not in (t_i, y_i) and h not in IGNORED_COLUMNS]
    if not v_idx:
        raise DatasetFormatError(path, f"no value column besides {header[t_i]!r}", 1)
    ts, vals, ys = [], [], []
    for lineno, row in enumerate(rows[1:], start=2):
        if not any(c.strip() for c in row):
            raise DatasetFormatError(path, "empty line", lineno)
        if len(row) != len(header):
            raise DatasetFormatError(path, f"{len(row)} fields but the header has {len(header)}", lineno)
        ts.append(_epoch(row[t_i], path, lineno))
        vec = []
        for i in v_idx:
            try:
                vec.append(float(row[i]))
            except ValueError as exc:
                raise DatasetFormatError(
                    path, f"column {header[i]!r}: {row[i]!r} is not a number (unknown column?)", lineno
                ) from exc
        vals.append(vec)
        if y_i is not None:
            try:
                ys.append(float(row[y_i]) > 0.5)
            except ValueError as exc:
                raise DatasetFormatError(path, f"label {row[y_i]!r} is not 0/1", lineno) from exc
    if len(ts) < 2:
        raise DatasetFormatError(path, "fewer than 2 rows", len(rows))
    t = np.asarray(ts, np.float64)
    anomaly: np.ndarray | None = np.asarray(ys, bool) if y_i is not None else None
    if anomaly is None and windows is not None:
        wins = windows.get(key) or next((w for k, w in windows.items() if Path(k).name == path.name), None)
        if wins is not None:
            anomaly = np.zeros(len(t), bool)
            for a, b in wins:
                anomaly |= (t >= a) & (t <= b)
    order = np.argsort(t, kind="stable")  # a backwards step (DST) must not break windowing
    return SensorSeries(
        key,
        t[order],
        np.asarray(vals, np.float64)[order],
        [metric_name(header[i]) for i in v_idx],
        anomaly[order] if anomaly is not None else None,
    )


def load_sensor_dataset(path: Path, windows_file: Path | None = None) -> list[SensorSeries]:
    """Every ``*.csv`` under ``path`` (or the one file), labelled by column or windows; same columns."""
    path = Path(path)
    if not path.exists():
        raise DatasetFormatError(path, "does not exist")
    files = sorted(path.rglob("*.csv")) if path.is_dir() else [path]
    if not files:
        raise DatasetFormatError(path, "no .csv files")
    wfile = windows_file or find_windows_file(path)
    windows = load_windows_json(wfile) if wfile is not None else None
    base = path if path.is_dir() else path.parent
    series = [_load_csv(f, f.relative_to(base).as_posix(), windows) for f in files]
    first = series[0]
    for s in series[1:]:
        if s.columns != first.columns:
            raise DatasetFormatError(
                base / s.key, f"columns {s.columns} differ from {first.columns} in {first.key}"
            )
    return series
