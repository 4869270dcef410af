"""What the controller knows about each node from ingest, and how often it may tell the API server.

Why a fleet cache at all: node status arrives over MQTT at heartbeat rate, and
reconcilers must read it without touching the API server (which holds only the
throttled EdgeNode status). Why a store behind it (SQLite, or the shared
PostgreSQL): a restarted controller must know lastSeen, the models a node runs
and the desired-state generation it last published before the first retained
status arrives again, or it would flap nodes to Offline and re-number generations.

``StatusThrottle`` is the other half: 100k nodes heartbeating every 30 s would
be ~3k EdgeNode status writes a second. The throttle lets a node's status be
written at most once per ``min_interval_s`` (phase changes may jump the line
but still take a global token), and caps all writes at ``max_writes_per_s``.
Deferred writes are not queued here: the reconciler requeues the key and
writes the *latest* state when allowed (level-triggered coalescing).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cloud_controller.ingest.contracts import DesiredRow, FleetRecords, NodeTotals, StatusRow
from cloud_controller.ingest.sqlite_db import connect_wal
from edge_agent.protocol import messages as wire

log = logging.getLogger(__name__)

_MIGRATIONS = (
    """
    CREATE TABLE IF NOT EXISTS fleet_status (
        node TEXT PRIMARY KEY, payload TEXT NOT NULL, received REAL NOT NULL, last_seen REAL NOT NULL
    );
    CREATE TABLE IF NOT EXISTS fleet_desired (
        node TEXT PRIMARY KEY, generation INTEGER NOT NULL, content_hash TEXT NOT NULL,
        pipeline_name TEXT, pipeline_hash TEXT, pipeline_since_gen INTEGER NOT NULL,
        models TEXT NOT NULL, published REAL NOT NULL
    )
    """,
)


class SqliteFleetRecords:
    """The embedded ``FleetRecords``: one SQLite file (WAL)."""

    def __init__(self, path: str | Path) -> None:
        self.db = connect_wal(Path(path), "fleet", _MIGRATIONS, timeout=10.0)

    def load(self) -> tuple[list[StatusRow], list[DesiredRow]]:
        statuses = self.db.execute("SELECT node, payload, received, last_seen FROM fleet_status").fetchall()
        desired = self.db.execute(
            "SELECT node, generation, content_hash, pipeline_name, pipeline_hash, pipeline_since_gen, "
            "models, published FROM fleet_desired"
        ).fetchall()
        return statuses, desired

    def save_statuses(self, rows: Sequence[StatusRow]) -> None:
        with self.db:
            self.db.executemany(
                "INSERT INTO fleet_status VALUES (?, ?, ?, ?) ON CONFLICT(node) DO UPDATE SET "
                "payload=excluded.payload, received=excluded.received, last_seen=excluded.last_seen",
                rows,
            )

    def save_desired(self, row: DesiredRow) -> None:
        with self.db:
            self.db.execute("INSERT OR REPLACE INTO fleet_desired VALUES (?, ?, ?, ?, ?, ?, ?, ?)", row)

    def delete_desired(self, node: str) -> None:
        with self.db:
            self.db.execute("DELETE FROM fleet_desired WHERE node = ?", (node,))

    def close(self) -> None:
        self.db.close()


@dataclass
class NodeState:
    """One node as ingest saw it. Times are the controller's wall clock (node clocks may be skewed)."""

    name: str
    status: wire.Status | None = None
    status_received: float | None = None
    last_seen: float | None = None
    # Exactly-once counts of the stored summaries (cloud side, deduplicated by batch id).
    batches: int = 0
    readings: int = 0
    windows: int = 0
    bytes_sent: int = 0
    duplicates: int = 0
    # Sequence health: how often the node's numbering started again (state dir lost), and the
    # sequence numbers never received (within each epoch).
    seq_resets: int = 0
    seq_gaps: int = 0

    def counter(self, name: str) -> float:
        return float(self.status.counters.get(name, 0.0)) if self.status is not None else 0.0

    @property
    def raw_equivalent_bytes(self) -> int:
        return int(self.counter("raw_equivalent_bytes"))

    @property
    def applied_generation(self) -> int:
        return self.status.applied_generation if self.status is not None else 0

    def model(self, task: str) -> wire.ModelStatus | None:
        return self.status.models.get(task) if self.status is not None else None


@dataclass(frozen=True)
class StatusChange:
    """What an ingested status changed, so ingest can wake only the reconcilers that care."""

    new_node: bool
    online_changed: bool
    models_changed: bool
    applied_changed: bool


