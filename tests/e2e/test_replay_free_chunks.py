"""The demo replays SKAB's anomaly-free recording as the pseudo-devices sensor training cuts it into.

Why: as one device the 2.6 h recording drifts away from its first 400 s (its baseline); the first
sensor student then flags most of its windows, the teacher calls the unsure ones faults, and the
sensor DistillationJob learnt drift as a fault (held-back F1 70.55 -> 69.03 in a live demo). Cut as
training cuts it, each piece is a device with its own baseline, and the demo's traffic is the
bench's (``bench/bench_sensor_loop.py``).
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from edge_agent.protocol.messages import parse_telemetry
from edge_agent.protocol.topics import parse_device_topic
from edgeloop_sim.demo_models import SENSOR_FREE_CHUNK_ROWS
from edgeloop_sim.replay_config import ReplayConfig
from edgeloop_sim.replay_streams import iter_messages, select_devices


def test_anomaly_free_pieces_are_devices_with_the_training_rows() -> None:
    from cloud_controller.training.sensor_train import SensorTrainConfig, build_files

    cfg = ReplayConfig(skab_free_chunk_rows=SENSOR_FREE_CHUNK_ROWS, start_time=0.0, rebase_time=False)
    devices = select_devices("skab", cfg)
    free = [d for d in devices if d.startswith("skab-anomaly-free")]
    train = SensorTrainConfig(max_files=1)
    assert SENSOR_FREE_CHUNK_ROWS == train.free_chunk_rows
    _, pieces, _ = build_files(train, None, lambda *_: None)
    assert free == [f"skab-anomaly-free-{k}" for k in range(len(pieces))]
    assert "skab-anomaly-free" not in devices and len(devices) == 34 + len(pieces)
    # Each piece replays exactly the rows training windows as that pseudo-experiment.
    rows: dict[str, set[float]] = defaultdict(set)
    for topic, payload, _count in iter_messages("skab", cfg):
        dev = parse_device_topic(topic).device
        if not dev.startswith("skab-anomaly-free"):
            continue
        rows[dev] |= {r.ts for r in parse_telemetry(payload)}
    for k, piece in enumerate(pieces):
        dev = f"skab-anomaly-free-{k}"
        assert np.allclose(sorted(rows[dev]), piece.timestamps)
    # Without the option the recording stays one device (the fleet simulator, the replay CLI).
    assert "skab-anomaly-free" in select_devices("skab", ReplayConfig())
