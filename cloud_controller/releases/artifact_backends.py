"""Which backend holds the model artifacts: files under a directory, or the shared PostgreSQL.

The same rule as the ingest stores (``ingest/backends.py``): ``store_dsn`` set
means a cluster, and a cluster keeps releases in PostgreSQL so that no replica's
disk holds something another replica or a restarted pod needs; unset, the
embedded default stays a directory (``artifacts_dir``, else ``{data_dir}/artifacts``).
"""

from __future__ import annotations

from pathlib import Path

from cloud_controller.ingest.pg_db import is_postgres_dsn
from cloud_controller.releases.artifacts import DEFAULT_CHUNK_SIZE, ArtifactStore, ReleaseStore
from cloud_controller.releases.pg_artifacts import PgArtifactStore

__all__ = ["open_artifact_store"]


def open_artifact_store(
    root: Path, dsn: str | None = None, chunk_size: int = DEFAULT_CHUNK_SIZE
) -> ReleaseStore:
    """The artifact store for ``dsn``, or files under ``root``; connects lazily (first call)."""
    if dsn:
        if not is_postgres_dsn(dsn):
            raise ValueError("store_dsn must start with postgresql:// (unset: files under artifacts_dir)")
        return PgArtifactStore(dsn, chunk_size)
    return ArtifactStore(root, chunk_size)
