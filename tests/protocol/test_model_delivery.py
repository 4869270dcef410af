"""Signed model delivery end to end: real mosquitto, real ONNX bundles, real files.

The node side is :class:`edge_agent.updates.manager.ModelManager`; the cloud
side is the artifact store, the signer and the retained-message publisher. The
test loader is a minimal one (bundle verification + an onnxruntime session on a
1-layer MatMul+Softmax graph), because the chat and sensor runtimes expect
their own labels and vocabularies.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cloud_controller.releases.artifacts import ArtifactStore, Release
from cloud_controller.releases.publisher import ModelPublisher
from cloud_controller.releases.signing import generate_keys, load_private_key
from edge_agent.config import AgentConfig, MqttConfig
from edge_agent.models.bundle import write_bundle
from edge_agent.ops.metrics import AgentMetrics
from edge_agent.pipeline.core import Pipeline
from edge_agent.protocol.manifest import canonical_json, manifest_digest
from edge_agent.protocol.messages import DesiredState, ModelRef
from edge_agent.protocol.topics import chunk_topic, manifest_topic
from edge_agent.services.active_models import ActiveModels
from edge_agent.transport.mqtt import MqttClient
from edge_agent.updates.manager import ModelManager
from edgeloop_sim.broker import Broker
from tests.protocol.delivery_harness import (
    NODE,
    Cloud,
    TinyModel,
    desired,
    health,
    make_bundle,
    tiny_onnx,
)


async def _sensor_release(cloud: Cloud, tmp_path: Path) -> Release:
    """A signed, published release in the sensor slot (the tiny graph; the test loaders do not care)."""
    bundle = write_bundle(
        tmp_path / "bundles" / "sensor-1",
        {
            "model.onnx": tiny_onnx(7),
            "labels.json": json.dumps({"intents": ["a", "b", "c"], "tags": ["O"]}).encode(),
            "vocab.json": b"{}",
        },
        {"name": "tiny-sensor", "task": "sensor", "version": "1", "metrics": {}},
    )
    rel = cloud.store.put_bundle(bundle, cloud.key, task="sensor")
    await cloud.publisher.publish(rel)
    return rel


@pytest.fixture
def make_node(tmp_path: Path, mqtt_cfg: MqttConfig, cloud: Cloud) -> Callable[..., ModelManager]:
    def make(node: str = NODE, **kw: Any) -> ModelManager:
        # The agent's own client is never started here: the manager only borrows its identity and config.
        agent_client = MqttClient(mqtt_cfg, f"edge-agent-{node}")
        kw.setdefault("stall_timeout_s", 2.0)
        return ModelManager(tmp_path / node, agent_client, cloud.pinned, {"chat": TinyModel}, health, **kw)

    return make


async def test_publish_fetch_verify_activate_and_restart(
    cloud: Cloud, make_node: Callable[..., ModelManager], tmp_path: Path
) -> None:
    r1 = await cloud.release("1", pad=20_000)
    node = make_node()
    st = await asyncio.wait_for(node.apply(desired(r1.model_ref())), 20)
    assert st["chat"].state == "active" and st["chat"].version == "1"
    assert node.stats.chunks_received == r1.chunks and r1.chunks > 1
    cur = node.current("chat")
    assert cur is not None and cur[:2] == ("tiny", "1")
    assert (tmp_path / NODE / "models" / "tiny" / "1" / "model.onnx").is_file()

    r2 = await cloud.release("2")
    st = await asyncio.wait_for(node.apply(desired(r2.model_ref(), generation=2)), 20)
    assert (st["chat"].state, st["chat"].version, st["chat"].previous) == ("active", "2", "1")
    # Applying the same desired state again is a no-op (level-triggered).
    before = node.stats.chunks_received
    await node.apply(desired(r2.model_ref(), generation=2))
    assert node.stats.chunks_received == before

    again = make_node()
    await again.load_active()
    cur = again.current("chat")
    assert cur is not None and cur[:2] == ("tiny", "2")
    assert again.status()["chat"].state == "active"


async def test_resume_after_broker_restart_fetches_only_missing_chunks(
    cloud: Cloud, make_node: Callable[..., ModelManager], broker: Broker
) -> None:
    rel = await cloud.release("1", pad=150_000, chunk_size=2048)
    restarted = asyncio.Event()

    def progress(task: str, have: int, total: int) -> None:
        if have == 8 and not restarted.is_set():
            broker.restart()  # blocking on purpose: the connection dies right here, mid-transfer
            restarted.set()

    node = make_node(max_incoming=2, progress=progress)
    st = await asyncio.wait_for(node.apply(desired(rel.model_ref())), 30)
    assert restarted.is_set()
    assert st["chat"].state == "active", st
    assert rel.chunks > 50
    # Every chunk arrived exactly once although the connection was cut and re-established.
    assert node.stats.chunks_received == rel.chunks
    assert node.stats.chunks_duplicate == 0
    assert node.stats.transfer_connects >= 3  # manifest, chunks before the cut, chunks after


async def test_resume_after_node_restart_uses_partial_download(
    cloud: Cloud, make_node: Callable[..., ModelManager]
) -> None:
    rel = await cloud.release("1", pad=100_000, chunk_size=2048)
    halfway = asyncio.Event()

    def progress(task: str, have: int, total: int) -> None:
        if have >= 10:
            halfway.set()

    first = make_node(max_incoming=2, progress=progress)
    apply_task = asyncio.create_task(first.apply(desired(rel.model_ref())), name="apply-first")
    await asyncio.wait_for(halfway.wait(), 20)
    await first.stop()  # the "power cut": transfer cancelled mid-way
    await apply_task
    assert first.current("chat") is None
    got_first = first.stats.chunks_received
    assert 10 <= got_first < rel.chunks

    second = make_node()
    st = await asyncio.wait_for(second.apply(desired(rel.model_ref())), 20)
    assert st["chat"].state == "active"
    assert second.stats.chunks_from_disk == got_first
    assert second.stats.chunks_received == rel.chunks - got_first
    assert second.stats.manifests_fetched == 0  # the verified manifest was kept too


async def test_flipped_byte_in_chunk_is_refetched_until_a_corrected_republish(
    cloud: Cloud, make_node: Callable[..., ModelManager]
) -> None:
    """A damaged retained chunk is never stored and never refuses the release for good (issue 15, 9c)."""
    r1 = await cloud.release("1")
    node = make_node()
    await node.apply(desired(r1.model_ref()))
    r2 = await cloud.release("2", pad=10_000)
    good = next(iter(cloud.store.iter_chunks(r2)))
    chunk = bytearray(good)
    chunk[100] ^= 0x01
    await cloud.client.publish(chunk_topic("tiny", "2", 0), bytes(chunk), qos=1, retain=True)

    applying = asyncio.create_task(node.apply(desired(r2.model_ref(), generation=2)))
    deadline = time.monotonic() + 20
    while getattr(node.stats, "chunks_bad", 0) < 2:  # seen, dropped, and asked for again after a back-off
        assert not applying.done(), applying.result()
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    cur = node.current("chat")
    assert cur is not None and cur[1] == "1"  # the previous version keeps serving meanwhile
    st = node.status()["chat"]
    assert st.state == "downloading" and "do not match their signed sha256" in (st.error or ""), st
    assert node.stats.chunks_received == r1.chunks + r2.chunks - 1
    assert not any(p.name == "chunk-000000" for p in (node.root / ".partial").rglob("chunk-*"))

    await cloud.client.publish(chunk_topic("tiny", "2", 0), good, qos=1, retain=True)
    st = await asyncio.wait_for(applying, 20)
    assert (st["chat"].state, st["chat"].version, st["chat"].previous) == ("active", "2", "1"), st
    assert node.stats.rejected == {}
    assert node.stats.chunks_received == r1.chunks + r2.chunks


async def test_wrong_key_and_bad_signature_are_refused_before_any_chunk(
    cloud: Cloud, make_node: Callable[..., ModelManager], tmp_path: Path
) -> None:
    r1 = await cloud.release("1")
    node = make_node()
    await node.apply(desired(r1.model_ref()))
    received = node.stats.chunks_received

    # 1) A release signed by a key the node does not pin.
    mallory_keys = generate_keys(tmp_path / "mallory")
    mallory = ArtifactStore(tmp_path / "mallory-store", chunk_size=4096)
    evil = mallory.put_bundle(make_bundle(tmp_path / "m", "2"), load_private_key(mallory_keys.private_path))
    await ModelPublisher(cloud.client, mallory).publish(evil)
    st = await asyncio.wait_for(node.apply(desired(evil.model_ref(), generation=2)), 20)
    assert st["chat"].state == "failed" and "unknown_key" in (st["chat"].error or "")

    # 2) A legitimately signed manifest edited afterwards (claims the pinned key id).
    raw = json.loads(r1.manifest)
    raw.update(version="3", metrics={"acc": 0.99})
    forged = canonical_json(raw)
    await cloud.client.publish(manifest_topic("tiny", "3"), forged, qos=1, retain=True)
    ref = r1.model_ref().model_copy(update={"version": "3", "digest": manifest_digest(forged)})
    st = await asyncio.wait_for(node.apply(desired(ref, generation=3)), 20)
    assert st["chat"].state == "failed" and "bad_signature" in (st["chat"].error or "")

    assert node.stats.chunks_received == received  # nothing big was downloaded for either
    cur = node.current("chat")
    assert cur is not None and cur[1] == "1"


async def test_older_version_replay_refused_but_pinned_rollback_allowed(
    cloud: Cloud, make_node: Callable[..., ModelManager]
) -> None:
    r1, r2, r3 = [await cloud.release(v) for v in ("1", "2", "3")]
    fresh = make_node("node-2")
    await fresh.apply(desired(r2.model_ref()))
    st = await fresh.apply(desired(r1.model_ref(), generation=2))
    assert st["chat"].state == "failed" and "not_newer" in (st["chat"].error or "")
    assert st["chat"].version == "2"

    # A node that ran 1 before 3 may be sent back to 1 by digest (the rollout's rollback).
    node = make_node()
    await node.apply(desired(r1.model_ref()))
    await node.apply(desired(r3.model_ref(), generation=2))
    received = node.stats.chunks_received
    st = await node.apply(desired(r1.model_ref(), generation=3))
    assert (st["chat"].state, st["chat"].version, st["chat"].previous) == ("active", "1", "3")
    assert node.stats.chunks_received == received  # the previous version was still on disk


async def test_replay_under_another_name_in_the_same_slot_is_refused(
    cloud: Cloud, make_node: Callable[..., ModelManager]
) -> None:
    """Replay protection holds per slot: renaming an old build does not get it past the floor."""
    t1, t3 = await cloud.release("1"), await cloud.release("3")
    o2, o4 = await cloud.release("2", name="other"), await cloud.release("4", name="other")
    node = make_node()
    await node.apply(desired(t1.model_ref()))
    await node.apply(desired(t3.model_ref(), generation=2))
    st = await asyncio.wait_for(node.apply(desired(o2.model_ref(), generation=3)), 20)
    assert st["chat"].state == "failed" and "not_newer" in (st["chat"].error or ""), st
    assert "chat slot" in (st["chat"].error or "")
    cur = node.current("chat")
    assert cur is not None and cur[:2] == ("tiny", "3")

    # A newer version under another name takes the slot ...
    st = await asyncio.wait_for(node.apply(desired(o4.model_ref(), generation=4)), 20)
    assert (st["chat"].state, st["chat"].name, st["chat"].version) == ("active", "other", "4")
    # ... and explicit rollbacks to releases the slot ran still work, across names.
    st = await node.apply(desired(t3.model_ref(), generation=5))
    assert (st["chat"].state, st["chat"].name, st["chat"].version) == ("active", "tiny", "3")
    st = await asyncio.wait_for(node.apply(desired(t1.model_ref(), generation=6)), 20)
    assert (st["chat"].state, st["chat"].version) == ("active", "1"), st

    # A node upgraded from per-name history (no slot record yet) seeds the slot floor from its pointer.
    upgraded = make_node("node-2")
    await upgraded.apply(desired(t3.model_ref()))
    (upgraded.root / ".slots" / "chat.json").unlink()
    rebooted = make_node("node-2")
    await rebooted.load_active()
    st = await asyncio.wait_for(rebooted.apply(desired(o2.model_ref(), generation=2)), 20)
    assert st["chat"].state == "failed" and "chat slot" in (st["chat"].error or ""), st


async def test_digest_in_desired_state_must_match_manifest(
    cloud: Cloud, make_node: Callable[..., ModelManager]
) -> None:
    r1 = await cloud.release("1")
    node = make_node()
    ref = r1.model_ref().model_copy(update={"digest": "sha256:" + "0" * 64})
    st = await asyncio.wait_for(node.apply(desired(ref)), 20)
    assert st["chat"].state == "failed" and "digest_mismatch" in (st["chat"].error or "")
    assert node.current("chat") is None and node.stats.chunks_received == 0


async def test_signed_bundle_that_fails_to_load_is_rolled_back(
    cloud: Cloud, make_node: Callable[..., ModelManager], tmp_path: Path
) -> None:
    r1 = await cloud.release("1")
    node = make_node()
    await node.apply(desired(r1.model_ref()))
    bad = await cloud.release("2", model=b"\x08\x07 this is not an onnx graph")
    st = await asyncio.wait_for(node.apply(desired(bad.model_ref(), generation=2)), 20)
    assert (st["chat"].state, st["chat"].version) == ("rolled_back", "1")
    assert "tiny@2" in (st["chat"].error or "")
    cur = node.current("chat")
    assert cur is not None and cur[1] == "1" and np.all(np.isfinite(cur[2].run()))
    assert not (tmp_path / NODE / "models" / "tiny" / "2").exists()

    # A later good version still goes through: a failed version does not raise the replay floor.
    r3 = await cloud.release("3")
    st = await node.apply(desired(r3.model_ref(), generation=3))
    assert (st["chat"].state, st["chat"].version, st["chat"].previous) == ("active", "3", "1")


async def test_boot_falls_back_to_previous_when_active_is_damaged(
    cloud: Cloud, make_node: Callable[..., ModelManager], tmp_path: Path
) -> None:
    r1, r2 = await cloud.release("1"), await cloud.release("2")
    node = make_node()
    await node.apply(desired(r1.model_ref()))
    await node.apply(desired(r2.model_ref(), generation=2))
    model = tmp_path / NODE / "models" / "tiny" / "2" / "model.onnx"
    data = bytearray(model.read_bytes())
    data[-1] ^= 0xFF
    model.write_bytes(bytes(data))

    rebooted = make_node()
    await rebooted.load_active()
    cur = rebooted.current("chat")
    assert cur is not None and cur[1] == "1"
    st = rebooted.status()["chat"]
    assert st.state == "rolled_back" and "file_hash_mismatch" in (st.error or "")


@pytest.mark.slow
async def test_fan_out_1mb_to_50_nodes(cloud: Cloud, make_node: Callable[..., ModelManager]) -> None:
    rel = await cloud.release("1", pad=750_000, chunk_size=64 * 1024)
    assert rel.size > 1_000_000
    nodes = [make_node(f"bench-{i:03d}") for i in range(50)]
    t0 = time.perf_counter()
    results = await asyncio.wait_for(asyncio.gather(*(n.apply(desired(rel.model_ref())) for n in nodes)), 60)
    elapsed = time.perf_counter() - t0
    assert all(r["chat"].state == "active" for r in results)
    mb = rel.size * len(nodes) / 1e6
    print(f"\nfan-out: {rel.size} B x {len(nodes)} nodes in {elapsed:.2f}s ({mb / elapsed:.1f} MB/s)")


async def test_two_tasks_installing_at_once_do_not_prune_each_other(
    tmp_path: Path, mqtt_cfg: MqttConfig, cloud: Cloud
) -> None:
    """Chat activates (and prunes unreferenced versions) while the sensor model is still loading:
    the sensor's freshly unpacked version must survive. (Seen in CI: "has no release.json".)"""
    chat_pruned = threading.Event()

    class SlowSensor(TinyModel):
        def __init__(self, path: Path) -> None:
            assert chat_pruned.wait(10), "chat never activated"
            super().__init__(path)  # reads the bundle files after chat's prune

    class Node(ModelManager):
        async def _activate(self, task: str, ref: ModelRef, path: Path) -> None:
            await super()._activate(task, ref, path)
            if task == "chat":
                chat_pruned.set()  # _activate ends with the prune

    chat_rel = await cloud.release("1")
    sensor_rel = await _sensor_release(cloud, tmp_path)
    agent_client = MqttClient(mqtt_cfg, f"edge-agent-{NODE}")
    node = Node(
        tmp_path / NODE, agent_client, cloud.pinned, {"chat": TinyModel, "sensor": SlowSensor}, health
    )
    status = await asyncio.wait_for(node.apply(desired(chat_rel.model_ref(), sensor_rel.model_ref())), 30)
    assert status["chat"].state == "active" and status["sensor"].state == "active", status
    assert (tmp_path / NODE / "models" / "tiny-sensor" / "1" / "release.json").is_file()
    await node.stop()


