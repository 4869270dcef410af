"""A signed release published to the fleet and a Rollout that takes every simulated node to it."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from edgeloop_sim.broker import Broker

# --------------------------------------------------------------------------- release + rollout


def make_release(root: Path, model_bytes: int) -> tuple[Any, Path, float]:
    from cloud_controller.releases.artifacts import ArtifactStore
    from cloud_controller.releases.signing import generate_keys, load_private_key
    from edge_agent.models.bundle import write_bundle

    keys = generate_keys(root / "keys")
    # Random-ish bytes (incompressible): the simulated nodes verify but do not load ONNX.
    model = os.urandom(model_bytes)
    bundle = write_bundle(
        root / "bundles" / "2",
        {"model.onnx": model, "labels.json": b"{}", "vocab.json": b"{}"},
        {"name": "sim-model", "task": "sensor-anomaly", "version": "2", "metrics": {"f1": 0.8}},
    )
    t = time.perf_counter()
    rel = ArtifactStore(root / "artifacts").put_bundle(
        bundle, load_private_key(keys.private_path), task="sensor"
    )
    return rel, keys.public_path, time.perf_counter() - t


async def publish_release(broker: Broker, root: Path, rel: Any) -> float:
    from cloud_controller.releases.artifacts import ArtifactStore
    from cloud_controller.releases.publisher import ModelPublisher
    from edge_agent.config import MqttConfig
    from edge_agent.transport.mqtt import MqttClient

    client = MqttClient(
        MqttConfig(host="127.0.0.1", port=broker.port), "edgeloop-controller-release", clean_start=True
    )
    await client.start()
    try:
        await client.wait_connected(10)
        t = time.perf_counter()
        await ModelPublisher(client, ArtifactStore(root / "artifacts")).publish(rel)
        return time.perf_counter() - t
    finally:
        await client.stop()


async def create_rollout(store_path: Path, root: Path, rel: Any) -> None:
    from cloud_controller.releases.artifacts import ArtifactStore
    from cloud_controller.resources.sqlite_store import SqliteResourceStore
    from cloud_controller.resources.store_protocol import API_VERSION

    store = SqliteResourceStore(store_path)
    try:
        await store.create(ArtifactStore(root / "artifacts").edge_model(rel, name="sim-model-2"))
        await store.create(
            {
                "apiVersion": API_VERSION,
                "kind": "ModelRollout",
                "metadata": {"name": "sim-model-2-rollout", "namespace": "default"},
                "spec": {
                    "model": rel.name,
                    "version": rel.version,
                    "steps": [
                        {"setWeight": 10, "pauseSeconds": 0},
                        {"setWeight": 50, "pauseSeconds": 0},
                        {"setWeight": 100, "pauseSeconds": 0},
                    ],
                    "analysis": {"maxErrorRate": 0.05, "maxEscalationRate": 0.5, "minSamples": 10},
                },
            }
        )
    finally:
        await store.close()


async def rollout_status(store_path: Path) -> dict[str, Any]:
    from cloud_controller.resources.sqlite_store import SqliteResourceStore

    store = SqliteResourceStore(store_path)
    try:
        obj = await store.get("ModelRollout", "default", "sim-model-2-rollout")
        return dict(obj.get("status") or {})
    finally:
        await store.close()
