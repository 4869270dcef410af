"""Minimal cloud receiver: node summaries into SQLite, exactly-once by batch id.

Store first, ack after: a crash between the two makes the broker redeliver
(at-least-once), and the batch id primary key turns the redelivery into a
counted duplicate. Together that is exactly-once counting of readings.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from cloud_controller.ingest.sqlite_db import connect_wal
from edge_agent.config import MqttConfig
from edge_agent.protocol import messages as wire
from edge_agent.protocol import topics
from edge_agent.protocol.errors import RejectedMessage
from edge_agent.transport.mqtt import Message, MqttClient

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS batches (
    id TEXT PRIMARY KEY,
    node TEXT NOT NULL,
    seq INTEGER NOT NULL,
    readings INTEGER NOT NULL,
    windows INTEGER NOT NULL,
    bytes INTEGER NOT NULL,
    created REAL NOT NULL,
    received REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS batches_node_seq ON batches(node, seq);
CREATE TABLE IF NOT EXISTS duplicates (node TEXT PRIMARY KEY, count INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS rejects (reason TEXT PRIMARY KEY, count INTEGER NOT NULL, last_detail TEXT);
"""


@dataclass(frozen=True)
class NodeTotals:
    node: str
    batches: int
    readings: int
    windows: int
    bytes: int
    duplicates: int
    first_seq: int | None
    last_seq: int | None
    seq_gaps: int  # sequence numbers between first and last never received


