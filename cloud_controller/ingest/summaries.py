"""The summaries store: node summary batches in SQLite, exactly-once by batch id.

The ingest loop (``ingest/loop.py``) stores first and acks after: a crash between
the two makes the broker redeliver (at-least-once), and the batch id primary key
turns the redelivery into a counted duplicate. Together that is exactly-once
counting of readings. ``cloud-controller totals`` reads the per-node totals back.

Sequence epochs: a node numbers its batches from its state directory; when that is
lost the numbers start again, and a batch arrives with a sequence number the node
already used in this epoch (or below the epoch's first). That starts a new *epoch*
(recorded in ``epochs`` and on every batch), so gaps are counted within an epoch
and the reset itself is visible (``resets`` in the totals, the metrics and the
EdgeNode status) instead of hiding among the counts.
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
    received REAL NOT NULL,
    epoch INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS batches_node_seq ON batches(node, seq);
CREATE TABLE IF NOT EXISTS epochs (
    node TEXT NOT NULL, epoch INTEGER NOT NULL, first_seq INTEGER NOT NULL,
    previous_last_seq INTEGER NOT NULL, started REAL NOT NULL, PRIMARY KEY (node, epoch)
);
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
    first_seq: int | None  # of the current epoch
    last_seq: int | None  # of the current epoch
    seq_gaps: int  # sequence numbers never received, summed over the epochs (each between its first and last)
    resets: int = 0  # times the node's sequence started again (epochs after the first)


@dataclass
class SeqState:
    """A node's current sequence epoch, kept in memory (the common case, seq > last, needs no query)."""

    epoch: int
    first: int
    last: int
    gaps: int  # over all epochs


class SummaryStore:
    """Plain sqlite3 in WAL mode: one writer, small synchronous transactions."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._db: sqlite3.Connection | None = None
        self._seq: dict[str, SeqState] = {}
        self.resets_seen = 0  # epochs started by this process (a counter for the metrics)

    def open(self) -> SummaryStore:
        if self._db is None:
            self._db = connect_wal(self.path, _MIGRATE_EPOCH if _needs_epoch(self.path) else _SCHEMA)
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
        try:
            with self.db:
                for batch, received, payload_bytes in items:
                    st = self.sequence(batch.node)
                    provisional = st.epoch if st is not None else 0
                    cur = self.db.execute(
                        "INSERT OR IGNORE INTO batches VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (batch.id, batch.node, batch.seq, batch.readings, len(batch.windows), payload_bytes,
                         batch.created, received, provisional),
                    )
                    if cur.rowcount == 1:
                        epoch = self._next_seq(st, batch.node, batch.id, batch.seq, received)
                        if epoch != provisional:
                            self.db.execute("UPDATE batches SET epoch = ? WHERE id = ?", (epoch, batch.id))
                        out.append(True)
                        continue
                    self.db.execute(
                        "INSERT INTO duplicates VALUES (?, 1) "
                        "ON CONFLICT(node) DO UPDATE SET count = count + 1",
                        (batch.node,),
                    )
                    out.append(False)
        except BaseException:
            self._seq.clear()  # rolled back: re-read the epochs from the database
            raise
        return out

    def _next_seq(self, st: SeqState | None, node: str, batch_id: str, seq: int, received: float) -> int:
        """The epoch a new batch belongs to; starts a new one when the node's numbering went back.

        ``st`` is the node's state from before the batch was inserted.
        """
        if st is None:
            self._seq[node] = SeqState(0, seq, seq, 0)
            return 0
        if seq > st.last:
            st.gaps += seq - st.last - 1
            st.last = seq
        elif seq < st.first or seq == st.last or self.db.execute(
            "SELECT 1 FROM batches WHERE node = ? AND seq = ? AND epoch = ? AND id != ?",
            (node, seq, st.epoch, batch_id),
        ).fetchone():
            self.db.execute("INSERT INTO epochs VALUES (?, ?, ?, ?, ?)", (node, st.epoch + 1, seq, st.last,
                                                                         received))
            st.epoch, st.first, st.last = st.epoch + 1, seq, seq
            self.resets_seen += 1
        else:  # a late batch filling a gap of this epoch
            st.gaps -= 1
        return st.epoch

    def sequence(self, node: str) -> SeqState | None:
        """The node's current epoch and its gaps over all epochs (None before its first batch)."""
        st = self._seq.get(node)
        if st is None:
            rows = self.db.execute(
                "SELECT epoch, MIN(seq), MAX(seq), COUNT(DISTINCT seq) FROM batches WHERE node = ? "
                "GROUP BY epoch ORDER BY epoch", (node,)
            ).fetchall()
            if not rows:
                return None
            epoch, first, last, _ = rows[-1]
            st = self._seq[node] = SeqState(epoch, first, last, sum(hi - lo + 1 - n for _, lo, hi, n in rows))
        return st

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
        per_epoch: dict[str, list[tuple[int, int, int, int]]] = {}
        for node, epoch, first, last, seqs in self.db.execute(
            "SELECT node, epoch, MIN(seq), MAX(seq), COUNT(DISTINCT seq) FROM batches "
            "GROUP BY node, epoch ORDER BY node, epoch"
        ):
            per_epoch.setdefault(node, []).append((epoch, first, last, seqs))
        rows = self.db.execute(
            """
            SELECT n.node, COALESCE(b.batches, 0), COALESCE(b.readings, 0), COALESCE(b.windows, 0),
                   COALESCE(b.bytes, 0), COALESCE(d.count, 0)
            FROM (SELECT node FROM batches UNION SELECT node FROM duplicates) n
            LEFT JOIN (SELECT node, COUNT(*) batches, SUM(readings) readings, SUM(windows) windows,
                              SUM(bytes) bytes
                       FROM batches GROUP BY node) b ON b.node = n.node
            LEFT JOIN duplicates d ON d.node = n.node
            ORDER BY n.node
            """
        ).fetchall()
        out = []
        for node, batches, readings, windows, nbytes, dups in rows:
            epochs = per_epoch.get(node, [])
            gaps = sum(last - first + 1 - seqs for _, first, last, seqs in epochs)
            first, last = (epochs[-1][1], epochs[-1][2]) if epochs else (None, None)
            resets = epochs[-1][0] if epochs else 0
            out.append(NodeTotals(node, batches, readings, windows, nbytes, dups, first, last, gaps, resets))
        return out


_MIGRATE_EPOCH = "ALTER TABLE batches ADD COLUMN epoch INTEGER NOT NULL DEFAULT 0;\n" + _SCHEMA


def _needs_epoch(path: Path) -> bool:
    """A database written before sequence epochs: its batches table lacks the column (all epoch 0)."""
    if not path.exists():
        return False
    db = sqlite3.connect(path)
    try:
        cols = [r[1] for r in db.execute("PRAGMA table_info(batches)")]
    finally:
        db.close()
    return bool(cols) and "epoch" not in cols
