"""Hard examples on PostgreSQL: the cluster's ``HardExampleStoreProtocol``.

The rows are the SQLite store's (``ingest/hard_example_rows.py`` builds and reads
them for both), keyed on (node, id), so every replica ingests into one table and a
DistillationJob started by the leader sees what any replica stored.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import psycopg

from cloud_controller.ingest.contracts import StoredHardExample
from cloud_controller.ingest.hard_example_rows import example_row, since_query, stored_example
from cloud_controller.ingest.pg_db import PgDatabase
from edge_agent.protocol import messages as wire

__all__ = ["PgHardExampleStore"]

_MIGRATIONS = (
    """
    CREATE TABLE hard_examples (
        id TEXT NOT NULL,
        received DOUBLE PRECISION NOT NULL,
        created DOUBLE PRECISION NOT NULL,
        node TEXT NOT NULL,
        task TEXT NOT NULL,
        text TEXT,
        features TEXT,
        label TEXT,
        confidence DOUBLE PRECISION,
        teacher TEXT,
        student TEXT NOT NULL,
        PRIMARY KEY (node, id)
    );
    CREATE INDEX hard_examples_task_received ON hard_examples (task, received);
    CREATE TABLE hard_example_duplicates (node TEXT PRIMARY KEY, count BIGINT NOT NULL)
    """,
)

Conn = psycopg.Connection[tuple[object, ...]]


class PgHardExampleStore:
    def __init__(self, dsn: str, **kw: float) -> None:
        self.pg = PgDatabase(dsn, "hard_examples", _MIGRATIONS, **kw)

    def open(self) -> PgHardExampleStore:
        self.pg.open()
        return self

    def close(self) -> None:
        self.pg.close()

    def __enter__(self) -> PgHardExampleStore:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def add_many(self, items: Sequence[tuple[wire.HardExample, float]]) -> list[bool]:
        params = [example_row(ex, received) for ex, received in items]

        def body(conn: Conn) -> list[bool]:
            out: list[bool] = []
            with conn.cursor() as cur:
                cur.executemany(
                    "INSERT INTO hard_examples VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) "
                    "ON CONFLICT (node, id) DO NOTHING RETURNING 1",
                    params,
                    returning=True,
                )
                while True:
                    out.append(cur.fetchone() is not None)
                    if not cur.nextset():
                        break
                dups = Counter(ex.node for (ex, _), new in zip(items, out, strict=True) if not new)
                if dups:
                    cur.executemany(
                        "INSERT INTO hard_example_duplicates VALUES (%s, %s) ON CONFLICT (node) "
                        "DO UPDATE SET count = hard_example_duplicates.count + excluded.count",
                        sorted(dups.items()),
                    )
            return out

        return self.pg.transaction(body) if params else []

    def prune(self, older_than: float) -> int:
        def body(conn: Conn) -> int:
            return conn.execute("DELETE FROM hard_examples WHERE received < %s", (older_than,)).rowcount

        return self.pg.transaction(body)

    def since(
        self,
        ts: float | None,
        task: str,
        min_confidence: float | None = None,
        limit: int | None = None,
    ) -> list[StoredHardExample]:
        """What the SQLite store's ``since`` returns (same filter, same order, same cap)."""
        sql, args = since_query(ts, task, min_confidence, limit, "%s")
        rows = self.pg.transaction(lambda conn: conn.execute(sql.encode(), args).fetchall())
        return [stored_example(r) for r in reversed(rows)]

    def count(self, task: str | None = None) -> int:
        def body(conn: Conn) -> int:
            if task is None:
                row = conn.execute("SELECT COUNT(*) FROM hard_examples").fetchone()
            else:
                row = conn.execute("SELECT COUNT(*) FROM hard_examples WHERE task = %s", (task,)).fetchone()
            return int(row[0]) if row is not None else 0  # type: ignore[call-overload]

        return self.pg.transaction(body)

    def counts(self) -> dict[str, dict[str, int]]:
        def body(conn: Conn) -> dict[str, dict[str, int]]:
            def pairs(sql: str) -> dict[str, int]:
                return {str(k): int(v) for k, v in conn.execute(sql.encode()).fetchall()}  # type: ignore[call-overload]

            return {
                "by_task": pairs("SELECT task, COUNT(*) FROM hard_examples GROUP BY task"),
                "by_node": pairs("SELECT node, COUNT(*) FROM hard_examples GROUP BY node"),
                "duplicates": pairs("SELECT node, count FROM hard_example_duplicates"),
            }

        return self.pg.transaction(body)
