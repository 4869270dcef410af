"""Issue 15 point 7 (controller side): a message from a node id that cannot be an EdgeNode name is
rejected and counted at ingest, not stored, and never reaches registration (which logged a
traceback for every such message and never approved the node)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from cloud_controller.ingest.loop import IngestConfig, summary_receiver
from edge_agent.config import MqttConfig
from edge_agent.protocol import messages as wire
from edge_agent.transport.mqtt import Message

T0 = 1_700_000_000.0


def _batch_msg(node: str, seq: int) -> Message:
    batch = wire.SummaryBatch(
        id=f"batch-{node}-{seq:04d}",
        node=node,
        seq=seq,
        created=T0,
        windows=[
            wire.WindowSummary(
                device="d1",
                metric="x",
                start=T0,
                end=T0 + 10,
                count=3,
                min=0.0,
                max=2.0,
                mean=1.0,
                std=0.5,
                first=0.0,
                last=2.0,
                slope=0.1,
            )
        ],
    )
    # Spelled out: topics.py refuses to build a topic for such a node.
    topic = f"edgeloop/v1/nodes/{node}/summaries"
    return Message(
        topic=topic, payload=wire.encode_summary(batch), qos=1, retain=False, mid=seq, properties=None
    )


@pytest.mark.parametrize("node", ["Node-A", "n_1"])
def test_ingest_rejects_node_ids_that_cannot_be_resource_names(
    node: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ingest = summary_receiver(IngestConfig(mqtt=MqttConfig(), db_path=tmp_path / "r.db"))
    with caplog.at_level(logging.WARNING):
        ingest.process([_batch_msg(node, 1), _batch_msg("n1", 1)])
    assert ingest.rejected == {"bad_node_id": 1}
    assert ingest.stats.summaries_stored == 1  # the good node's batch
    assert all(r.exc_info is None for r in caplog.records)
