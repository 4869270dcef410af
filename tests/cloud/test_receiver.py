"""The summary receiver (the ingest loop without a resource store) against a real mosquitto and SQLite."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import zlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from cloud_controller.cli.main import main as cli_main
from cloud_controller.ingest.loop import Ingest, IngestConfig, summary_receiver
from edge_agent.config import MqttConfig
from edge_agent.protocol import messages as wire
from edge_agent.protocol import topics
from edge_agent.transport.mqtt import MqttClient
from edgeloop_sim.broker import Broker

REPO = Path(__file__).resolve().parents[2]


def batch(node: str, seq: int, counts: list[int]) -> wire.SummaryBatch:
    windows = [
        wire.WindowSummary(
            device="dev1", metric="temp", start=float(i), end=float(i + 1), count=c,
            min=0.0, max=1.0, mean=0.5, std=0.1, first=0.0, last=1.0, slope=0.0,
        )
        for i, c in enumerate(counts)
    ]
    return wire.SummaryBatch(id=f"{node}-{seq:08d}", node=node, seq=seq, created=1.0, windows=windows)


def receiver_config(mqtt_cfg: MqttConfig, tmp_path: Path) -> IngestConfig:
    return IngestConfig(mqtt=mqtt_cfg, db_path=tmp_path / "cloud.db", client_id="cloud-receiver")


@pytest.fixture
async def receiver(mqtt_cfg: MqttConfig, tmp_path: Path) -> AsyncIterator[Ingest]:
    r = summary_receiver(receiver_config(mqtt_cfg, tmp_path))
    task = asyncio.create_task(r.run(), name="test-receiver")
    await r.client.wait_connected(5)  # connected implies subscribed
    try:
        yield r
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@pytest.fixture
async def publisher(mqtt_cfg: MqttConfig) -> AsyncIterator[MqttClient]:
    c = MqttClient(mqtt_cfg, "edge-pub", name="edge-pub")
    await c.start()
    await c.wait_connected(5)
    yield c
    await c.stop()


async def test_totals_exact_with_duplicates_and_rejects(
    receiver: Ingest, publisher: MqttClient, tmp_path: Path
) -> None:
    sent = [batch("n1", s, [3, 4]) for s in range(5)] + [batch("n2", s, [10]) for s in (0, 1, 3)]
    payloads = [(topics.summaries(b.node), wire.encode_summary(b)) for b in sent]
    payloads += payloads[:2]  # broker redelivery / agent retry
    payloads.append((topics.summaries("n1"), b"not zlib at all"))
    payloads.append((topics.summaries("n1"), wire.encode_summary(batch("n2", 9, [1]))))  # mismatch
    wrong_type = b'{"id": 123456789, "node": "n1", "seq": 0, "created": 1.0}'  # id must be a string
    payloads.append((topics.summaries("n1"), zlib.compress(wrong_type)))
    payloads.append((topics.summaries("n1"), zlib.compress(b"{broken json")))
    status = wire.Status(node="n1", online=True, ts=2.0, agent_version="0.1.0")
    payloads.append((topics.status("n1"), wire.dumps(status)))
    for topic, payload in payloads:
        await publisher.publish(topic, payload, qos=1, timeout=5)

    await receiver.wait_processed(len(payloads), 10)

    by_node = {t.node: t for t in receiver.summaries.totals()}
    n1, n2 = by_node["n1"], by_node["n2"]
    assert (n1.batches, n1.readings, n1.windows, n1.duplicates) == (5, 35, 10, 2)
    assert (n1.first_seq, n1.last_seq, n1.seq_gaps) == (0, 4, 0)
    assert (n2.batches, n2.readings, n2.windows, n2.duplicates) == (3, 30, 3, 0)
    assert (n2.first_seq, n2.last_seq, n2.seq_gaps) == (0, 3, 1)
    assert n1.bytes == sum(len(p) for _, p in payloads[:5])
    assert receiver.summaries.rejects() == {
        "malformed_payload": 1, "node_mismatch": 1, "wrong_type": 1, "malformed_json": 1,
    }
    node = receiver.fleet.get("n1")
    assert node is not None and node.status is not None and node.status.agent_version == "0.1.0"

    # Still running after the junk, and everything was acked (nothing comes back).
    await publisher.publish(topics.summaries("n1"), wire.encode_summary(batch("n1", 5, [1])), timeout=5)
    await receiver.wait_processed(len(payloads) + 1, 10)
    assert {t.node: t.readings for t in receiver.summaries.totals()}["n1"] == 36
    assert receiver.client.stats.acks == len(payloads) + 1


async def test_unacked_summaries_survive_receiver_restart(
    mqtt_cfg: MqttConfig, publisher: MqttClient, tmp_path: Path
) -> None:
    cfg = receiver_config(mqtt_cfg, tmp_path)
    first = summary_receiver(cfg)
    task = asyncio.create_task(first.run())
    await first.client.wait_connected(5)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    for s in range(20):  # receiver offline: the broker queues for its session
        await publisher.publish(topics.summaries("n1"), wire.encode_summary(batch("n1", s, [2])), timeout=5)
    second = summary_receiver(cfg)
    task = asyncio.create_task(second.run())
    try:
        await asyncio.wait_for(_wait_until(second, 20), 10)
        assert [(t.batches, t.readings) for t in second.summaries.totals()] == [(20, 40)]
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _wait_until(r: Ingest, n: int) -> None:
    await r.client.wait_connected(5)
    await r.wait_processed(n, 10)


def test_cli_receive_and_totals(broker: Broker, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "cli.db"
    proc = subprocess.Popen(
        [sys.executable, "-m", "cloud_controller.cli.main", "--log-level", "DEBUG",
         "receive", "--broker", f"127.0.0.1:{broker.port}", "--db", str(db)],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stderr is not None
        for line in proc.stderr:  # wait for the subscription, then publish
            if "connected to" in line:
                break
        else:
            pytest.fail("receiver did not connect")
        pub = [
            "mosquitto_pub", "-p", str(broker.port), "-q", "1", "-V", "5", "-t", topics.summaries("n7"), "-s",
        ]
        subprocess.run(pub, input=wire.encode_summary(batch("n7", 0, [5, 6])), check=True, timeout=10)
        for line in proc.stderr:
            if "stored batch" in line:
                break
        else:
            pytest.fail("summary never stored")
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    assert cli_main(["totals", "--db", str(db), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["nodes"][0]["node"] == "n7" and out["nodes"][0]["readings"] == 11
    assert cli_main(["totals", "--db", str(db)]) == 0
    assert "n7" in capsys.readouterr().out
