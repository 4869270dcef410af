"""Model artifacts in the shared PostgreSQL: blobs as chunked ``bytea`` rows, release refs as rows.

Why in the database rather than on a volume: a cluster controller keeps no
state on its pod's disk (``docs/cluster.md``), the replica that publishes a
release may not be the one that built it, and the store is already there with
backups and one DSN. Bundles are a few MB: a blob is split into ``part_size``
rows (1 MiB by default) so no single value nears PostgreSQL's 1 GB field limit
and a read streams part by part; a blob and its parts are written in one
transaction, so a crash never leaves half a blob under a valid name, and every
read checks the sha256 (and size) of what came back.

A release ref is inserted once (``ON CONFLICT DO NOTHING``): two replicas
releasing the same name and version race there, the first wins, and the
loser gets the immutability error unless its manifest is byte-identical.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import psycopg

from cloud_controller.ingest.pg_db import PgDatabase
from cloud_controller.releases.artifacts import DEFAULT_CHUNK_SIZE, ArtifactError, ReleaseStore

__all__ = ["PgArtifactStore"]

DEFAULT_PART_SIZE = 1024 * 1024

_MIGRATIONS = (
    """
    CREATE TABLE artifact_blobs (
        sha256 TEXT PRIMARY KEY,
        size BIGINT NOT NULL,
        parts INTEGER NOT NULL
    );
    CREATE TABLE artifact_parts (
        sha256 TEXT NOT NULL REFERENCES artifact_blobs (sha256) ON DELETE CASCADE,
        idx INTEGER NOT NULL,
        data BYTEA NOT NULL,
        PRIMARY KEY (sha256, idx)
    );
    CREATE TABLE artifact_releases (
        name TEXT NOT NULL,
        version TEXT NOT NULL,
        digest TEXT NOT NULL,
        PRIMARY KEY (name, version)
    )
    """,
)

Conn = psycopg.Connection[tuple[object, ...]]


def _hex(digest: str) -> str:
    return digest.removeprefix("sha256:")


class PgArtifactStore(ReleaseStore):
    def __init__(self, dsn: str, chunk_size: int = DEFAULT_CHUNK_SIZE, *,
                 part_size: int = DEFAULT_PART_SIZE, **kw: float) -> None:
        self.pg = PgDatabase(dsn, "artifacts", _MIGRATIONS, **kw)
        self.chunk_size = chunk_size
        self.part_size = part_size

    def open(self) -> PgArtifactStore:
        self.pg.open()
        return self

    def close(self) -> None:
        self.pg.close()

    def release_uri(self, name: str, version: str) -> str:
        # Host, port and database only: never the password of the DSN.
        return f"postgresql://{self.pg.where}#releases/{name}/{version}"

    # ------------------------------------------------------------------ blobs

    def put_blob(self, data: bytes) -> str:
        hexdigest = hashlib.sha256(data).hexdigest()
        step = self.part_size
        parts = [(hexdigest, i, data[off : off + step]) for i, off in enumerate(range(0, len(data), step))]

        def body(conn: Conn) -> None:
            new = conn.execute(
                "INSERT INTO artifact_blobs VALUES (%s, %s, %s) ON CONFLICT (sha256) DO NOTHING RETURNING 1",
                (hexdigest, len(data), len(parts)),
            ).fetchone()
            if new is not None and parts:
                with conn.cursor() as cur:
                    cur.executemany("INSERT INTO artifact_parts VALUES (%s, %s, %s)", parts)

        self.pg.transaction(body)
        return hexdigest

    def get_blob(self, hexdigest: str) -> bytes:
        want = _hex(hexdigest)

        def body(conn: Conn) -> tuple[tuple[object, ...] | None, list[tuple[object, ...]]]:
            head = conn.execute(
                "SELECT size, parts FROM artifact_blobs WHERE sha256 = %s", (want,)
            ).fetchone()
            rows = conn.execute(
                "SELECT data FROM artifact_parts WHERE sha256 = %s ORDER BY idx", (want,)
            ).fetchall()
            return head, rows

        head, rows = self.pg.transaction(body)
        if head is None:
            raise ArtifactError(f"blob {hexdigest} missing from the store at {self.pg.where}")
        data = b"".join(bytes(r[0]) for r in rows)  # type: ignore[call-overload]
        size, nparts = int(head[0]), int(head[1])  # type: ignore[call-overload]
        if len(rows) != nparts or len(data) != size or hashlib.sha256(data).hexdigest() != want:
            raise ArtifactError(f"blob {hexdigest} is corrupt in the store at {self.pg.where}")
        return data

    def _blob_hexes(self) -> Iterable[str]:
        rows = self.pg.transaction(lambda c: c.execute("SELECT sha256 FROM artifact_blobs").fetchall())
        return [str(r[0]) for r in rows]

    def _delete_blob(self, hexdigest: str) -> None:
        self.pg.transaction(lambda c: c.execute("DELETE FROM artifact_blobs WHERE sha256 = %s",
                                                (_hex(hexdigest),)))

    # ------------------------------------------------------------------ refs

    def _read_ref(self, name: str, version: str) -> str | None:
        row = self.pg.transaction(lambda c: c.execute(
            "SELECT digest FROM artifact_releases WHERE name = %s AND version = %s", (name, version)
        ).fetchone())
        return None if row is None else str(row[0])

    def _claim_ref(self, name: str, version: str, digest: str) -> str:
        def body(conn: Conn) -> str:
            conn.execute("INSERT INTO artifact_releases VALUES (%s, %s, %s) ON CONFLICT DO NOTHING",
                         (name, version, digest))
            row = conn.execute("SELECT digest FROM artifact_releases WHERE name = %s AND version = %s",
                               (name, version)).fetchone()
            assert row is not None
            return str(row[0])

        return self.pg.transaction(body)

    def _delete_ref(self, name: str, version: str) -> None:
        self.pg.transaction(lambda c: c.execute(
            "DELETE FROM artifact_releases WHERE name = %s AND version = %s", (name, version)))

    def _versions(self, name: str) -> list[str]:
        rows = self.pg.transaction(lambda c: c.execute(
            "SELECT version FROM artifact_releases WHERE name = %s", (name,)).fetchall())
        return [str(r[0]) for r in rows]

    def _all_refs(self) -> list[str]:
        rows = self.pg.transaction(lambda c: c.execute("SELECT digest FROM artifact_releases").fetchall())
        return [str(r[0]) for r in rows]
