"""The summaries store on PostgreSQL: the cluster's ``SummaryStoreProtocol``.

Same tables, key and totals as the SQLite store (``ingest/summaries.py``), so
replicas sharing one database count a batch once whichever replica the broker
gave it to, and a restarted pod forgets nothing. ``INSERT ... ON CONFLICT DO
NOTHING`` with ``RETURNING`` tells new from duplicate per row, also when two
replicas insert the same (node, id) at once (the second waits for the first's
commit, then finds the row). The burst's inserts are pipelined in one
``executemany``; duplicate counters are bumped in node order so two replicas'
transactions cannot deadlock on them.

Sequence epochs (``ingest/seq_epochs.py``): replicas share the nodes, so a node's
current epoch cannot live in one replica's memory. It is a row of ``sequences``,
read and written inside the burst's transaction under a per-node advisory lock
(taken in key order, so two replicas cannot deadlock): the replica that stores a
node's batches second sees the first one's numbers, and one reset is one epoch.
"""

from __future__ import annotations

import zlib
from collections import Counter
from collections.abc import Sequence

import psycopg

from cloud_controller.ingest.contracts import NodeTotals, SeqState
from cloud_controller.ingest.pg_db import PgDatabase
from cloud_controller.ingest.seq_epochs import EPOCH_TOTALS_SQL, advance
from cloud_controller.ingest.summaries import BATCH_COLUMNS, TOTALS_SQL, totals_from_rows
from edge_agent.protocol import messages as wire

__all__ = ["PgSummaryStore"]

_MIGRATIONS = (
    """
    CREATE TABLE batches (
        node TEXT NOT NULL,
        id TEXT NOT NULL,
        seq BIGINT NOT NULL,
        readings BIGINT NOT NULL,
        windows BIGINT NOT NULL,
        bytes BIGINT NOT NULL,
        created DOUBLE PRECISION NOT NULL,
        received DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (node, id)
    );
    CREATE INDEX batches_node_seq ON batches (node, seq);
    CREATE TABLE duplicates (node TEXT PRIMARY KEY, count BIGINT NOT NULL);
    CREATE TABLE rejects (reason TEXT PRIMARY KEY, count BIGINT NOT NULL, last_detail TEXT)
    """,
    # Version 2: sequence epochs. Batches stored before are all epoch 0.
    """
    ALTER TABLE batches ADD COLUMN epoch BIGINT NOT NULL DEFAULT 0;
    CREATE TABLE epochs (
        node TEXT NOT NULL,
        epoch BIGINT NOT NULL,
        first_seq BIGINT NOT NULL,
        previous_last_seq BIGINT NOT NULL,
        started DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (node, epoch)
    );
    CREATE TABLE sequences (
        node TEXT PRIMARY KEY,
        epoch BIGINT NOT NULL,
        first_seq BIGINT NOT NULL,
        last_seq BIGINT NOT NULL,
        gaps BIGINT NOT NULL
    );
    INSERT INTO sequences
        SELECT node, 0, MIN(seq), MAX(seq), MAX(seq) - MIN(seq) + 1 - COUNT(DISTINCT seq) FROM batches
        GROUP BY node
    """,
)

_SEQ_LOCK_CLASS = 0x7365_7121  # "seq!": the first key of every per-node sequence lock

Conn = psycopg.Connection[tuple[object, ...]]


