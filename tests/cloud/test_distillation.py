"""The DistillationJob loop on a local launcher: hard examples over a real broker, the runner as a real
process, signing into a real artifact store, restart re-attachment. The gate is in test_distill_gate.py,
launchers and the cluster path in test_distill_launchers.py.

The parent student (version 1) is trained once (``parent_bundle`` in tests/cloud/conftest.py) by the
runner itself on SNIPS without the AddToPlaylist intent (the "held-back part"); hard examples are
AddToPlaylist utterances labelled by a confident teacher (their gold labels), plus low-confidence ones
with wrong labels that the job's threshold must drop. One turn of the loop must then raise accuracy on
the new traffic.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from cloud_controller.ingest.hard_examples import HardExampleStore, handle_hard_examples
from cloud_controller.resources.store_protocol import NotFound
from edge_agent.config import MqttConfig
from edge_agent.protocol import messages as wire
from edge_agent.protocol import topics
from edge_agent.protocol.manifest import verify_manifest
from edge_agent.transport.mqtt import MqttClient
from tests.cloud.distill_harness import (
    MODEL,
    NS,
    DistillLoop,
    hard_examples,
    job_obj,
    running_loop,
    stage_is,
    wait_job,
)

# --------------------------------------------------------------------------- (a) store + ingest hook


async def test_hard_example_store_and_ingest_hook_over_a_real_broker(
    tmp_path: Path, mqtt_cfg: MqttConfig
) -> None:
    store = HardExampleStore(tmp_path / "hard.db")
    sub = MqttClient(
        mqtt_cfg, "hx-ingest", subscriptions=[(topics.all_nodes(topics.HARD_EXAMPLES), 1)], name="sub"
    )
    pub = MqttClient(mqtt_cfg, "hx-node", clean_start=True, name="pub")
    await sub.start()
    await pub.start()
    try:
        await sub.wait_connected(5)  # connected = subscribed
        await pub.wait_connected(5)
        exs = hard_examples("n1", n_new=3, n_low=2)
        payloads = [(topics.hard_examples("n1"), wire.dumps(e)) for e in exs]
        payloads.append((topics.hard_examples("n1"), wire.dumps(exs[0])))  # QoS 1 redelivery
        payloads.append((topics.hard_examples("n2"), wire.dumps(exs[1])))  # another node's name
        payloads.append((topics.hard_examples("n1"), b"{not json"))
        for topic, payload in payloads:
            await pub.publish(topic, payload, qos=1, timeout=5)
        msgs = [await sub.receive(timeout=5) for _ in payloads]
        res = handle_hard_examples(store, msgs, received=5000.0)
        assert (res.accepted, res.duplicates) == (5, 1)
        assert res.rejected == {"node_mismatch": 1, "malformed_json": 1}
        again = handle_hard_examples(store, msgs[:2], received=6000.0)  # a whole burst redelivered
        assert (again.accepted, again.duplicates) == (0, 2)
    finally:
        await pub.stop()
        await sub.stop()

    assert store.count("chat") == 5
    assert [h.id for h in store.since(None, "chat", 0.9)] == ["hx-n1-0", "hx-n1-1", "hx-n1-2"]
    assert len(store.since(None, "chat")) == 5
    assert store.since(5000.5, "chat") == []
    assert [h.id for h in store.since(None, "chat", limit=2)] == [
        "hx-n1-3",
        "hx-n1-4",
    ]  # newest, oldest first
    h = store.since(None, "chat", 0.9)[0]
    assert h.label == "AddToPlaylist" and h.confidence == 0.97 and h.node == "n1" and h.received == 5000.0
    assert h.teacher is not None and h.teacher["tags"] and h.student["intent"] == "PlayMusic"
    counts = store.counts()
    assert counts["by_task"] == {"chat": 5} and counts["duplicates"] == {"n1": 3}
    store.close()


@pytest.fixture
async def loop(tmp_path: Path, parent_bundle: Path) -> AsyncIterator[DistillLoop]:
    async with running_loop(tmp_path, parent_bundle, "chat", hard_examples()) as lp:
        yield lp


# --------------------------------------------------------------------------- (b) (c) (d) (e) local runs


@pytest.mark.slow
@pytest.mark.train
async def test_job_runs_through_stages_and_releases_a_signed_model_with_rollout(loop: DistillLoop) -> None:
    await loop.store.create(job_obj("dj-pass"))
    obj = await wait_job(loop.store, "dj-pass", stage_is("Succeeded", "Rejected", "Failed"))
    st = obj["status"]
    assert st["stage"] == "Succeeded", st.get("message")
    assert st["observedGeneration"] == 1 and st["progress"] == 1.0
    times = st["stageTimes"]
    order = ["Pending", "Collecting", "Training", "Evaluating", "Succeeded"]
    assert all(k in times for k in order) and [times[k] for k in order] == sorted(times[k] for k in order)
    before, after = st["metricsBefore"], st["metricsAfter"]
    assert after["new_n"] >= 4 and after["new_intent_acc"] >= before["new_intent_acc"] + 10
    assert after["new_escalation_rate"] <= before["new_escalation_rate"]
    assert st["producedVersion"] == "2" and st["producedModel"] == "chat-snips-2"
    # Only the confident teacher answers were trained on.
    work = next((loop.tmp / "work").iterdir())
    assert len((work / "hard_examples.jsonl").read_text().splitlines()) == 40
    # Training reports per epoch, not only at its start and end.
    lines = [json.loads(x) for x in (work / "progress.jsonl").read_text().splitlines()]
    training = [x for x in lines if x["stage"] == "Training"]
    assert sum("epoch" in x["message"] for x in training) >= 4  # epochs=4 in the job
    assert [x["progress"] for x in lines] == sorted(x["progress"] for x in lines)
    # The EdgeModel pins a real, signed release.
    model = await loop.store.get("EdgeModel", NS, "chat-snips-2")
    rel = loop.artifacts.get(MODEL, "2")
    spec = model["spec"]
    assert spec["digest"] == rel.digest and spec["sizeBytes"] == rel.size and spec["parentVersion"] == "1"
    assert (
        spec["producedBy"] == "dj-pass"
        and spec["keyId"] in loop.pub
        and spec["signature"] == rel.parsed["signature"]
    )
    verify_manifest(rel.manifest, loop.pub, spec["digest"])
    assert b"".join(loop.artifacts.iter_chunks(rel))  # every blob is there
    ro = await loop.store.get("ModelRollout", NS, st["rolloutName"])
    assert ro["spec"]["model"] == MODEL and ro["spec"]["version"] == "2"
    assert [s["setWeight"] for s in ro["spec"]["steps"]] == [50, 100]


@pytest.mark.slow
@pytest.mark.train
async def test_gate_failure_is_rejected_with_metrics(loop: DistillLoop) -> None:
    # Gate on a gain no run can reach: the escalation rate is a share (lower is better), it cannot fall
    # by 1.5. (min_gain=100 on intent_acc can pass: the parent scores 0 on the held-back intent.)
    await loop.store.create(job_obj("dj-reject", min_gain=1.5, metric="escalation_rate"))
    obj = await wait_job(loop.store, "dj-reject", stage_is("Succeeded", "Rejected", "Failed"))
    st = obj["status"]
    assert st["stage"] == "Rejected" and st["message"].startswith("InsufficientGain"), st["message"]
    assert "minGain 1.5" in st["message"] and "(lower is better;" in st["message"]
    assert st["metricsAfter"]["fixed_intent_acc"] > 0 and "new_escalation_rate" in st["metricsBefore"]
    assert "Rejected" in st["stageTimes"] and "producedVersion" not in st
    with pytest.raises(NotFound):
        await loop.store.get("EdgeModel", NS, "chat-snips-2")


async def test_runner_that_crashes_ends_failed(tmp_path: Path) -> None:
    lp = DistillLoop(tmp_path)
    await lp.start()
    try:
        await lp.store.create(job_obj("dj-crash", base="nosuchdata"))
        obj = await wait_job(lp.store, "dj-crash", stage_is("Succeeded", "Rejected", "Failed"), timeout=60)
        st = obj["status"]
        assert st["stage"] == "Failed" and "unknown base data set" in st["message"]
        assert "Pending" in st["stageTimes"] and "Failed" in st["stageTimes"]
    finally:
        await lp.stop()
        lp.kill_all()
        await lp.store.close()


@pytest.mark.slow
@pytest.mark.train
async def test_controller_restart_reattaches_to_the_running_job(loop: DistillLoop) -> None:
    await loop.store.create(job_obj("dj-restart", rollout=False))
    await wait_job(loop.store, "dj-restart", stage_is("Collecting", "Training"), timeout=60)
    await loop.stop()  # the runner lives on in its own session
    work = next((loop.tmp / "work").iterdir())
    pid = int((work / "pid").read_text())
    await loop.start()
    obj = await wait_job(loop.store, "dj-restart", stage_is("Succeeded", "Rejected", "Failed"))
    assert obj["status"]["stage"] == "Succeeded", obj["status"].get("message")
    assert (work / "attempts").read_text() == "1" and int((work / "pid").read_text()) == pid  # not restarted
    assert obj["status"].get("rolloutName") is None


@pytest.mark.slow
@pytest.mark.train
async def test_runner_killed_while_controller_is_down_is_restarted(loop: DistillLoop) -> None:
    await loop.store.create(job_obj("dj-kill", rollout=False, min_gain=None))
    await wait_job(loop.store, "dj-kill", stage_is("Collecting", "Training"), timeout=60)
    await loop.stop()
    loop.kill_all()  # kill -9 with nobody watching: no result, no exit code
    await loop.start()
    obj = await wait_job(loop.store, "dj-kill", stage_is("Succeeded", "Rejected", "Failed"))
    work = next((loop.tmp / "work").iterdir())
    assert obj["status"]["stage"] == "Succeeded" and (work / "attempts").read_text() == "2"


