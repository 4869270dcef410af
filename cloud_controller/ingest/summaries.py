"""The summaries store: node summary batches in SQLite, exactly-once per (node, batch id).

The ingest loop (``ingest/loop.py``) stores first and acks after: a crash between
the two makes the broker redeliver (at-least-once), and the (node, batch id)
primary key turns the redelivery into a counted duplicate. Together that is
exactly-once counting of readings. The key includes the node because a node
numbers its own batches: ids are unique per node, not across the fleet.
``cloud-controller totals`` reads the per-node totals back. The PostgreSQL
backend (``ingest/pg_summaries.py``) shares the totals query and its reading.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cloud_controller.ingest.contracts import NodeTotals
from cloud_controller.ingest.sqlite_db import connect_wal
from edge_agent.protocol import messages as wire

__all__ = ["BATCH_COLUMNS", "TOTALS_SQL", "SummaryStore", "totals_from_rows"]

# Version 1 is the schema from before versioning (the id alone was the key); version 2 keys
# batches on (node, id).
_MIGRATIONS = (
    """
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
    CREATE TABLE IF NOT EXISTS rejects (reason TEXT PRIMARY KEY, count INTEGER NOT NULL, last_detail TEXT)
    """,
    """
    CREATE TABLE batches_v2 (
        node TEXT NOT NULL,
        id TEXT NOT NULL,
        seq INTEGER NOT NULL,
        readings INTEGER NOT NULL,
        windows INTEGER NOT NULL,
        bytes INTEGER NOT NULL,
        created REAL NOT NULL,
        received REAL NOT NULL,
        PRIMARY KEY (node, id)
    );
    INSERT INTO batches_v2 (node, id, seq, readings, windows, bytes, created, received)
        SELECT node, id, seq, readings, windows, bytes, created, received FROM batches;
    DROP TABLE batches;
    ALTER TABLE batches_v2 RENAME TO batches;
    CREATE INDEX batches_node_seq ON batches(node, seq)
    """,
)

BATCH_COLUMNS = "node, id, seq, readings, windows, bytes, created, received"

TOTALS_SQL = """
SELECT n.node, COALESCE(b.batches, 0), COALESCE(b.readings, 0), COALESCE(b.windows, 0),
       COALESCE(b.bytes, 0), COALESCE(d.count, 0), b.first_seq, b.last_seq, COALESCE(b.seqs, 0)
FROM (SELECT node FROM batches UNION SELECT node FROM duplicates) n
LEFT JOIN (SELECT node, COUNT(*) AS batches, SUM(readings) AS readings, SUM(windows) AS windows,
                  SUM(bytes) AS bytes, MIN(seq) AS first_seq, MAX(seq) AS last_seq,
                  COUNT(DISTINCT seq) AS seqs
           FROM batches GROUP BY node) b ON b.node = n.node
LEFT JOIN duplicates d ON d.node = n.node
ORDER BY n.node
"""


def totals_from_rows(rows: Sequence[Sequence[Any]]) -> list[NodeTotals]:
    """Rows of :data:`TOTALS_SQL` as totals (PostgreSQL's SUMs are Decimal: every number goes through int)."""
    out = []
    for node, batches, readings, windows, nbytes, dups, first, last, seqs in rows:
        first_seq = None if first is None else int(first)
        last_seq = None if last is None else int(last)
        gaps = (last_seq - first_seq + 1 - int(seqs)) if first_seq is not None and last_seq is not None else 0
        out.append(
            NodeTotals(node, int(batches), int(readings), int(windows), int(nbytes), int(dups),
                       first_seq, last_seq, gaps)
        )
    return out


class SummaryStore:
    """The embedded ``SummaryStoreProtocol``: sqlite3 in WAL mode, one writer, small transactions."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._db: sqlite3.Connection | None = None

    def open(self) -> SummaryStore:
        if self._db is None:
            self._db = connect_wal(self.path, "summaries", _MIGRATIONS)
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
        A (node, batch id) repeated inside ``items`` is a duplicate the second
        time, as it would be across calls.
        """
        out: list[bool] = []
        with self.db:
            for batch, received, payload_bytes in items:
                cur = self.db.execute(
                    f"INSERT OR IGNORE INTO batches ({BATCH_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (batch.node, batch.id, batch.seq, batch.readings, len(batch.windows), payload_bytes,
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
        return totals_from_rows(self.db.execute(TOTALS_SQL).fetchall())
