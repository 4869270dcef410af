"""What only the PostgreSQL backend has to get right: racing migrations, connect errors, lost connections."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

import psycopg
import pytest

from cloud_controller.ingest.contracts import StoreConnectError, StoreUnavailable
from cloud_controller.ingest.fleet import Fleet
from cloud_controller.ingest.loop import Ingest, IngestConfig
from cloud_controller.ingest.pg_summaries import _MIGRATIONS, PgSummaryStore
from cloud_controller.ingest.summaries import SummaryStore
from edge_agent.protocol import messages as wire
from edge_agent.protocol import topics
from edgeloop_sim.harness.postgres import PostgresServer
from tests.cloud.test_ingest_store_contract import batch


def test_two_replicas_migrate_at_once(postgres_dsn: str) -> None:
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def start() -> None:
        try:
            barrier.wait()
            with PgSummaryStore(postgres_dsn) as store:
                store.totals()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with psycopg.connect(postgres_dsn) as conn:
        assert conn.execute("SELECT component, version FROM schema_version").fetchall() == [("summaries", 2)]


def test_database_from_before_epochs_is_migrated(postgres_dsn: str) -> None:
    """Version 1 (no epochs): its batches become epoch 0, and a number used again starts epoch 1."""
    with psycopg.connect(postgres_dsn) as conn:
        conn.execute(_MIGRATIONS[0])
        conn.execute("CREATE TABLE schema_version (component TEXT PRIMARY KEY, version INTEGER NOT NULL)")
        conn.execute("INSERT INTO schema_version VALUES ('summaries', 1)")
        conn.execute("INSERT INTO batches VALUES ('n1', 'batch-0001', 0, 1, 0, 10, 1.0, 1.0), "
                     "('n1', 'batch-0002', 1, 1, 0, 10, 1.0, 1.0), "
                     "('n1', 'batch-0004', 3, 1, 0, 10, 1.0, 1.0)")
    with PgSummaryStore(postgres_dsn) as store:
        seq = store.sequence("n1")
        assert seq is not None and (seq.epoch, seq.first, seq.last, seq.gaps) == (0, 0, 3, 1)
        assert store.add_many([(batch("n1", "batch-0005", 0), 2.0, 10)]) == [True]
        (n1,) = store.totals()
        assert (n1.batches, n1.resets, n1.first_seq, n1.last_seq, n1.seq_gaps) == (4, 1, 0, 0, 1)


def test_two_replicas_agree_on_one_reset(postgres_dsn: str) -> None:
    """Two stores (two replicas) storing one node's batches: the second sees the first's numbers."""
    with PgSummaryStore(postgres_dsn) as a, PgSummaryStore(postgres_dsn) as b:
        assert a.add_many([(batch("n1", f"batch-a-{i:04d}", i), 1.0, 10) for i in range(3)]) == [True] * 3
        assert b.add_many([(batch("n1", "batch-b-0000", 3), 1.0, 10)]) == [True]  # continues epoch 0
        assert a.add_many([(batch("n1", "batch-a-0009", 1), 1.0, 10)]) == [True]  # 1 used: a reset
        assert b.add_many([(batch("n1", "batch-b-0001", 2), 1.0, 10)]) == [True]  # in a's new epoch
        seq = b.sequence("n1")
        assert seq is not None and (seq.epoch, seq.first, seq.last, seq.gaps) == (1, 1, 2, 0)
        (n1,) = a.totals()
        assert (n1.batches, n1.resets, n1.first_seq, n1.last_seq, n1.seq_gaps) == (6, 1, 1, 2, 0)


def test_refused_connection_is_transient_and_names_the_host() -> None:
    store = PgSummaryStore("postgresql://postgres@127.0.0.1:1/postgres", connect_for_s=0.3)
    with pytest.raises(StoreConnectError) as info:
        store.open()
    assert not info.value.permanent
    assert "127.0.0.1:1" in str(info.value) and "refused" in str(info.value).lower()


def test_unknown_database_is_permanent(postgres_server: PostgresServer) -> None:
    dsn = f"postgresql://postgres@127.0.0.1:{postgres_server.port}/nosuchdb"
    store = PgSummaryStore(dsn, connect_for_s=30)
    with pytest.raises(StoreConnectError) as info:
        store.open()  # no 30 s of retries: a permanent error is raised at once
    assert info.value.permanent and "nosuchdb" in str(info.value)


def test_lost_connection_is_retried_without_losing_the_write(postgres_dsn: str) -> None:
    with PgSummaryStore(postgres_dsn) as store:
        assert store.add_many([(batch("n1", "batch-0001", 0), 1.0, 10)]) == [True]
        with psycopg.connect(postgres_dsn, autocommit=True) as admin:  # the server drops our session
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                          "WHERE datname = current_database() AND pid <> pg_backend_pid()")
        assert store.add_many([(batch("n1", "batch-0002", 1), 1.0, 10)]) == [True]
        assert [(t.batches, t.duplicates) for t in store.totals()] == [(2, 0)]


class _FlakySummaries(SummaryStore):
    """The SQLite store, unavailable for the first ``fail`` commits."""

    def __init__(self, path: Path, fail: int) -> None:
        super().__init__(path)
        self.fail = fail

    def add_many(self, items: Sequence[tuple[wire.SummaryBatch, float, int]]) -> list[bool]:
        if self.fail:
            self.fail -= 1
            raise StoreUnavailable("store at db:5432: connection refused")
        return super().add_many(items)


class _Msg:
    def __init__(self, topic: str, payload: bytes) -> None:
        self.topic, self.payload = topic, payload


async def test_ingest_keeps_a_burst_until_the_store_commits(tmp_path: Path) -> None:
    store = _FlakySummaries(tmp_path / "s.db", fail=2)
    ingest = Ingest(IngestConfig(db_path=tmp_path / "unused.db"), None, Fleet(None), summaries=store)
    burst = [_Msg(topics.summaries("n1"), wire.encode_summary(batch("n1", "batch-0001", 0))),
             _Msg(topics.summaries("n1"), b"{not json")]
    await asyncio.wait_for(ingest._process_until_stored(burst), 10)  # type: ignore[arg-type]
    assert store.fail == 0
    assert ingest.stats.summaries_stored == 1 and ingest.stats.messages == 2
    st = ingest.fleet.get("n1")
    assert st is not None and st.batches == 1  # counted once although stored on the third try
    assert store.rejects() == {"malformed_payload": 1}  # written once, after the commit that succeeded


def test_controller_with_a_dsn_that_cannot_connect_says_why(postgres_server: PostgresServer,
                                                            tmp_path: Path) -> None:
    env = dict(os.environ, EDGELOOP_STORE_DSN=f"postgresql://postgres@127.0.0.1:{postgres_server.port}/nosuch")
    cmd = [sys.executable, "-m", "cloud_controller.cli", "run", "--store", str(tmp_path / "r.db"),
           "--http-port", "0"]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert f"127.0.0.1:{postgres_server.port}/nosuch (permanent)" in r.stderr
    assert 'database "nosuch" does not exist' in r.stderr and "Traceback" not in r.stderr
