"""Every hard example the controller rejects lands in the rejects table (issue 15, point 9d).

Real mosquitto, the real ingest loop with a hard-examples store, and the
``cloud-controller totals`` verb reading the SQLite file back.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path

import pytest

from cloud_controller.cli.main import main as cli_main
from cloud_controller.ingest.fleet import Fleet
from cloud_controller.ingest.hard_examples import HardExampleStore
from cloud_controller.ingest.loop import Ingest, IngestConfig
from edge_agent.config import MqttConfig
from edge_agent.protocol import topics
from edge_agent.transport.mqtt import MqttClient

NODE = "n1"


def example(**over: object) -> bytes:
    ex = {"id": "ex-1", "node": NODE, "created": 1.0, "task": "chat", "text": "where is my order",
          "student": {"intent": "order_status", "confidence": 0.3}}
    ex.update(over)
    return json.dumps(ex).encode()


async def test_rejected_hard_examples_are_in_the_rejects_table(
    mqtt_cfg: MqttConfig, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "cloud.db"
    ingest = Ingest(IngestConfig(mqtt=mqtt_cfg, db_path=db, client_id="cloud-receiver"), None, Fleet(None),
                    hard_examples=HardExampleStore(tmp_path / "hard.db"))
    task = asyncio.create_task(ingest.run(), name="test-ingest")
    pub = MqttClient(mqtt_cfg, "pub", clean_start=True)
    sent = [
        (topics.hard_examples(NODE), example()),  # accepted
        (topics.hard_examples(NODE), b"{not json"),
        (topics.hard_examples(NODE), example(id="ex-2", node="n2")),  # another node's name
        (topics.hard_examples(NODE), example(id="ex-3", text="   ")),
        (topics.hard_examples(NODE), example(id="ex-4", task="sensor", text=None)),
        (topics.summaries(NODE), b"not zlib"),  # a summary reject shares the table
    ]
    try:
        await ingest.client.wait_connected(5)
        await pub.start()
        await pub.wait_connected(5)
        for topic, payload in sent:
            await pub.publish(topic, payload, qos=1, timeout=5)
        await ingest.wait_processed(len(sent), 10)
        assert ingest.stats.hard_examples == 1
    finally:
        await pub.stop()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    expected = {
        "hard_example_malformed_json": 1,
        "hard_example_node_mismatch": 1,
        "hard_example_empty_text": 1,
        "hard_example_no_features": 1,
        "malformed_payload": 1,
    }
    assert ingest.rejected == expected
    assert cli_main(["totals", "--db", str(db), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["rejects"] == expected
    assert cli_main(["totals", "--db", str(db)]) == 0
    assert "rejected hard_example_node_mismatch: 1" in capsys.readouterr().out