class SummaryStore:
    """Plain sqlite3 in WAL mode: one writer, small synchronous transactions."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._db: sqlite3.Connection | None = None

    def open(self) -> SummaryStore:
        if self._db is None:
            self._db = connect_wal(self.path, _SCHEMA)
        return self

    @property
    def db(self) -> sqlite3.Connection:
        return self.open()._db  # type: ignore[return-value]

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def __enter__(self) -> SummaryStore:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def add(self, batch: wire.SummaryBatch, received: float, payload_bytes: int = 0) -> bool:
        """Store one batch; False (and a duplicate counted) if its id was seen before."""
        with self.db:
            cur = self.db.execute(
                "INSERT OR IGNORE INTO batches VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (batch.id, batch.node, batch.seq, batch.readings, len(batch.windows), payload_bytes,
                 batch.created, received),
            )
            if cur.rowcount == 1:
                return True
            self.db.execute(
                "INSERT INTO duplicates VALUES (?, 1) ON CONFLICT(node) DO UPDATE SET count = count + 1",
                (batch.node,),
            )
            return False

    def add_many(self, items: Sequence[tuple[wire.SummaryBatch, float, int]]) -> list[bool]:
        """Store ``(batch, received, payload_bytes)`` items in ONE transaction; per item, new or duplicate.

        One commit per message caps ingest at the commit rate; the controller's
        ingest acks a whole burst after this single commit, which keeps
        store-then-ack (and so exactly-once counting) while amortising the commit.
        A batch id repeated inside ``items`` is a duplicate the second time, as it
        would be across calls.
        """
        out: list[bool] = []
        with self.db:
            for batch, received, payload_bytes in items:
                cur = self.db.execute(
                    "INSERT OR IGNORE INTO batches VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (batch.id, batch.node, batch.seq, batch.readings, len(batch.windows), payload_bytes,
                     batch.created, received),
                )
                if cur.rowcount == 1:
                    out.append(True)
                    continue
                self.db.execute(
                    "INSERT INTO duplicates VALUES (?, 1) ON CONFLICT(node) DO UPDATE SET count = count + 1",
                    (batch.node,),
                )
                out.append(False)
        return out

    def reject(self, reason: str, detail: str = "") -> None:
        with self.db:
            self.db.execute(
                "INSERT INTO rejects VALUES (?, 1, ?) "
                "ON CONFLICT(reason) DO UPDATE SET count = count + 1, last_detail = excluded.last_detail",
                (reason, detail[:500]),
            )

    def rejects(self) -> dict[str, int]:
        return dict(self.db.execute("SELECT reason, count FROM rejects ORDER BY reason").fetchall())

    def totals(self) -> list[NodeTotals]:
        rows = self.db.execute(
            """
            SELECT n.node, COALESCE(b.batches, 0), COALESCE(b.readings, 0), COALESCE(b.windows, 0),
                   COALESCE(b.bytes, 0), COALESCE(d.count, 0), b.first_seq, b.last_seq, COALESCE(b.seqs, 0)
            FROM (SELECT node FROM batches UNION SELECT node FROM duplicates) n
            LEFT JOIN (SELECT node, COUNT(*) batches, SUM(readings) readings, SUM(windows) windows,
                              SUM(bytes) bytes, MIN(seq) first_seq, MAX(seq) last_seq,
                              COUNT(DISTINCT seq) seqs
                       FROM batches GROUP BY node) b ON b.node = n.node
            LEFT JOIN duplicates d ON d.node = n.node
            ORDER BY n.node
            """
        ).fetchall()
        out = []
        for node, batches, readings, windows, nbytes, dups, first, last, seqs in rows:
            gaps = (last - first + 1 - seqs) if first is not None else 0
            out.append(NodeTotals(node, batches, readings, windows, nbytes, dups, first, last, gaps))
        return out


class ReceiverConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    mqtt: MqttConfig = Field(default_factory=MqttConfig)
    db_path: Path
    client_id: str = "cloud-receiver"
    # "$share/{group}/..." splits the summaries between receiver replicas.
    shared_group: str | None = None
    max_payload_bytes: int = 8 * wire.DEFAULT_MAX_PAYLOAD


class Receiver:
    def __init__(self, cfg: ReceiverConfig) -> None:
        self.cfg = cfg
        self.store = SummaryStore(cfg.db_path)
        self.statuses: dict[str, wire.Status] = {}
        self.processed = 0
        self.stored = 0
        self.duplicates = 0
        self.rejected: dict[str, int] = {}
        self._progress = asyncio.Condition()
        self.client = MqttClient(
            cfg.mqtt,
            cfg.client_id,
            subscriptions=[(self._filter(topics.SUMMARIES), 1), (self._filter(topics.STATUS), 1)],
            manual_ack=True,
            name="receiver",
        )

    def _filter(self, leaf: str) -> str:
        return topics.shared(self.cfg.shared_group, topics.all_nodes(leaf))

    async def run(self) -> None:
        """Receive until cancelled; the MQTT session survives restarts (persistent, manual ack)."""
        self.store.open()
        try:
            await self.client.start()
            async for msg in self.client.messages():
                self.handle(msg)
                self.client.ack(msg)  # after the store commit
                async with self._progress:
                    self.processed += 1
                    self._progress.notify_all()
        finally:
            await self.client.stop()
            self.store.close()

    def handle(self, msg: Message) -> None:
        """Process one message; never raises for bad input (it would never get better)."""
        try:
            node, leaf = topics.parse_node_topic(msg.topic)
            if leaf == topics.SUMMARIES:
                self._summary(node, msg)
            elif leaf == topics.STATUS:
                self._status(node, msg)
            else:
                raise RejectedMessage("bad_topic", f"unexpected leaf {leaf!r}")
        except RejectedMessage as exc:
            self.rejected[exc.reason] = self.rejected.get(exc.reason, 0) + 1
            log.warning("rejected message on %s: %s", msg.topic, exc)
            self.store.reject(exc.reason, f"{msg.topic}: {exc.detail}")

    def _summary(self, node: str, msg: Message) -> None:
        batch = wire.decode_summary(msg.payload, self.cfg.max_payload_bytes)
        if batch.node != node:
            raise RejectedMessage("node_mismatch", f"topic node {node!r} != batch node {batch.node!r}")
        if self.store.add(batch, time.time(), len(msg.payload)):
            self.stored += 1
            log.debug("stored batch %s from %s seq %d", batch.id, node, batch.seq)
        else:
            self.duplicates += 1
            log.debug("duplicate batch %s from %s", batch.id, node)

    def _status(self, node: str, msg: Message) -> None:
        if not msg.payload:  # a cleared retained status
            self.statuses.pop(node, None)
            return
        status = wire.parse_json(wire.Status, msg.payload)
        if status.node != node:
            raise RejectedMessage("node_mismatch", f"topic node {node!r} != status node {status.node!r}")
        self.statuses[node] = status

    async def wait_processed(self, n: int, timeout: float) -> None:
        async with asyncio.timeout(timeout), self._progress:
            await self._progress.wait_for(lambda: self.processed >= n)
