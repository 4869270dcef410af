"""The fleet cache's records on PostgreSQL: the cluster's ``FleetRecords``.

Every replica receives every status (statuses are not on the shared
subscription), so replicas upsert the same rows; the last writer wins, which is
right for "the latest status". Desired-state records are written by the leader
only; a new leader loads them and keeps numbering generations where the old
one stopped.
"""

from __future__ import annotations

from collections.abc import Sequence

import psycopg

from cloud_controller.ingest.contracts import DesiredRow, StatusRow
from cloud_controller.ingest.pg_db import PgDatabase

__all__ = ["PgFleetRecords"]

Conn = psycopg.Connection[tuple[object, ...]]

_MIGRATIONS = (
    """
    CREATE TABLE fleet_status (
        node TEXT PRIMARY KEY, payload TEXT NOT NULL,
        received DOUBLE PRECISION NOT NULL, last_seen DOUBLE PRECISION NOT NULL
    );
    CREATE TABLE fleet_desired (
        node TEXT PRIMARY KEY, generation BIGINT NOT NULL, content_hash TEXT NOT NULL,
        pipeline_name TEXT, pipeline_hash TEXT, pipeline_since_gen BIGINT NOT NULL,
        models TEXT NOT NULL, published DOUBLE PRECISION NOT NULL
    )
    """,
)


class PgFleetRecords:
    def __init__(self, dsn: str, **kw: float) -> None:
        self.pg = PgDatabase(dsn, "fleet", _MIGRATIONS, **kw)

    def load(self) -> tuple[list[StatusRow], list[DesiredRow]]:
        self.pg.open()
        statuses = self.pg.transaction(
            lambda conn: conn.execute(
                "SELECT node, payload, received, last_seen FROM fleet_status"
            ).fetchall()
        )
        desired = self.pg.transaction(
            lambda conn: conn.execute(
                "SELECT node, generation, content_hash, pipeline_name, pipeline_hash, pipeline_since_gen, "
                "models, published FROM fleet_desired"
            ).fetchall()
        )
        return statuses, desired  # type: ignore[return-value]

    def save_statuses(self, rows: Sequence[StatusRow]) -> None:
        if not rows:
            return

        def body(conn: Conn) -> None:
            with conn.cursor() as cur:
                cur.executemany(
                    "INSERT INTO fleet_status VALUES (%s, %s, %s, %s) ON CONFLICT (node) DO UPDATE SET "
                    "payload = excluded.payload, received = excluded.received, "
                    "last_seen = GREATEST(fleet_status.last_seen, excluded.last_seen)",
                    sorted(rows),
                )

        self.pg.transaction(body)

    def save_desired(self, row: DesiredRow) -> None:
        self.pg.transaction(
            lambda conn: conn.execute(
                "INSERT INTO fleet_desired VALUES (%s, %s, %s, %s, %s, %s, %s, %s) "
                "ON CONFLICT (node) DO UPDATE SET generation = excluded.generation, "
                "content_hash = excluded.content_hash, "
                "pipeline_name = excluded.pipeline_name, pipeline_hash = excluded.pipeline_hash, "
                "pipeline_since_gen = excluded.pipeline_since_gen, models = excluded.models, "
                "published = excluded.published",
                row,
            )
        )

    def delete_desired(self, node: str) -> None:
        self.pg.transaction(lambda conn: conn.execute("DELETE FROM fleet_desired WHERE node = %s", (node,)))

    def close(self) -> None:
        self.pg.close()
