"""Sensor features and the SKAB student: real SKAB rows through the agent's real WindowAggregator."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cloud_controller.datasets.skab import SkabData, list_experiments, load_experiment
from edge_agent.config import WindowConfig
from edge_agent.models.features import (
    DeviceBaseline,
    FeatureSpec,
    FeatureSpecError,
    feature_matrix,
    feature_row,
    fit_baseline,
    group_windows,
    model_input,
)
from edge_agent.preprocess.windows import WindowAggregator
from edge_agent.protocol.messages import WindowSummary

DEVICE = "pump-1"


def _skab(key: str = "valve1/0") -> SkabData:
    exp = next(e for e in list_experiments() if e.key == key)
    return load_experiment(exp)


def _summaries(d: SkabData, rows: int, length_s: float = 10.0) -> list[WindowSummary]:
    """What the agent emits for the first ``rows`` rows: readings in, poll per row, flush at the end."""
    agg = WindowAggregator(WindowConfig(length_s=length_s))
    out: list[WindowSummary] = []
    for i in range(rows):
        ts = float(d.timestamps[i])
        for j, m in enumerate(d.columns):
            agg.add(DEVICE, m, ts, float(d.values[i, j]), ts)
        out.extend(agg.poll(ts))
    out.extend(agg.flush_all())
    return out


def test_features_from_real_windows_match_the_rows_and_the_spec() -> None:
    d = _skab()
    spec = FeatureSpec(metrics=tuple(d.columns))
    summaries = _summaries(d, 300)
    starts, ends, x = feature_matrix(summaries, DEVICE, spec)
    assert x.shape == (len(starts), spec.n_features) == (len(starts), 8 * 6)
    assert len(spec.names) == spec.n_features and spec.names[0] == f"{d.columns[0]}.mean"
    # Deterministic: a second aggregator run gives bit-identical features.
    _, _, x2 = feature_matrix(_summaries(d, 300), DEVICE, spec)
    assert np.array_equal(x, x2)
    # The features are the statistics of exactly the rows in each window (epoch-aligned 10 s).
    k = 3
    rows = (d.timestamps >= starts[k]) & (d.timestamps < ends[k])
    rows[300:] = False
    v = d.values[rows]
    stats = spec.stats
    for j in range(8):
        got = dict(zip(stats, x[k, j * len(stats) : (j + 1) * len(stats)], strict=True))
        assert got["mean"] == pytest.approx(v[:, j].mean(), rel=1e-12, abs=1e-12)
        assert got["std"] == pytest.approx(v[:, j].std(), rel=1e-9, abs=1e-12)
        assert got["min"] == v[:, j].min() and got["max"] == v[:, j].max()
        assert got["delta"] == pytest.approx(v[-1, j] - v[0, j], abs=1e-12)
    # Other devices and incomplete windows are ignored.
    other = [s.model_copy(update={"device": "pump-2"}) for s in summaries]
    partial = [s for s in summaries if not (s.start == starts[1] and s.metric == d.columns[2])]
    assert len(group_windows([*summaries, *other], DEVICE, spec.metrics)) == len(starts)
    assert len(group_windows(partial, DEVICE, spec.metrics)) == len(starts) - 1
    with pytest.raises(FeatureSpecError):
        feature_row({m: summaries[0] for m in d.columns[:-1]}, spec)


def test_spec_round_trips_through_json_and_rejects_garbage() -> None:
    spec = FeatureSpec(metrics=("a", "b"), stats=("mean", "slope"), baseline_windows=5).with_floor([0.1] * 4)
    back = FeatureSpec.from_json(json.loads(json.dumps(spec.to_json())))
    assert back == spec
    with pytest.raises(FeatureSpecError):
        FeatureSpec.from_json({**spec.to_json(), "kind": "chat"})
    with pytest.raises(FeatureSpecError):
        FeatureSpec(metrics=("a",), stats=("median",))
    with pytest.raises(FeatureSpecError):
        FeatureSpec(metrics=("a",), stats=("mean",), scale_floor=(1.0, 2.0))


def test_device_baseline_calibrates_then_matches_the_batch_path() -> None:
    d = _skab()
    spec = FeatureSpec(metrics=tuple(d.columns), baseline_windows=10)
    _, _, x = feature_matrix(_summaries(d, 200), DEVICE, spec)
    base = DeviceBaseline(spec)
    got = [base.update(row) for row in x]
    assert all(g is None for g in got[:9]) and base.ready
    mu, sd = fit_baseline(x[:10], spec)
    want = model_input(x, mu, sd, spec)
    assert np.array_equal(np.stack([g for g in got[9:] if g is not None]), want[9:])
    assert want.dtype == np.float32 and np.isfinite(want).all()


@pytest.mark.train
def test_tiny_training_exports_a_working_int8_bundle(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnx")
    from cloud_controller.training import sensor_train as st
    from edge_agent.models.bundle import load_bundle
    from edge_agent.models.sensor_runtime import SensorModel

    cfg = st.SensorTrainConfig.named("tiny")
    report = st.run(cfg, tmp_path / "out", log=lambda *_: None, name="tiny")
    m = report["metrics"]
    for k in ("teacher_f1", "student_int8_cv_f1", "student_int8_cv_far", "student_int8_cv_mar"):
        assert 0.0 <= m[k] <= (1.0 if k.endswith("f1") else 100.0)
    assert m["onnx_fp32_max_abs_diff"] < 1e-4

    bundle = load_bundle(report["bundle"])
    model = SensorModel(bundle, intra_op_num_threads=1).load()
    spec = model.spec
    assert spec.n_features == 48 and spec.scale_floor and model.threshold == 0.5

    # The feature path of the agent: WindowAggregator -> summaries -> features -> baseline -> model.
    d = _skab("valve1/0")
    assert d.anomaly is not None
    summaries = _summaries(d, len(d), spec.window_s)
    starts, ends, x = feature_matrix(summaries, DEVICE, spec)
    mu, sd = fit_baseline(x[: spec.baseline_windows], spec)
    z = model_input(x, mu, sd, spec)
    scores = model.score(z)
    assert scores.shape == (len(z),) and ((scores >= 0) & (scores <= 1)).all()
    frac = np.array(
        [
            d.anomaly[(d.timestamps >= s) & (d.timestamps < e)].mean()
            for s, e in zip(starts, ends, strict=True)
        ]
    )
    assert scores[frac > 0.5].mean() > scores[frac == 0].mean() + 0.2
    assert model.predict(z).dtype == bool

    # ONNX fp32 vs torch on real windows (the export itself, independent of training).
    fp32 = Path(report["bundle"]).parents[1] / "student.fp32.onnx"
    torch_model = st.SensorStudent(spec.n_features, cfg.hidden)
    torch_model.eval()
    st.export_student(torch_model, spec.n_features, tmp_path / "x.onnx", tmp_path / "x.int8.onnx")
    with torch.no_grad():
        ref = torch_model(torch.from_numpy(z)).squeeze(-1).numpy()
    np.testing.assert_allclose(st.onnx_scores(tmp_path / "x.onnx", z), ref, atol=1e-5)
    assert fp32.exists()

    # Scores land in the summaries the agent uploads.
    base = model.new_baseline()
    annotated, events, uncertain = model.annotate(summaries, DEVICE, base, (0.35, 0.65))
    scored = [w for w in annotated if w.anomaly_score is not None]
    assert len(scored) == 8 * (len(starts) - spec.baseline_windows + 1)
    assert events and all(s > model.threshold for _, s in events)
    # Uncertain windows: exactly the scored ones strictly inside the band, with the input that was scored.
    by_start = {w.start: w.anomaly_score for w in annotated if w.anomaly_score is not None}
    assert [u.start for u in uncertain] == [s for s, v in sorted(by_start.items()) if 0.35 < v < 0.65]
    for u in uncertain:
        assert u.x.dtype == np.float32 and u.x.shape == (spec.n_features,)
        assert 0.35 < u.score < 0.65 and u.end > u.start
        assert float(model.score(u.x)[0]) == u.score
