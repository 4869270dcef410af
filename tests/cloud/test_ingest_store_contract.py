"""One contract for the ingest stores, run against both backends (SQLite files, a real PostgreSQL)."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from cloud_controller.ingest.contracts import FleetRecords, HardExampleStoreProtocol, SummaryStoreProtocol
from cloud_controller.ingest.fleet import DesiredRecord, Fleet, SqliteFleetRecords
from cloud_controller.ingest.hard_examples import HardExampleStore
from cloud_controller.ingest.pg_fleet import PgFleetRecords
from cloud_controller.ingest.pg_hard_examples import PgHardExampleStore
from cloud_controller.ingest.pg_summaries import PgSummaryStore
from cloud_controller.ingest.summaries import SummaryStore
from edge_agent.protocol import messages as wire


@dataclass
class Backend:
    name: str
    summaries: Callable[[], SummaryStoreProtocol]
    hard_examples: Callable[[], HardExampleStoreProtocol]
    fleet_records: Callable[[], FleetRecords]


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    if request.param == "sqlite":
        yield Backend(
            "sqlite",
            lambda: SummaryStore(tmp_path / "summaries.db"),
            lambda: HardExampleStore(tmp_path / "hard.db"),
            lambda: SqliteFleetRecords(tmp_path / "fleet.db"),
        )
        return
    dsn = request.getfixturevalue("postgres_dsn")
    yield Backend("postgres", lambda: PgSummaryStore(dsn), lambda: PgHardExampleStore(dsn),
                  lambda: PgFleetRecords(dsn))


def window(count: int) -> wire.WindowSummary:
    return wire.WindowSummary(device="d1", metric="temp", start=1.0, end=2.0, count=count, min=0.0, max=1.0,
                              mean=0.5, std=0.1, first=0.0, last=1.0, slope=0.0)


def batch(node: str, bid: str, seq: int, counts: tuple[int, ...] = (3,)) -> wire.SummaryBatch:
    return wire.SummaryBatch(id=bid, node=node, seq=seq, created=100.0, windows=[window(c) for c in counts])


def example(node: str, eid: str, task: str = "chat", conf: float = 0.9, text: str = "hi") -> wire.HardExample:
    return wire.HardExample(id=eid, node=node, created=50.0, task=task, text=text,  # type: ignore[arg-type]
                            student={"intent": "x"}, teacher={"intent": "lights_on", "confidence": conf})


# --------------------------------------------------------------------------- summaries


def test_summaries_add_dedup_and_totals(backend: Backend) -> None:
    store = backend.summaries()
    store.open()
    try:
        first = store.add_many([(batch("n1", "batch-0001", 0, (3, 2)), 10.0, 100),
                                (batch("n1", "batch-0002", 1), 10.0, 50),
                                (batch("n1", "batch-0002", 1), 10.0, 50)])  # repeated inside the burst
        assert first == [True, True, False]
        assert store.add_many([(batch("n1", "batch-0001", 0), 11.0, 100),  # redelivery
                               (batch("n1", "batch-0004", 3), 11.0, 70)]) == [False, True]
        assert store.add_many([]) == []
        (t,) = store.totals()
        assert (t.node, t.batches, t.readings, t.windows, t.bytes, t.duplicates) == ("n1", 3, 11, 4, 220, 2)
        assert (t.first_seq, t.last_seq, t.seq_gaps) == (0, 3, 1)
    finally:
        store.close()


def test_same_id_from_two_nodes_counts_for_both(backend: Backend) -> None:
    store = backend.summaries()
    store.open()
    try:
        assert store.add_many([(batch("n1", "batch-0001", 0), 1.0, 10)]) == [True]
        assert store.add_many([(batch("n2", "batch-0001", 0), 1.0, 10)]) == [True]
        assert [(t.node, t.batches, t.duplicates) for t in store.totals()] == [("n1", 1, 0), ("n2", 1, 0)]
    finally:
        store.close()


def test_rejects_are_counted_by_reason(backend: Backend) -> None:
    store = backend.summaries()
    store.open()
    try:
        store.reject("node_mismatch", "a")
        store.reject("node_mismatch", "b" * 1000)
        store.reject("bad_topic")
        assert store.rejects() == {"bad_topic": 1, "node_mismatch": 2}
    finally:
        store.close()


def test_summaries_survive_reopen(backend: Backend) -> None:
    store = backend.summaries()
    store.open()
    store.add_many([(batch("n1", "batch-0001", 0), 1.0, 10)])
    store.close()
    again = backend.summaries()
    again.open()
    try:
        assert again.add_many([(batch("n1", "batch-0001", 0), 2.0, 10)]) == [False]
        assert [(t.batches, t.duplicates) for t in again.totals()] == [(1, 1)]
    finally:
        again.close()


# --------------------------------------------------------------------------- hard examples


def test_hard_examples_dedup_per_node(backend: Backend) -> None:
    store = backend.hard_examples()
    store.open()
    try:
        assert store.add_many([(example("n1", "ex-1"), 10.0), (example("n1", "ex-1"), 10.0)]) == [True, False]
        assert store.add_many([(example("n2", "ex-1"), 11.0)]) == [True]  # same id, another node
        assert store.add_many([(example("n1", "ex-1"), 12.0)]) == [False]
        assert store.count() == 2
        assert store.count("chat") == 2 and store.count("sensor") == 0
        assert store.counts() == {"by_task": {"chat": 2}, "by_node": {"n1": 1, "n2": 1},
                                  "duplicates": {"n1": 2}}
    finally:
        store.close()


def test_hard_examples_since_filters_and_caps(backend: Backend) -> None:
    store = backend.hard_examples()
    store.open()
    try:
        store.add_many([(example("n1", f"ex-{i}", conf=0.5 + i / 10), 10.0 + i) for i in range(5)])
        store.add_many([(wire.HardExample(id="unlabelled", node="n1", created=1.0, task="sensor",
                                          features=[1.0, 2.0]), 12.0)])
        rows = store.since(11.0, "chat")
        assert [r.id for r in rows] == ["ex-1", "ex-2", "ex-3", "ex-4"]
        assert rows[0].label == "lights_on" and rows[0].text == "hi" and rows[0].student == {"intent": "x"}
        assert [r.id for r in store.since(None, "chat", min_confidence=0.75)] == ["ex-3", "ex-4"]
        assert [r.id for r in store.since(None, "chat", limit=2)] == ["ex-3", "ex-4"]
        assert store.since(None, "sensor") == []  # unlabelled rows are never returned
        assert store.prune(12.0) == 2
        assert store.count() == 4
    finally:
        store.close()


# --------------------------------------------------------------------------- fleet


def test_fleet_persists_statuses_and_desired(backend: Backend) -> None:
    fleet = Fleet(None, records=backend.fleet_records()).open()
    fleet.observe_status(wire.Status(node="n1", online=True, ts=5.0, applied_generation=3), 20.0)
    fleet.observe_status(wire.Status(node="n2", online=False, ts=5.0), 21.0)
    assert fleet.flush() == 2
    fleet.save_desired(DesiredRecord("n1", 4, "h", "p", "ph", 2, {"chat": "m@1"}, 30.0))
    fleet.save_desired(DesiredRecord("n2", 1, "h2", None, None, 0, {}, 31.0))
    fleet.delete_desired("n2")
    fleet.close()

    again = Fleet(None, records=backend.fleet_records()).open()
    try:
        n1 = again.get("n1")
        assert n1 is not None and n1.status is not None and n1.applied_generation == 3
        assert n1.last_seen == 20.0
        assert sorted(again.names()) == ["n1", "n2"]
        rec = again.desired("n1")
        assert rec is not None
        assert (rec.generation, rec.models, rec.pipeline_since_gen) == (4, {"chat": "m@1"}, 2)
        assert again.desired("n2") is None
    finally:
        again.close()


# --------------------------------------------------------------------------- SQLite files from before


def test_sqlite_file_from_before_versioning_is_migrated(tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / "summaries.db")
    db.executescript(
        """
        CREATE TABLE batches (id TEXT PRIMARY KEY, node TEXT NOT NULL, seq INTEGER NOT NULL,
            readings INTEGER NOT NULL, windows INTEGER NOT NULL, bytes INTEGER NOT NULL,
            created REAL NOT NULL, received REAL NOT NULL);
        CREATE TABLE duplicates (node TEXT PRIMARY KEY, count INTEGER NOT NULL);
        CREATE TABLE rejects (reason TEXT PRIMARY KEY, count INTEGER NOT NULL, last_detail TEXT);
        INSERT INTO batches VALUES ('batch-0001', 'n1', 0, 5, 1, 10, 1.0, 2.0);
        INSERT INTO duplicates VALUES ('n1', 4);
        """
    )
    db.commit()
    db.close()
    with SummaryStore(tmp_path / "summaries.db") as store:
        again = [(batch("n1", "batch-0001", 0), 3.0, 10), (batch("n2", "batch-0001", 0), 3.0, 10)]
        assert store.add_many(again) == [False, True]
        assert [(t.node, t.batches, t.readings, t.duplicates) for t in store.totals()] == [
            ("n1", 1, 5, 5), ("n2", 1, 3, 0)]
    with SummaryStore(tmp_path / "summaries.db") as store:  # a second open finds the current version
        assert len(store.totals()) == 2