class PgSummaryStore:
    def __init__(self, dsn: str, **kw: float) -> None:
        self.pg = PgDatabase(dsn, "summaries", _MIGRATIONS, **kw)
        self._seq: dict[str, SeqState] = {}  # as committed by this replica's last add_many

    def open(self) -> PgSummaryStore:
        self.pg.open()
        return self

    def close(self) -> None:
        self.pg.close()

    def __enter__(self) -> PgSummaryStore:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def add_many(self, items: Sequence[tuple[wire.SummaryBatch, float, int]]) -> list[bool]:
        if not items:
            return []
        nodes = sorted({b.node for b, _, _ in items})

        def body(conn: Conn) -> tuple[list[bool], dict[str, SeqState]]:
            with conn.cursor() as cur:
                states = _lock_sequences(cur, nodes)
                # Each batch goes in with its node's epoch from before the burst (provisional).
                out = _insert_batches(cur, items, states)
                dups = Counter(b.node for (b, _, _), new in zip(items, out, strict=True) if not new)
                if dups:
                    rows = sorted(dups.items())
                    cur.execute(
                        "INSERT INTO duplicates SELECT * FROM unnest(%s::text[], %s::bigint[]) "
                        "ON CONFLICT (node) DO UPDATE SET count = duplicates.count + excluded.count",
                        ([n for n, _ in rows], [c for _, c in rows]),
                    )
                _advance_sequences(cur, items, out, states)
            return out, states

        try:
            out, states = self.pg.transaction(body)
        except BaseException:
            self._seq.clear()
            raise
        self._seq.update(states)  # as committed (a re-run body read them again)
        return out

    def sequence(self, node: str) -> SeqState | None:
        st = self._seq.get(node)
        if st is None:
            row = self.pg.transaction(
                lambda conn: conn.execute(
                    "SELECT epoch, first_seq, last_seq, gaps FROM sequences WHERE node = %s", (node,)
                ).fetchone()
            )
            if row is None:
                return None
            st = self._seq[node] = SeqState(*(int(v) for v in row))  # type: ignore[call-overload]
        return st

    def reject(self, reason: str, detail: str = "") -> None:
        self.reject_many([(reason, detail)])

    def reject_many(self, rejects: Sequence[tuple[str, str]]) -> None:
        if not rejects:
            return
        # In reason order (stable: the last detail stays last), so two replicas cannot deadlock.
        rows = sorted(((reason, detail[:500]) for reason, detail in rejects), key=lambda r: r[0])

        def body(conn: Conn) -> None:
            with conn.cursor() as cur:
                cur.executemany(
                    "INSERT INTO rejects VALUES (%s, 1, %s) ON CONFLICT (reason) DO UPDATE SET "
                    "count = rejects.count + 1, last_detail = excluded.last_detail",
                    rows,
                )

        self.pg.transaction(body)

    def rejects(self) -> dict[str, int]:
        rows = self.pg.transaction(
            lambda conn: conn.execute("SELECT reason, count FROM rejects ORDER BY reason").fetchall()
        )
        return {str(r): int(n) for r, n in rows}  # type: ignore[call-overload]

    def totals(self) -> list[NodeTotals]:
        def body(conn: Conn) -> list[NodeTotals]:
            return totals_from_rows(conn.execute(TOTALS_SQL).fetchall(),
                                    conn.execute(EPOCH_TOTALS_SQL).fetchall())

        return self.pg.transaction(body)


def _lock_key(node: str) -> int:
    """The node's advisory lock key: a stable 32-bit signed hash (a collision only serializes more)."""
    return zlib.crc32(node.encode()) - (1 << 31)


def _insert_batches(
    cur: psycopg.Cursor[tuple[object, ...]],
    items: Sequence[tuple[wire.SummaryBatch, float, int]],
    states: dict[str, SeqState],
) -> list[bool]:
    """Insert the burst in ONE statement over arrays; per item, whether it was new.

    One statement instead of a row each: the client's cost per row is then filling
    nine arrays, not a protocol round of its own. Rows go in array order, so of a
    (node, id) repeated within the burst the first is inserted and the later ones
    are duplicates, as they would be across bursts.
    """
    cols: tuple[list[object], ...] = ([], [], [], [], [], [], [], [], [])
    node_c, id_c, seq_c, read_c, win_c, bytes_c, created_c, recv_c, epoch_c = cols
    for b, received, nbytes in items:
        node_c.append(b.node)
        id_c.append(b.id)
        seq_c.append(b.seq)
        read_c.append(b.readings)
        win_c.append(len(b.windows))
        bytes_c.append(nbytes)
        created_c.append(float(b.created))  # one element type per array
        recv_c.append(float(received))
        st = states.get(b.node)
        epoch_c.append(st.epoch if st is not None else 0)
    cur.execute(
        f"INSERT INTO batches ({BATCH_COLUMNS}) SELECT * FROM unnest(%s::text[], %s::text[], %s::bigint[], "
        "%s::bigint[], %s::bigint[], %s::bigint[], %s::float8[], %s::float8[], %s::bigint[]) "
        "ON CONFLICT (node, id) DO NOTHING RETURNING node, id",
        cols,
    )
    inserted = {(str(n), str(i)) for n, i in cur.fetchall()}
    out: list[bool] = []
    for b, _, _ in items:
        key = (b.node, b.id)
        out.append(key in inserted)
        inserted.discard(key)  # a repeat later in the burst is a duplicate
    return out


