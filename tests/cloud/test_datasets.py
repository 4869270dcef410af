"""The dataset loaders against the real shared data (counts from shared/datasets/README.md)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cloud_controller.datasets import nab, skab

EXPECTED_NAB = {
    "ambient_temperature_system_failure": (7_267, 2),
    "cpu_utilization_asg_misconfiguration": (18_050, 1),
    "ec2_request_latency_system_failure": (4_032, 3),
    "machine_temperature_system_failure": (22_695, 4),
    "nyc_taxi": (10_320, 5),
    "rogue_agent_key_hold": (1_882, 2),
    "rogue_agent_key_updown": (5_315, 2),
}


def test_skab_experiments_and_counts() -> None:
    exps = skab.list_experiments()
    groups = [e.group for e in exps]
    assert groups.count("anomaly-free") == 1
    assert groups.count("valve1") == 16
    assert groups.count("valve2") == 4
    assert groups.count("other") == 14
    labelled = [e for e in exps if e.group != "anomaly-free"]
    assert len(labelled) == 34
    # numeric order inside a group, not lexical
    assert [e.name for e in exps if e.group == "valve1"] == [str(i) for i in range(16)]

    total = labelled_rows = anomalies = changepoints = 0
    for exp in exps:
        data = skab.load_experiment(exp)
        n = len(data)
        assert data.values.shape == (n, 8)
        assert data.timestamps.shape == (n,)
        assert np.isfinite(data.values).all()
        total += n
        if exp.group == "anomaly-free":
            assert n == 9_405
            assert data.anomaly is None and data.changepoint is None
        else:
            assert data.anomaly is not None and data.changepoint is not None
            assert data.anomaly.dtype == bool and data.anomaly.shape == (n,)
            assert data.anomaly.any(), exp.key  # one collective anomaly per labelled file
            labelled_rows += n
            anomalies += int(data.anomaly.sum())
            changepoints += int(data.changepoint.sum())
    assert total == 46_806
    assert labelled_rows == 37_401
    assert anomalies == 13_067
    assert changepoints == 129


def test_skab_columns_and_time() -> None:
    exp = next(e for e in skab.list_experiments() if e.group == "valve1" and e.name == "0")
    data = skab.load_experiment(exp)
    assert data.columns == [
        "accelerometer1_rms",
        "accelerometer2_rms",
        "current",
        "pressure",
        "temperature",
        "thermocouple",
        "voltage",
        "volume_flow_rate_rms",
    ]
    # 2020-03-09 10:14:33 UTC, first row of valve1/0.csv
    assert data.timestamps[0] == 1_583_748_873.0
    assert data.values[0, 0] == pytest.approx(0.0265878)
    assert np.all(np.diff(data.timestamps) > 0)
    assert skab.metric_name("Volume Flow RateRMS") == "volume_flow_rate_rms"


def test_nab_series_counts_and_windows() -> None:
    names = nab.list_series()
    assert names == sorted(EXPECTED_NAB)
    total = windows = 0
    for name in names:
        s = nab.load_series(name)
        rows, n_windows = EXPECTED_NAB[name]
        assert len(s) == rows and s.values.shape == (rows,)
        assert len(s.windows) == n_windows
        assert s.anomaly.dtype == bool and s.anomaly.any()
        # every window covers at least one row, and labels are exactly the inclusive windows
        for start, end in s.windows:
            assert ((s.timestamps >= start) & (s.timestamps <= end)).any()
        total += rows
        windows += n_windows
    assert total == 69_561
    assert windows == 19


def test_nab_windows_are_inclusive() -> None:
    s = nab.load_series("nyc_taxi")
    start, end = s.windows[0]  # 2014-10-30 15:30 .. 2014-11-03 22:30, both on the 30-min grid
    on_start = np.flatnonzero(s.timestamps == start)
    on_end = np.flatnonzero(s.timestamps == end)
    assert on_start.size and on_end.size
    assert s.anomaly[on_start].all() and s.anomaly[on_end].all()
    assert not s.anomaly[on_start[0] - 1]
    assert not s.anomaly[on_end[-1] + 1]


def test_bad_root_errors_name_path_and_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match="EDGELOOP_DATA") as exc:
        skab.list_experiments(missing)
    assert str(missing) in str(exc.value)
    monkeypatch.setenv("EDGELOOP_DATA", str(missing))
    with pytest.raises(FileNotFoundError, match="nowhere"):
        nab.list_series()
    # the root exists but holds no SKAB / NAB data
    with pytest.raises(FileNotFoundError, match="EDGELOOP_DATA") as exc:
        skab.list_experiments(tmp_path)
    assert str(tmp_path / "skab") in str(exc.value)
    with pytest.raises(FileNotFoundError, match="EDGELOOP_DATA"):
        nab.load_series("nyc_taxi", tmp_path)


def test_nab_unknown_series(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nyc_taxi"):
        nab.load_series("no_such_series")


def test_skab_malformed_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("datetime;Accelerometer1RMS\n2020-01-01 00:00:00;1.0\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad\.csv"):
        skab.load_experiment(bad)
