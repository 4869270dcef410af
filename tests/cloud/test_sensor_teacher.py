"""The cloud sensor teacher: sensor hard examples labelled on ingest, stored in real SQLite.

Student and teacher are real bundles run by onnxruntime (the hand-written
graphs of tests/edge/test_sensor_hard_examples.py): the student is
``sigmoid(x0)``, the teacher the sharper ``sigmoid(4 * x0)``, so each
teacher label and confidence is known from the feature vector alone. The
hard examples are the ones a real :class:`Pipeline` emits for uncertain windows.
"""

from __future__ import annotations

import argparse
import asyncio
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from cloud_controller.app import ControllerApp
from cloud_controller.cli.run import configure_run_args, settings_from_args
from cloud_controller.ingest.hard_examples import HardExampleStore, handle_hard_examples
from cloud_controller.settings import ControllerSettings
from cloud_controller.teachers.sensor_labeller import SensorTeacher, load_sensor_teacher
from edge_agent.config import MqttConfig
from edge_agent.outbox.records import OutboxRecord
from edge_agent.protocol import messages as wire
from edge_agent.protocol import topics
from edge_agent.transport.mqtt import MqttClient
from tests.edge.test_sensor_hard_examples import pipeline, telemetry, tiny_sensor_bundle

NODE = "n1"
DEVICE = "pump-1"
TEACHER = "tiny-sensor-teacher@7"
# Student scores: 0.5, 0.545, 0.917 (event), 0.4545, 0.5 -> uncertain windows 1, 2, 4, 5.
VALUES = [0.0, 0.0, 0.2, 10.0, -0.2, 0.0]


def approx(x: float) -> Any:
    """Scores come out of a float32 graph."""
    return pytest.approx(x, abs=1e-6)


def sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z))


@dataclass(frozen=True)
class Msg:
    topic: str
    payload: bytes