def _lock_sequences(cur: psycopg.Cursor[tuple[object, ...]], nodes: list[str]) -> dict[str, SeqState]:
    """Lock the burst's nodes (in key order: no deadlock between replicas) and read their epochs.

    One statement: ``unnest`` yields the sorted keys in array order, so the locks are taken in it.
    """
    cur.execute("SELECT pg_advisory_xact_lock(%s, k) FROM unnest(%s::int[]) WITH ORDINALITY AS u(k, o) "
                "ORDER BY o", (_SEQ_LOCK_CLASS, sorted({_lock_key(n) for n in nodes})))
    cur.execute("SELECT node, epoch, first_seq, last_seq, gaps FROM sequences WHERE node = ANY(%s)", (nodes,))
    return {str(n): SeqState(int(e), int(f), int(la), int(g))  # type: ignore[call-overload]
            for n, e, f, la, g in cur.fetchall()}


def _advance_sequences(
    cur: psycopg.Cursor[tuple[object, ...]],
    items: Sequence[tuple[wire.SummaryBatch, float, int]],
    new: list[bool],
    states: dict[str, SeqState],
) -> None:
    """Give the burst's new batches their epochs (``seq_epochs.advance``) and store the nodes' state.

    ``states`` holds the locked nodes' epochs from before the burst and is moved
    on in place. Only batches whose epoch differs from the provisional one they
    were inserted with are updated (a reset and what follows it in the burst).
    Whether a number was used in an epoch is asked of this burst's new batches
    first (their rows carry the provisional epoch), then of the rows stored before.
    """
    provisional = {node: st.epoch for node, st in states.items()}
    new_ids: dict[str, list[str]] = {}
    for (b, _, _), is_new in zip(items, new, strict=True):
        if is_new:
            new_ids.setdefault(b.node, []).append(b.id)
    seen: set[tuple[str, int, int]] = set()  # (node, epoch, seq) of this burst's new batches so far
    moved: list[tuple[int, str, str]] = []  # (epoch, node, id)
    started: list[tuple[str, int, int, int, float]] = []  # epochs rows
    for (b, received, _), is_new in zip(items, new, strict=True):
        if not is_new:
            continue
        st = states.get(b.node)
        if st is None:
            st = states[b.node] = SeqState(0, b.seq, b.seq, 0)
            provisional[b.node] = 0
        else:

            def used(seq: int, epoch: int, node: str = b.node) -> bool:
                if (node, epoch, seq) in seen:
                    return True
                cur.execute("SELECT 1 FROM batches WHERE node = %s AND seq = %s AND epoch = %s "
                            "AND NOT (id = ANY(%s)) LIMIT 1", (node, seq, epoch, new_ids[node]))
                return cur.fetchone() is not None

            previous = advance(st, b.seq, used)
            if previous is not None:
                started.append((b.node, st.epoch, b.seq, previous, received))
            if st.epoch != provisional[b.node]:
                moved.append((st.epoch, b.node, b.id))
        seen.add((b.node, st.epoch, b.seq))
    if moved:
        cur.executemany("UPDATE batches SET epoch = %s WHERE node = %s AND id = %s", moved)
    if started:
        cur.executemany("INSERT INTO epochs VALUES (%s, %s, %s, %s, %s)", started)
    if new_ids:
        rows = [(n, st.epoch, st.first, st.last, st.gaps) for n, st in sorted(states.items()) if n in new_ids]
        cur.execute(
            "INSERT INTO sequences SELECT * FROM unnest(%s::text[], %s::bigint[], %s::bigint[], "
            "%s::bigint[], %s::bigint[]) ON CONFLICT (node) DO UPDATE SET "
            "epoch = excluded.epoch, first_seq = excluded.first_seq, last_seq = excluded.last_seq, "
            "gaps = excluded.gaps",
            tuple(list(col) for col in zip(*rows, strict=True)),
        )
