"""Which backend holds the ingest state: SQLite files under ``data_dir``, or the shared PostgreSQL.

``store_dsn`` (``EDGELOOP_STORE_DSN``) starting with ``postgresql://`` selects
PostgreSQL: what replicas of a cluster controller need, since each replica's own
files would dedup separately and die with the pod. Unset, the embedded default
stays: one SQLite file per store under ``data_dir``, as always.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cloud_controller.ingest.contracts import HardExampleStoreProtocol, SummaryStoreProtocol
from cloud_controller.ingest.fleet import Fleet
from cloud_controller.ingest.hard_examples import HardExampleStore
from cloud_controller.ingest.pg_db import is_postgres_dsn
from cloud_controller.ingest.pg_fleet import PgFleetRecords
from cloud_controller.ingest.pg_hard_examples import PgHardExampleStore
from cloud_controller.ingest.pg_summaries import PgSummaryStore
from cloud_controller.ingest.summaries import SummaryStore

__all__ = ["IngestStores", "open_ingest_stores"]


@dataclass
class IngestStores:
    summaries: SummaryStoreProtocol
    hard_examples: HardExampleStoreProtocol
    fleet: Fleet


def open_ingest_stores(data_dir: Path, dsn: str | None = None) -> IngestStores:
    """Build (not connect: stores open lazily) the three stores for ``dsn``, or SQLite under ``data_dir``."""
    if dsn:
        if not is_postgres_dsn(dsn):
            raise ValueError("store_dsn must start with postgresql:// (unset: SQLite files under data_dir)")
        return IngestStores(
            PgSummaryStore(dsn), PgHardExampleStore(dsn), Fleet(None, records=PgFleetRecords(dsn))
        )
    return IngestStores(
        SummaryStore(data_dir / "summaries.db"),
        HardExampleStore(data_dir / "hard_examples.db"),
        Fleet(data_dir / "fleet.db"),
    )