@pytest.fixture(scope="module")
def student(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_sensor_bundle(tmp_path_factory.mktemp("student") / "bundle")


@pytest.fixture(scope="module")
def teacher_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_sensor_bundle(
        tmp_path_factory.mktemp("teacher") / "bundle", name="tiny-sensor-teacher", version="7", gain=4.0
    )


def edge_records(student: Path, values: Sequence[float] = VALUES) -> list[OutboxRecord]:
    """What a real pipeline with the student puts in its outbox for these windows: the hard examples."""
    p = pipeline(student)
    assert p.handle(topics.device_telemetry(DEVICE), telemetry(list(values)), 1000.0) is None
    p.poll_windows(1000.0, flush=True)
    seq = iter(range(1, 1000))
    return [r for _, r in p.take_records(1000.0, lambda: next(seq), force=True) if r.kind == "hard_example"]


def sensor_example(ex_id: str, features: list[float], teacher: dict[str, Any] | None = None) -> Msg:
    ex = wire.HardExample(
        id=ex_id,
        node=NODE,
        created=1000.0,
        task="sensor",
        features=features,
        student={"score": 0.5},
        teacher=teacher,
    )
    return Msg(topics.hard_examples(NODE), wire.dumps(ex))


# --------------------------------------------------------------------------- the teacher alone


def test_teacher_labels_a_batch_and_skips_vectors_that_do_not_fit(teacher_bundle: Path) -> None:
    t = load_sensor_teacher(teacher_bundle)
    assert (t.version, t.n_features, t.threshold) == (TEACHER, 2, 0.5)
    got = t.label([[1.0, 0.0], [-1.0, 3.0], [0.0, 0.0], [1.0], [1.0, 0.0, 0.0], [math.nan, 0.0]])
    p = sigmoid(4.0)
    assert got[0] == {
        "label": "anomaly",
        "score": approx(p),
        "confidence": approx(p),
        "model": TEACHER,
    }
    assert got[1] is not None and got[1]["label"] == "normal"
    assert got[1]["score"] == approx(1 - p) and got[1]["confidence"] == approx(p)
    # Exactly the threshold is not over it: normal, with the least possible confidence.
    assert got[2] == {"label": "normal", "score": 0.5, "confidence": 0.5, "model": TEACHER}
    assert got[3:] == [None, None, None]
    assert (t.stats.batches, t.stats.labelled, t.stats.feature_mismatch, t.stats.non_finite) == (1, 3, 2, 1)
    assert t([]) == [] and t.stats.batches == 1  # nothing to score: no call


# --------------------------------------------------------------------------- handle_hard_examples


def test_ingest_labels_sensor_examples_before_storing_them(
    tmp_path: Path, student: Path, teacher_bundle: Path
) -> None:
    teacher = SensorTeacher(teacher_bundle).load()
    recs = edge_records(student)
    assert len(recs) == 4
    already = {"label": "anomaly", "confidence": 0.99, "model": "human"}
    chat = wire.HardExample(
        id="chat-1",
        node=NODE,
        created=1000.0,
        task="chat",
        text="turn on the lights",
        teacher={"intent": "lights_on", "confidence": 0.97},
    )
    burst = [
        *(Msg(r.topic, r.payload) for r in recs),
        sensor_example("wrong-length", [0.1, 0.2, 0.3]),
        sensor_example("pre-labelled", [0.0, 0.0], teacher=already),
        Msg(topics.hard_examples(NODE), wire.dumps(chat)),
    ]
    with HardExampleStore(tmp_path / "hard.db") as store:
        res = handle_hard_examples(store, burst, received=5000.0, label_sensor=teacher.label)
        assert (res.accepted, res.duplicates, res.rejected) == (7, 0, {})
        assert res.labelled == 5 and res.unlabelled == {"feature_mismatch": 1}
        assert teacher.stats.batches == 1  # the burst's vectors in one call

        rows = {r.id: r for r in store.since(None, "sensor")}
        assert set(rows) == {r.id for r in recs} | {"pre-labelled"}  # unlabelled rows are not served
        assert store.count("sensor") == 6 and store.count("chat") == 1
        for rec in recs:
            ex = wire.parse_json(wire.HardExample, rec.payload)
            row = rows[ex.id]
            assert ex.features is not None
            p = sigmoid(4.0 * ex.features[0])
            assert row.label == ("anomaly" if p > 0.5 else "normal")
            assert row.confidence == approx(max(p, 1 - p))
            assert row.teacher is not None and row.teacher["model"] == TEACHER
            assert row.features == ex.features and row.student == ex.student
        # A label the node sent is replaced by the cloud teacher's: nodes cannot steer training.
        pre = rows["pre-labelled"]
        assert pre.teacher is not None and pre.teacher["model"] == TEACHER and pre.teacher != already
        # Windows 2 and 4 (x0 = +-log1p(0.2)) get confidence 0.675; windows 1 and 5 (x0 = 0) and the
        # pre-labelled vector (x0 = 0) 0.5.
        confident = store.since(None, "sensor", min_confidence=0.6)
        assert len(confident) == 2 and all(
            r.confidence is not None and r.confidence >= 0.6 for r in confident
        )
        assert sorted(str(r.label) for r in confident) == ["anomaly", "normal"]

        # A redelivered burst: nothing new, the labels stay as first stored.
        again = handle_hard_examples(store, burst, received=6000.0, label_sensor=teacher.label)
        assert (again.accepted, again.duplicates) == (0, 7)
        assert store.count("sensor") == 6


def test_without_a_teacher_sensor_examples_are_stored_unlabelled(tmp_path: Path, student: Path) -> None:
    recs = edge_records(student)
    with HardExampleStore(tmp_path / "hard.db") as store:
        res = handle_hard_examples(store, [Msg(r.topic, r.payload) for r in recs], received=5000.0)
        assert res.accepted == 4 and res.labelled == 0 and res.unlabelled == {"no_teacher": 4}
        assert store.count("sensor") == 4 and store.since(None, "sensor") == []


def test_a_failing_teacher_never_fails_ingest(tmp_path: Path, student: Path) -> None:
    recs = edge_records(student)

    def broken(features: Sequence[Sequence[float] | None]) -> list[dict[str, Any] | None]:
        raise RuntimeError("teacher session crashed")

    def short(features: Sequence[Sequence[float] | None]) -> list[dict[str, Any] | None]:
        return []

    with HardExampleStore(tmp_path / "hard.db") as store:
        for i, label in enumerate((broken, short)):
            res = handle_hard_examples(
                store, [Msg(r.topic, r.payload) for r in recs[i * 2 : i * 2 + 2]], 5000.0, label_sensor=label
            )
            assert res.accepted == 2 and res.unlabelled == {"teacher_error": 2}
        assert store.count("sensor") == 4 and store.since(None, "sensor") == []


# --------------------------------------------------------------------------- through mosquitto


async def test_uplink_to_labelled_row_through_mosquitto(
    tmp_path: Path, mqtt_cfg: MqttConfig, student: Path, teacher_bundle: Path
) -> None:
    """``cloud-controller run --sensor-teacher BUNDLE`` as parsed from the command line, wired into ingest."""
    parser = argparse.ArgumentParser()
    configure_run_args(parser)
    args = parser.parse_args(
        [
            "--broker",
            f"{mqtt_cfg.host}:{mqtt_cfg.port}",
            "--store",
            str(tmp_path / "resources.db"),
            "--data-dir",
            str(tmp_path / "controller"),
            "--http-port",
            "0",
            "--client-id",
            "controller-test",
            "--sensor-teacher",
            str(teacher_bundle),
        ]
    )
    settings = settings_from_args(args, environ={})
    assert settings.sensor_teacher == teacher_bundle
    assert ControllerSettings.load(environ={"EDGELOOP_SENSOR_TEACHER": "/b"}).sensor_teacher == Path("/b")
    app = ControllerApp(settings.model_copy(update={"http_host": "127.0.0.1", "shutdown_timeout_s": 2.0}))
    recs = edge_records(student)
    node = MqttClient(mqtt_cfg, f"edge-agent-{NODE}", clean_start=True, name="node")
    task = asyncio.create_task(app.run(), name="controller-app")
    try:
        async with asyncio.timeout(10):
            await app.ready.wait()
        assert app.ingest is not None and app.sensor_teacher is not None
        assert app.sensor_teacher.version == TEACHER
        await app.ingest.client.wait_connected(5)  # connected = subscribed
        await node.start()
        await node.wait_connected(5)
        # What the uplink does with each outbox row (QoS 1), plus one QoS 1 redelivery.
        for rec in [*recs, recs[0]]:
            await node.publish(rec.topic, rec.payload, qos=1, timeout=5)
        await app.ingest.wait_processed(len(recs) + 1, timeout=10)
        st = app.ingest.stats
        assert (st.hard_examples, st.hard_example_duplicates, st.rejected) == (4, 1, 0)
        assert (st.hard_examples_labelled, st.hard_examples_unlabelled) == (5, 0)
    finally:
        await node.stop()
        app.stop()
        await asyncio.wait_for(task, 15)
    with HardExampleStore(tmp_path / "controller" / "hard_examples.db") as store:
        rows = store.since(None, "sensor")
    assert sorted(r.id for r in rows) == sorted(r.id for r in recs)
    for r in rows:
        assert r.teacher is not None and r.teacher["model"] == TEACHER
        assert r.features is not None
        p = sigmoid(4 * r.features[0])
        assert r.confidence == approx(max(p, 1 - p)) and r.label == ("anomaly" if p > 0.5 else "normal")