async def test_overlapping_applies_swap_in_the_sensor_model_that_loaded_last(
    tmp_path: Path, mqtt_cfg: MqttConfig, cloud: Cloud
) -> None:
    """Generations 2 (chat) and 3 (chat + sensor) apply at once, as the agent runs each in its own
    task. Generation 2's sync finds the sensor still downloading; generation 3's must swap the loaded
    sensor model into the pipeline. (Seen in CI: the node said sensor v1 active and scored nothing.)"""
    gen2_synced = threading.Event()

    class SlowSensor(TinyModel):
        def __init__(self, path: Path) -> None:
            assert gen2_synced.wait(10), "generation 2 never synced"
            super().__init__(path)

    chat_rel = await cloud.release("1")
    sensor_rel = await _sensor_release(cloud, tmp_path)
    agent_client = MqttClient(mqtt_cfg, f"edge-agent-{NODE}")
    node = ModelManager(
        tmp_path / NODE, agent_client, cloud.pinned, {"chat": TinyModel, "sensor": SlowSensor}, health
    )
    cfg = AgentConfig(node_id=NODE)
    pipeline = Pipeline(cfg)
    models = ActiveModels(pipeline, node, AgentMetrics(), config=lambda: cfg)
    seen_by_gen2: dict[str, str] = {}

    async def apply(d: DesiredState) -> None:
        await node.apply(d)
        models.sync_from_manager()
        if d.generation == 2:
            seen_by_gen2.update({t: s.state for t, s in models.status.items()})
            gen2_synced.set()

    chat_ref, sensor_ref = chat_rel.model_ref(), sensor_rel.model_ref()
    await asyncio.wait_for(
        asyncio.gather(
            apply(desired(chat_ref, generation=2)), apply(desired(chat_ref, sensor_ref, generation=3))
        ),
        30,
    )
    assert seen_by_gen2 == {"chat": "active", "sensor": "downloading"}  # the overlap really happened
    loaded = node.current("sensor")
    assert loaded is not None
    assert pipeline.sensor_model is loaded[2]
    assert models.running("sensor") == loaded
    assert models.status["sensor"].state == "active"
    await node.stop()
