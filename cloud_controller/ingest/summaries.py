"""The summaries store: node summary batches in SQLite, exactly-once per (node, batch id).

The ingest loop (``ingest/loop.py``) stores first and acks after: a crash between
the two makes the broker redeliver (at-least-once), and the (node, batch id)
primary key turns the redelivery into a counted duplicate. Together that is
exactly-once counting of readings. The key includes the node because a node
numbers its own batches: ids are unique per node, not across the fleet.
``cloud-controller totals`` reads the per-node totals back. The PostgreSQL
backend (``ingest/pg_summaries.py``) shares the totals query and its reading.

Sequence epochs (``ingest/seq_epochs.py``): every batch carries the epoch of its
node's numbering, and each reset is a row in ``epochs``. The single writer keeps
each node's current epoch in memory (read back from ``batches`` on first use),
so the common case, a number above the last, needs no query.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cloud_controller.ingest.contracts import NodeTotals, SeqState
from cloud_controller.ingest.seq_epochs import EPOCH_TOTALS_SQL, advance, gaps_of
from cloud_controller.ingest.sqlite_db import connect_wal
from edge_agent.protocol import messages as wire

__all__ = ["BATCH_COLUMNS", "TOTALS_SQL", "SummaryStore", "totals_from_rows"]

# Version 1 is the schema from before versioning (the id alone was the key); version 2 keys
# batches on (node, id); version 3 adds sequence epochs (files from before are all epoch 0).
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
    """
    ALTER TABLE batches ADD COLUMN epoch INTEGER NOT NULL DEFAULT 0;
    CREATE TABLE epochs (
        node TEXT NOT NULL,
        epoch INTEGER NOT NULL,
        first_seq INTEGER NOT NULL,
        previous_last_seq INTEGER NOT NULL,
        started REAL NOT NULL,
        PRIMARY KEY (node, epoch)
    )
    """,
)

BATCH_COLUMNS = "node, id, seq, readings, windows, bytes, created, received, epoch"

TOTALS_SQL = """
SELECT n.node, COALESCE(b.batches, 0), COALESCE(b.readings, 0), COALESCE(b.windows, 0),
       COALESCE(b.bytes, 0), COALESCE(d.count, 0)
FROM (SELECT node FROM batches UNION SELECT node FROM duplicates) n
LEFT JOIN (SELECT node, COUNT(*) AS batches, SUM(readings) AS readings, SUM(windows) AS windows,
                  SUM(bytes) AS bytes
           FROM batches GROUP BY node) b ON b.node = n.node
LEFT JOIN duplicates d ON d.node = n.node
ORDER BY n.node
"""


def totals_from_rows(rows: Sequence[Sequence[Any]], epoch_rows: Sequence[Sequence[Any]]) -> list[NodeTotals]:
    """Rows of :data:`TOTALS_SQL` and of ``EPOCH_TOTALS_SQL`` as totals.

    PostgreSQL's SUMs are Decimal: every number goes through int. First and last
    sequence number are the current epoch's; gaps are summed over the epochs.
    """
    per_epoch: dict[str, list[tuple[int, int, int, int]]] = {}
    for node, epoch, first, last, seqs in epoch_rows:
        per_epoch.setdefault(node, []).append((int(epoch), int(first), int(last), int(seqs)))
    out = []
    for node, batches, readings, windows, nbytes, dups in rows:
        epochs = per_epoch.get(node, [])
        first_seq, last_seq = (epochs[-1][1], epochs[-1][2]) if epochs else (None, None)
        resets = epochs[-1][0] if epochs else 0
        out.append(
            NodeTotals(node, int(batches), int(readings), int(windows), int(nbytes), int(dups),
                       first_seq, last_seq, gaps_of(epochs), resets)
        )
    return out


class SummaryStore:
    """The embedded ``SummaryStoreProtocol``: sqlite3 in WAL mode, one writer, small transactions."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._db: sqlite3.Connection | None = None
        self._seq: dict[str, SeqState] = {}
        self.resets_seen = 0  # epochs started by this process

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
        try:
            with self.db:
                for batch, received, payload_bytes in items:
                    st = self.sequence(batch.node)
                    provisional = st.epoch if st is not None else 0
                    cur = self.db.execute(
                        f"INSERT OR IGNORE INTO batches ({BATCH_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (batch.node, batch.id, batch.seq, batch.readings, len(batch.windows), payload_bytes,
                         batch.created, received, provisional),
                    )
                    if cur.rowcount == 1:
                        epoch = self._next_epoch(st, batch, received)
                        if epoch != provisional:
                            self.db.execute("UPDATE batches SET epoch = ? WHERE node = ? AND id = ?",
                                            (epoch, batch.node, batch.id))
                        out.append(True)
                        continue
                    self.db.execute(
                        "INSERT INTO duplicates VALUES (?, 1) "
                        "ON CONFLICT(node) DO UPDATE SET count = count + 1",
                        (batch.node,),
                    )
                    out.append(False)
        except BaseException:
            self._seq.clear()  # rolled back: read the epochs from the database again
            raise
        return out

    def _next_epoch(self, st: SeqState | None, batch: wire.SummaryBatch, received: float) -> int:
        """The epoch of a batch just inserted; ``st`` is its node's state from before the insert."""
        if st is None:
            self._seq[batch.node] = SeqState(0, batch.seq, batch.seq, 0)
            return 0

        def used(seq: int, epoch: int) -> bool:
            return self.db.execute(
                "SELECT 1 FROM batches WHERE node = ? AND seq = ? AND epoch = ? AND id != ?",
                (batch.node, seq, epoch, batch.id),
            ).fetchone() is not None

        previous = advance(st, batch.seq, used)
        if previous is not None:
            self.db.execute("INSERT INTO epochs VALUES (?, ?, ?, ?, ?)",
                            (batch.node, st.epoch, batch.seq, previous, received))
            self.resets_seen += 1
        return st.epoch

    def sequence(self, node: str) -> SeqState | None:
        st = self._seq.get(node)
        if st is None:
            rows = self.db.execute(
                "SELECT epoch, MIN(seq), MAX(seq), COUNT(DISTINCT seq) FROM batches WHERE node = ? "
                "GROUP BY epoch ORDER BY epoch", (node,)
            ).fetchall()
            if not rows:
                return None
            epoch, first, last, _ = rows[-1]
            st = self._seq[node] = SeqState(epoch, first, last, gaps_of(rows))
        return st

    def reject(self, reason: str, detail: str = "") -> None:
        self.reject_many([(reason, detail)])

    def reject_many(self, rejects: Sequence[tuple[str, str]]) -> None:
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
        return totals_from_rows(self.db.execute(TOTALS_SQL).fetchall(),
                                self.db.execute(EPOCH_TOTALS_SQL).fetchall())
