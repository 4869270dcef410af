"""The summaries store on PostgreSQL: the cluster's ``SummaryStoreProtocol``.

Same tables, key and totals as the SQLite store (``ingest/summaries.py``), so
replicas sharing one database count a batch once whichever replica the broker
gave it to, and a restarted pod forgets nothing. ``INSERT ... ON CONFLICT DO
NOTHING`` with ``RETURNING`` tells new from duplicate per row, also when two
replicas insert the same (node, id) at once (the second waits for the first's
commit, then finds the row). The burst's inserts are pipelined in one
``executemany``; duplicate counters are bumped in node order so two replicas'
transactions cannot deadlock on them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import psycopg

from cloud_controller.ingest.contracts import NodeTotals
from cloud_controller.ingest.pg_db import PgDatabase
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
)

Conn = psycopg.Connection[tuple[object, ...]]


class PgSummaryStore:
    def __init__(self, dsn: str, **kw: float) -> None:
        self.pg = PgDatabase(dsn, "summaries", _MIGRATIONS, **kw)

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
        params = [
            (b.node, b.id, b.seq, b.readings, len(b.windows), nbytes, b.created, received)
            for b, received, nbytes in items
        ]

        def body(conn: Conn) -> list[bool]:
            out: list[bool] = []
            with conn.cursor() as cur:
                cur.executemany(
                    f"INSERT INTO batches ({BATCH_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s, %s, %s) "
                    "ON CONFLICT (node, id) DO NOTHING RETURNING 1",
                    params,
                    returning=True,
                )
                while True:
                    out.append(cur.fetchone() is not None)
                    if not cur.nextset():
                        break
                dups = Counter(b.node for (b, _, _), new in zip(items, out, strict=True) if not new)
                if dups:
                    cur.executemany(
                        "INSERT INTO duplicates VALUES (%s, %s) "
                        "ON CONFLICT (node) DO UPDATE SET count = duplicates.count + excluded.count",
                        sorted(dups.items()),
                    )
            return out

        return self.pg.transaction(body) if params else []

    def reject(self, reason: str, detail: str = "") -> None:
        self.pg.transaction(
            lambda conn: conn.execute(
                "INSERT INTO rejects VALUES (%s, 1, %s) ON CONFLICT (reason) DO UPDATE SET "
                "count = rejects.count + 1, last_detail = excluded.last_detail",
                (reason, detail[:500]),
            )
        )

    def rejects(self) -> dict[str, int]:
        rows = self.pg.transaction(
            lambda conn: conn.execute("SELECT reason, count FROM rejects ORDER BY reason").fetchall()
        )
        return {str(r): int(n) for r, n in rows}  # type: ignore[call-overload]

    def totals(self) -> list[NodeTotals]:
        return totals_from_rows(self.pg.transaction(lambda conn: conn.execute(TOTALS_SQL).fetchall()))
