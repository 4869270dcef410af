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


def test_rejects_many_in_one_call(backend: Backend) -> None:
    store = backend.summaries()
    store.open()
    try:
        store.reject_many([])
        store.reject_many([("hard_example_empty_text", "x"), ("malformed_payload", "y"),
                           ("hard_example_empty_text", "z")])
        store.reject("malformed_payload")
        assert store.rejects() == {"hard_example_empty_text": 2, "malformed_payload": 2}
    finally:
        store.close()


# --------------------------------------------------------------------------- sequence epochs


def _seqs(store: SummaryStoreProtocol, node: str, seqs: list[int], tag: str) -> list[bool]:
    """Store one burst of new batches numbered ``seqs`` (ids unique per ``tag``)."""
    return store.add_many([(batch(node, f"batch-{tag}-{i:04d}", s), 1.0, 10) for i, s in enumerate(seqs)])


def test_sequence_going_back_starts_a_new_epoch(backend: Backend) -> None:
    store = backend.summaries()
    store.open()
    try:
        assert store.sequence("n1") is None
        _seqs(store, "n1", [0, 1, 2, 4], "a")  # 3 missing
        _seqs(store, "n2", [5, 6, 7], "a")
        by = {t.node: t for t in store.totals()}
        assert (by["n1"].resets, by["n1"].seq_gaps, by["n1"].first_seq, by["n1"].last_seq) == (0, 1, 0, 4)
        _seqs(store, "n1", [3], "b")  # late: fills the gap, no reset
        _seqs(store, "n1", [0, 1, 3], "c")  # the state dir was lost: numbering starts again
        _seqs(store, "n2", [6], "b")  # a number n2 already used (another batch id): a reset too
        by = {t.node: t for t in store.totals()}
        assert (by["n1"].resets, by["n1"].seq_gaps, by["n1"].first_seq, by["n1"].last_seq) == (1, 1, 0, 3)
        assert (by["n1"].batches, by["n1"].duplicates) == (8, 0)  # every batch counted exactly once
        assert (by["n2"].resets, by["n2"].seq_gaps, by["n2"].first_seq, by["n2"].last_seq) == (1, 0, 6, 6)
        seq = store.sequence("n1")
        assert seq is not None and (seq.epoch, seq.first, seq.last, seq.gaps) == (1, 0, 3, 1)
    finally:
        store.close()
    again = backend.summaries()  # a restarted controller continues the epoch, does not open another
    again.open()
    try:
        seq = again.sequence("n1")
        assert seq is not None and (seq.epoch, seq.first, seq.last, seq.gaps) == (1, 0, 3, 1)
        _seqs(again, "n1", [2, 4], "d")
        (n1, _) = again.totals()
        assert (n1.resets, n1.seq_gaps, n1.first_seq, n1.last_seq) == (1, 0, 0, 4)
    finally:
        again.close()


def test_batches_overtaken_across_replicas_are_late_not_a_reset(backend: Backend) -> None:
    """With two replicas on a shared subscription, a node's early batches can arrive after later ones
    (a killed replica's unacknowledged messages come back after its restart): late, not a restart."""
    store = backend.summaries()
    store.open()
    try:
        _seqs(store, "n1", [3, 4, 5], "a")
        _seqs(store, "n1", [0, 2], "b")
        (n1,) = store.totals()
        assert (n1.resets, n1.seq_gaps, n1.first_seq, n1.last_seq) == (0, 1, 0, 5)
        _seqs(store, "n1", [1], "c")
        (n1,) = store.totals()
        assert (n1.resets, n1.seq_gaps, n1.batches) == (0, 0, 6)
        seq = store.sequence("n1")
        assert seq is not None and (seq.epoch, seq.first, seq.last, seq.gaps) == (0, 0, 5, 0)
    finally:
        store.close()


def test_reset_inside_one_burst_and_redelivery_beside_it(backend: Backend) -> None:
    store = backend.summaries()
    store.open()
    try:
        # One burst: 0..2, then the node restarts at 0 and sends 0, 1 again under new ids.
        assert _seqs(store, "n1", [0, 1, 2, 0, 1], "a") == [True] * 5
        (t,) = store.totals()
        assert (t.batches, t.resets, t.first_seq, t.last_seq, t.seq_gaps) == (5, 1, 0, 1, 0)
        # Epoch 1 holds 0 and 1; a redelivered batch (a duplicate) and a new one numbered like it
        # arrive together: the new one reuses a number of the epoch, so it starts epoch 2.
        redelivered = (batch("n1", "batch-a-0003", 0), 2.0, 10)
        assert store.add_many([redelivered, (batch("n1", "batch-b-0000", 0), 2.0, 10)]) == [False, True]
        (t,) = store.totals()
        assert (t.batches, t.duplicates, t.resets, t.first_seq, t.last_seq) == (6, 1, 2, 0, 0)
        # Out of order within an epoch is not a reset: 3 and 5 leave 1, 2, 4 open; 2 then fills one.
        _seqs(store, "n1", [3, 5, 2], "c")
        seq = store.sequence("n1")
        assert seq is not None and (seq.epoch, seq.first, seq.last, seq.gaps) == (2, 0, 5, 2)
        (t,) = store.totals()
        assert (t.resets, t.seq_gaps) == (2, 2)
    finally:
        store.close()


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
