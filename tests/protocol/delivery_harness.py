"""The signed-delivery rig both delivery tests drive: a tiny real ONNX model, bundles, the cloud side.

``test_model_delivery`` (the protocol) and ``test_security`` (the refusals)
exercise the same cloud (keys, artifact store, retained publisher) against a
:class:`~edge_agent.updates.manager.ModelManager`; one rig keeps them testing
the same thing. ``cloud`` is a fixture: the conftest.py of each folder that uses it imports it.
"""

from __future__ import annotations

import base64
import json
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from cloud_controller.releases.artifacts import ArtifactStore, Release
from cloud_controller.releases.publisher import ModelPublisher
from cloud_controller.releases.signing import generate_keys, load_private_key, load_public_key_file
from edge_agent.config import MqttConfig
from edge_agent.models.bundle import load_bundle, write_bundle
from edge_agent.protocol.messages import DesiredState, ModelRef
from edge_agent.transport.mqtt import MqttClient

NODE = "node-1"


def tiny_onnx(seed: int) -> bytes:
    """x[1,4] @ W[4,3] -> softmax: a real graph onnxruntime loads and runs."""
    w = np.random.default_rng(seed).standard_normal((4, 3)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["z"]), helper.make_node("Softmax", ["z"], ["y"], axis=-1)],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
        [helper.make_tensor("W", TensorProto.FLOAT, [4, 3], w.flatten().tolist())],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


class TinyModel:
    def __init__(self, path: Path) -> None:
        self.bundle = load_bundle(path)
        self.session = ort.InferenceSession(self.bundle.model_bytes, providers=["CPUExecutionProvider"])

    def run(self) -> np.ndarray:
        return np.asarray(self.session.run(None, {"x": np.ones((1, 4), np.float32)})[0])


def health(task: str, model: Any) -> None:
    if not np.all(np.isfinite(model.run())):
        raise ValueError("non-finite output")


def make_bundle(root: Path, version: str, *, model: bytes | None = None, pad: int = 0,
                name: str = "tiny") -> Path:
    return write_bundle(
        root / "bundles" / name / version,
        {
            "model.onnx": model if model is not None else tiny_onnx(int(version)),
            "labels.json": json.dumps({"intents": ["a", "b", "c"], "tags": ["O"]}).encode(),
            "vocab.json": json.dumps({"pad": base64.b64encode(os.urandom(pad)).decode()}).encode(),
        },
        {"name": name, "task": "chat", "version": version, "metrics": {"acc": 0.9}},
    )


class Cloud:
    def __init__(self, root: Path, client: MqttClient) -> None:
        self.keys = generate_keys(root / "keys")
        self.key = load_private_key(self.keys.private_path)
        kid, raw = load_public_key_file(self.keys.public_path)
        self.pinned = {kid: raw}
        self.store = ArtifactStore(root / "store", chunk_size=4096)
        self.client = client
        self.publisher = ModelPublisher(client, self.store)
        self.root = root

    async def release(self, version: str, **kw: Any) -> Release:
        chunk_size = kw.pop("chunk_size", None)
        rel = self.store.put_bundle(make_bundle(self.root, version, **kw), self.key, chunk_size=chunk_size)
        await self.publisher.publish(rel)
        return rel


def desired(*refs: ModelRef, generation: int = 1) -> DesiredState:
    return DesiredState(node=NODE, generation=generation, ts=time.time(), models={r.task: r for r in refs})


@pytest.fixture
async def cloud(tmp_path: Path, mqtt_cfg: MqttConfig) -> AsyncIterator[Cloud]:
    client = MqttClient(mqtt_cfg, "edgeloop-controller", clean_start=True)
    await client.start()
    await client.wait_connected(5)
    try:
        yield Cloud(tmp_path / "cloud", client)
    finally:
        await client.stop()


