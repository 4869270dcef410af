"""The summaries store: node summary batches in SQLite, exactly-once by batch id.

The ingest loop (``ingest/loop.py``) stores first and acks after: a crash between
the two makes the broker redeliver (at-least-once), and the batch id primary key
turns the redelivery into a counted duplicate. Together that is exactly-once
counting of readings. ``cloud-controller totals`` reads the per-node totals back.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cloud_controller.ingest.sqlite_db import connect_wal
from edge_agent.protocol import messages as wire

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
        self.reject_many([(reason, detail)])

    def reject_many(self, rejects: Sequence[tuple[str, str]]) -> None:
        """Count ``(reason, detail)`` rejects (summaries and hard examples alike) in one transaction."""
        if not rejects:
            return
        with self.db:
            self.db.executemany(
                "INSERT INTO rejects VALUES (?, 1, ?) "
                "ON CONFLICT(reason) DO UPDATE SET count = count + 1, last_detail = excluded.last_detail",
                [(reason, detail[:500]) for reason, detail in rejects],
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