@dataclass
class DesiredRecord:
    """The last desired state published to a node (persisted: generations survive restarts)."""

    node: str
    generation: int
    content_hash: str
    pipeline_name: str | None
    pipeline_hash: str | None
    # First generation carrying the current pipeline content: the node applied this
    # pipeline once its reported applied_generation reaches it.
    pipeline_since_gen: int
    models: dict[str, str] = field(default_factory=dict)  # task -> "name@version"
    published: float = 0.0


class Fleet:
    """In-memory node states, persisted through ``FleetRecords`` (batched: ``flush()`` once per ingest burst).

    ``path`` is the embedded SQLite file; ``records`` another backend (the shared
    PostgreSQL store); neither: memory only.
    """

    def __init__(
        self,
        path: str | Path | None,
        *,
        records: FleetRecords | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = Path(path) if path is not None else None
        self.clock = clock
        self._nodes: dict[str, NodeState] = {}
        self._desired: dict[str, DesiredRecord] = {}
        self._dirty: set[str] = set()
        self._records: FleetRecords | None = records
        self._opened = False

    # ------------------------------------------------------------------ persistence

    def open(self) -> Fleet:
        """Create tables and load what a previous run left (idempotent)."""
        if self._opened:
            return self
        if self._records is None and self.path is not None:
            self._records = SqliteFleetRecords(self.path)
        if self._records is None:
            return self
        self._opened = True
        statuses, desired = self._records.load()
        for node, payload, received, last_seen in statuses:
            try:
                status = wire.Status.model_validate_json(payload)
            except ValueError:
                log.warning("fleet: dropping unreadable stored status of %s", node)
                continue
            st = self._state(node)
            st.status, st.status_received = status, received
            st.last_seen = max(st.last_seen or 0.0, last_seen)
        for row in desired:
            self._desired[row[0]] = DesiredRecord(
                row[0], row[1], row[2], row[3], row[4], row[5], json.loads(row[6]), row[7]
            )
        return self

    def close(self) -> None:
        if self._records is not None and self._opened:
            self.flush()
            self._records.close()
            self._opened = False
            if self.path is not None:
                self._records = None

    def flush(self) -> int:
        """Persist the statuses changed since the last flush in one transaction; returns how many."""
        if self._records is None or not self._opened or not self._dirty:
            self._dirty.clear()
            return 0
        rows: list[StatusRow] = []
        for name in self._dirty:
            st = self._nodes.get(name)
            if st is not None and st.status is not None:
                rows.append(
                    (name, st.status.model_dump_json(), st.status_received or 0.0, st.last_seen or 0.0)
                )
        self._records.save_statuses(rows)
        self._dirty.clear()
        return len(rows)

    # ------------------------------------------------------------------ ingest side

    def _state(self, node: str) -> NodeState:
        st = self._nodes.get(node)
        if st is None:
            st = self._nodes[node] = NodeState(node)
        return st

    def load_totals(self, totals: Iterable[NodeTotals]) -> None:
        """Seed summary counts from the summary store (one aggregate query at start, then in memory)."""
        for t in totals:
            st = self._state(t.node)
            st.batches, st.readings, st.windows = t.batches, t.readings, t.windows
            st.bytes_sent, st.duplicates = t.bytes, t.duplicates
            st.seq_resets, st.seq_gaps = t.resets, t.seq_gaps

    def observe_sequence(self, node: str, resets: int, gaps: int) -> bool:
        """Record the node's sequence epoch and gaps; returns whether it reset since the last call."""
        st = self._state(node)
        reset = resets > st.seq_resets
        st.seq_resets, st.seq_gaps = resets, gaps
        return reset

    def observe_status(self, status: wire.Status, received: float) -> StatusChange:
        known = status.node in self._nodes
        st = self._state(status.node)
        old = st.status
        st.status, st.status_received = status, received
        st.last_seen = max(st.last_seen or 0.0, received)
        self._dirty.add(status.node)
        return StatusChange(
            new_node=not known,
            online_changed=old is None or old.online != status.online,
            models_changed=old is None or old.models != status.models,
            applied_changed=old is None or old.applied_generation != status.applied_generation,
        )

    def clear_status(self, node: str) -> None:
        """A cleared retained status: the node was decommissioned; keep counters, forget the status."""
        st = self._nodes.get(node)
        if st is not None:
            st.status = None

    def observe_summary(
        self, node: str, *, readings: int, windows: int, nbytes: int, received: float, new: bool
    ) -> bool:
        """Count a stored (``new``) or duplicate batch; returns whether the node was unknown before."""
        known = node in self._nodes
        st = self._state(node)
        st.last_seen = max(st.last_seen or 0.0, received)
        if new:
            st.batches += 1
            st.readings += readings
            st.windows += windows
            st.bytes_sent += nbytes
        else:
            st.duplicates += 1
        return not known

    # ------------------------------------------------------------------ reconciler side

    def get(self, node: str) -> NodeState | None:
        return self._nodes.get(node)

    def names(self) -> list[str]:
        return list(self._nodes)

    def __iter__(self) -> Iterator[NodeState]:
        return iter(list(self._nodes.values()))

    def __len__(self) -> int:
        return len(self._nodes)

    def desired(self, node: str) -> DesiredRecord | None:
        return self._desired.get(node)

    def save_desired(self, rec: DesiredRecord) -> None:
        self._desired[rec.node] = rec
        if self._records is not None and self._opened:
            self._records.save_desired(
                (
                    rec.node,
                    rec.generation,
                    rec.content_hash,
                    rec.pipeline_name,
                    rec.pipeline_hash,
                    rec.pipeline_since_gen,
                    json.dumps(rec.models, sort_keys=True),
                    rec.published,
                )
            )

    def delete_desired(self, node: str) -> DesiredRecord | None:
        """Forget the published desired state; the last generation is returned so it never goes back."""
        rec = self._desired.pop(node, None)
        if self._records is not None and self._opened:
            self._records.delete_desired(node)
        return rec


# --------------------------------------------------------------------------- throttle


@dataclass
class ThrottleMetrics:
    writes: int = 0
    coalesced: int = 0  # updates deferred (and so merged into a later write)
    rate_limited: int = 0  # of those, deferred by the global rate rather than the per-node interval


class StatusThrottle:
    """Admission control for EdgeNode status writes: per node interval + global token bucket.

    ``admit(key)`` answers "may I write now?": 0.0 means yes (and the write is
    counted), a positive number is how long to wait. It holds no pending data:
    the caller requeues and recomputes, so whatever changed meanwhile is merged
    into the one write that eventually happens.
    """

    def __init__(
        self,
        min_interval_s: float = 10.0,
        max_writes_per_s: float = 100.0,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if min_interval_s < 0 or max_writes_per_s <= 0:
            raise ValueError("need min_interval_s >= 0 and max_writes_per_s > 0")
        self.min_interval_s = min_interval_s
        self.max_writes_per_s = max_writes_per_s
        self.clock = clock
        self.metrics = ThrottleMetrics()
        self._last: dict[str, float] = {}
        self._burst = max(1.0, max_writes_per_s)  # one second's worth
        self._tokens = self._burst
        self._refilled: float | None = None
        self._deferred: dict[str, float] = {}  # key -> its turn after a rate-limit deferral
        self._last_turn = float("-inf")

    def admit(self, key: str, *, urgent: bool = False) -> float:
        now = self.clock()
        slot = self._deferred.get(key)
        if slot is not None and now < slot - 1e-3:  # woken before its turn (a status, a summary)
            self.metrics.coalesced += 1
            self.metrics.rate_limited += 1
            return slot - now
        if not urgent:
            last = self._last.get(key)
            if last is not None and now - last < self.min_interval_s:
                self.metrics.coalesced += 1
                return last + self.min_interval_s - now
        if self._refilled is not None:
            self._tokens = min(self._burst, self._tokens + (now - self._refilled) * self.max_writes_per_s)
        self._refilled = now
        if self._tokens >= 1.0:  # the bound is enforced here, when the write happens
            self._tokens -= 1.0
            self._deferred.pop(key, None)
            self._last[key] = now
            self.metrics.writes += 1
            return 0.0
        # Over the rate: give each deferred key its own turn, 1/rate after the previous one's.
        # Answering every key "retry when the next token is due" made them all retry together every
        # 1/max_writes_per_s, one winning each time: with 1,000 nodes ~100x more reconciles than
        # writes (bench_fleet). Turns are advisory (no token is set aside), so a late retry after a
        # stalled event loop cannot make writes bunch up above the rate.
        next_token = now + (1.0 - self._tokens) / self.max_writes_per_s
        turn = max(next_token, self._last_turn + 1.0 / self.max_writes_per_s)
        self._last_turn = turn
        self._deferred[key] = turn
        self.metrics.coalesced += 1
        self.metrics.rate_limited += 1
        return turn - now

    def due(self, key: str) -> bool:
        """Could a non-urgent write of ``key`` be considered now (outside its interval, past its turn)?"""
        slot = self._deferred.get(key)
        if slot is not None:
            return self.clock() >= slot
        last = self._last.get(key)
        return last is None or self.clock() - last >= self.min_interval_s

    def forget(self, key: str) -> None:
        self._last.pop(key, None)
        self._deferred.pop(key, None)
