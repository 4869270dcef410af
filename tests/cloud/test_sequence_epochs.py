"""A node whose summary numbering starts again gets a new epoch, and it shows (issue 15, point 10).

The store level (epochs, gaps per epoch, restart, a database from before epochs),
then the whole controller against mosquitto: the EdgeNode status and its printer
columns, and the Prometheus metrics.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

import pytest

from cloud_controller.app import ControllerApp
from cloud_controller.cli import kubectl
from cloud_controller.ingest.summaries import SummaryStore
from cloud_controller.resources.sqlite_store import SqliteResourceStore
from cloud_controller.settings import ControllerSettings
from edge_agent.config import MqttConfig
from edge_agent.protocol import messages as wire
from edge_agent.protocol import topics
from edge_agent.transport.mqtt import MqttClient


def batch(node: str, seq: int) -> wire.SummaryBatch:
    return wire.SummaryBatch(id=wire.new_id(), node=node, seq=seq, created=1.0, windows=[])


def store_seqs(store: SummaryStore, node: str, seqs: list[int]) -> None:
    store.add_many([(batch(node, s), time.time(), 10) for s in seqs])


def test_sequence_going_back_starts_a_new_epoch(tmp_path: Path) -> None:
    db = tmp_path / "cloud.db"
    with SummaryStore(db) as s:
        store_seqs(s, "n1", [0, 1, 2, 4])  # 3 missing
        store_seqs(s, "n2", [5, 6, 7])
        (n1,) = [t for t in s.totals() if t.node == "n1"]
        assert (n1.resets, n1.seq_gaps, n1.first_seq, n1.last_seq) == (0, 1, 0, 4)
        store_seqs(s, "n1", [3])  # late: fills the gap, no reset
        store_seqs(s, "n1", [0, 1, 3])  # the state dir was lost: numbering starts again
        store_seqs(s, "n2", [6])  # a number n2 already used (a new batch id): a reset too
        by = {t.node: t for t in s.totals()}
        assert (by["n1"].resets, by["n1"].seq_gaps, by["n1"].first_seq, by["n1"].last_seq) == (1, 1, 0, 3)
        assert (by["n1"].batches, by["n1"].duplicates) == (8, 0)  # every batch counted exactly once
        assert (by["n2"].resets, by["n2"].seq_gaps) == (1, 0)
        seq = s.sequence("n1")
        assert seq is not None and (seq.epoch, seq.gaps) == (1, 1)
        assert s.resets_seen == 2
        epochs = s.db.execute("SELECT node, epoch, first_seq, previous_last_seq FROM epochs ORDER BY node")
        assert epochs.fetchall() == [("n1", 1, 0, 4), ("n2", 1, 6, 7)]
    with SummaryStore(db) as again:  # a restarted controller continues the epoch, does not open another
        store_seqs(again, "n1", [2, 4])
        (n1,) = [t for t in again.totals() if t.node == "n1"]
        assert (n1.resets, n1.seq_gaps, n1.last_seq) == (1, 0, 4)


def test_database_from_before_epochs_is_migrated(tmp_path: Path) -> None:
    db = tmp_path / "old.db"
    old = sqlite3.connect(db)
    old.executescript(
        "CREATE TABLE batches (id TEXT PRIMARY KEY, node TEXT NOT NULL, seq INTEGER NOT NULL, "
        "readings INTEGER NOT NULL, windows INTEGER NOT NULL, bytes INTEGER NOT NULL, created REAL NOT NULL, "
        "received REAL NOT NULL);"
        "INSERT INTO batches VALUES ('a', 'n1', 0, 1, 0, 10, 1.0, 1.0), ('b', 'n1', 1, 1, 0, 10, 1.0, 1.0);"
    )
    old.commit()
    old.close()
    with SummaryStore(db) as s:
        store_seqs(s, "n1", [0])
        (n1,) = s.totals()
        assert (n1.batches, n1.resets, n1.first_seq, n1.last_seq) == (3, 1, 0, 0)


async def _get(port: int, path: str) -> str:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    data = await reader.read()
    writer.close()
    return data.partition(b"\r\n\r\n")[2].decode()


async def _wait_sequence(store: SqliteResourceStore, name: str, want: dict[str, int]) -> None:
    """Wait on the store's watch until EdgeNode ``name`` shows ``want`` as its status.sequence."""
    objs, rv = await store.list("EdgeNode", "default")
    if any(o["metadata"]["name"] == name and (o.get("status") or {}).get("sequence") == want for o in objs):
        return
    async for ev in store.watch("EdgeNode", "default", rv):
        if ev.object["metadata"]["name"] == name and (ev.object.get("status") or {}).get("sequence") == want:
            return


async def test_reset_shows_in_edgenode_status_printer_columns_and_metrics(
    tmp_path: Path, mqtt_cfg: MqttConfig, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = ControllerSettings(
        mqtt=mqtt_cfg, store_path=tmp_path / "resources.db", data_dir=tmp_path / "controller", http_port=0,
        http_host="127.0.0.1", status_min_interval_s=0.0, poll_s=0.1, shutdown_timeout_s=2.0,
        client_id="controller-test",
    )
    store = SqliteResourceStore(tmp_path / "resources.db", poll_interval=0.05)
    app = ControllerApp(settings, store=store)
    task = asyncio.create_task(app.run(), name="controller-app")
    node = MqttClient(mqtt_cfg, "edge-agent-n1", clean_start=True)
    try:
        async with asyncio.timeout(10):
            await app.ready.wait()
        assert app.ingest is not None and app.http_port is not None
        await app.ingest.client.wait_connected(5)
        await node.start()
        await node.wait_connected(5)
        sent = [0, 1, 2, 4, 0, 1]  # seq 3 never arrives; then the node lost its state dir
        for s in sent:
            await node.publish(topics.summaries("n1"), wire.encode_summary(batch("n1", s)), qos=1, timeout=5)
        await app.ingest.wait_processed(len(sent), 10)
        async with asyncio.timeout(10):
            await _wait_sequence(store, "n1", {"resets": 1, "gaps": 1})
        metrics = await _get(app.http_port, "/metrics")
        assert "edgeloop_controller_ingest_seq_resets_total 1.0" in metrics
        assert "edgeloop_controller_fleet_seq_resets 1.0" in metrics
        assert "edgeloop_controller_fleet_seq_gaps 1.0" in metrics
        assert "edgeloop_controller_fleet_nodes_seq_reset 1.0" in metrics
    finally:
        await node.stop()
        app.stop()
        await asyncio.wait_for(task, 15)
        await store.close()
    argv = ["get", "edgenodes", "--store", str(tmp_path / "resources.db")]
    assert await asyncio.to_thread(kubectl.main, argv) == 0  # it runs its own event loop
    rows = [line.split() for line in capsys.readouterr().out.strip().splitlines()]
    header = rows[0]
    n1 = next(r for r in rows if r[0] == "n1")
    assert header[header.index("RESETS") + 1] == "GAPS"
    # Cells left of RESETS may be empty (split drops them): count from the right (RESETS GAPS AGE).
    assert n1[-3:-1] == ["1", "1"], rows
