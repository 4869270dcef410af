"""The edge agent's one durable database: outbox, checkpointed state, dead letters, counters.

Why one database and one transaction per tick
----------------------------------------------
The agent reads device messages with MQTT QoS 1 and, every ``commit_interval_s``,
commits one *tick*: the new outbox records, the processing state that changed
(open sensor windows, dialogue sessions), the dead letters and the counters, all
in ONE SQLite transaction. Only after that commit returns does it acknowledge
the inbound messages to the broker. After a SIGKILL or a power loss either the
whole tick is on disk (and its messages were, or will harmlessly be, acked) or
none of it is (and the broker redelivers the messages, which are processed
again from the state of the previous tick). A message is therefore counted
exactly once, and the cloud drops uplink duplicates by record ``id``.

Durability: WAL with ``synchronous=FULL``
-----------------------------------------
WAL lets the uplink read pending rows cheaply and makes a commit one sequential
append. With the WAL default ``synchronous=NORMAL`` a commit survives a crash of
the process but not a power loss: the WAL is only fsynced at checkpoints, so the
last few commits can vanish when the machine loses power. Those are exactly the
ticks whose inbound messages were already acknowledged to the broker, so they
would be lost for good. ``synchronous=FULL`` fsyncs the WAL on every commit: a
tick that ``commit_tick`` reported as committed is on stable storage (as far as
the disk honours flushes). The cost is one fsync per tick, not per message,
which is why work is batched into ticks. Empty ticks are not written at all.

When full
---------
The outbox is bounded by ``OutboxConfig.max_bytes``, counted as the sum of
``record_size()`` over stored rows (payload + topic + id bytes; SQLite's own
page overhead comes on top, so the file is somewhat larger). Nothing is dropped
silently: every record that leaves the outbox other than by delivery is counted
per kind and reported in ``CommitResult``.

* ``when_full = "drop_oldest"`` (default): the new records are stored, then the
  rows with the lowest sequence numbers are deleted until the total fits again.
  This keeps the freshest data, which is what an operator acts on after an
  outage. If one tick alone holds more than ``max_bytes``, its own oldest
  records are dropped too. Counted in ``dropped_full_total`` and
  ``dropped_full_bytes``.
* ``when_full = "reject_new"``: stored rows are never deleted to make room; each
  new record that does not fit in the remaining space is refused (not stored),
  in the order given, so a smaller later record of the same tick may still fit.
  This keeps the history contiguous from the start of an outage. Counted in
  ``rejected_full_total``.
* Under either policy a single record larger than ``max_bytes`` can never fit
  and is refused (``rejected_full_total``; ``CommitResult.oversized``).
* Rows older than ``max_age_s`` are removed by ``expire()`` and counted in
  ``dropped_age_total``.

For every kind the counters satisfy
``rows == enqueued - acked - discarded - dropped_full - dropped_age``.

Dead letters (rejected inbound messages) are kept for inspection in a table
bounded to ``dead_letter_max_rows`` rows: the newest are kept, the payload is
truncated to 1 KiB and the text fields to 1024 characters.

Sequence numbers
----------------
``reserve_seq()`` hands out per-node sequence numbers from memory; the next
free number is persisted by the tick that stores the records, so a committed
sequence number is never reused, also after every row was acknowledged and
after a restart. A number reserved but never committed before a crash may be
handed out again; it was never seen by anybody.

Concurrency
-----------
All operations go through one aiosqlite connection and an ``asyncio.Lock``, so
a reader (the uplink) never sees a half-written tick of the same connection. A
transaction runs in its own task: cancelling a caller does not cut a
transaction in half (it completes or rolls back, and the in-memory totals are
updated only when it commits).
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite

from edge_agent.config import OutboxConfig
from edge_agent.protocol.errors import OutboxError

__all__ = [
    "DEAD_LETTER_PAYLOAD_MAX",
    "DEAD_LETTER_TEXT_MAX",
    "AgentStore",
    "CommitResult",
    "DeadLetter",
    "OutboxRecord",
    "OutboxRow",
    "OutboxStats",
    "record_size",
]

DEAD_LETTER_PAYLOAD_MAX = 1024
DEAD_LETTER_TEXT_MAX = 1024
SCHEMA_VERSION = 1
# Keys under this prefix belong to the store (counters, next_seq); set_meta refuses them.
RESERVED_META_PREFIX = "store."
_NEXT_SEQ_KEY = "store.next_seq"
_COUNT_PREFIX = "store.count."
# One statement binds at most this many parameters (SQLite's limit is 32766 since 3.32).
_CHUNK = 500

# Counter names kept per record kind (dead_letters is kept per reason).
_KIND_COUNTERS = ("enqueued", "acked", "discarded", "dropped_full", "dropped_full_bytes",
                  "dropped_age", "rejected_full")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    topic TEXT NOT NULL,
    created REAL NOT NULL,
    size INTEGER NOT NULL,
    kind TEXT NOT NULL,
    -- Last: reading size/kind (byte totals, drop_oldest, ack) never walks a large payload's overflow pages.
    payload BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS outbox_created ON outbox(created);
CREATE TABLE IF NOT EXISTS state (
    key TEXT PRIMARY KEY,
    value BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS dead_letters (
    id INTEGER PRIMARY KEY,
    ts REAL NOT NULL,
    source TEXT NOT NULL,
    topic TEXT NOT NULL,
    reason TEXT NOT NULL,
    detail TEXT NOT NULL,
    payload BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value
) WITHOUT ROWID;
"""

T = TypeVar("T")


@dataclass(frozen=True)
class OutboxRecord:
    """What the agent wants to send."""

    id: str  # unique message id (uuid hex), the cloud's dedup key
    topic: str
    payload: bytes
    created: float  # wall time, for the age limit
    kind: str = "summary"  # summary | hard_example | ... (per-kind counters)


@dataclass(frozen=True)
class OutboxRow:
    """What the uplink reads back."""

    seq: int
    id: str
    topic: str
    payload: bytes
    created: float
    kind: str


@dataclass(frozen=True)
class DeadLetter:
    """A rejected inbound message kept for an operator; the store truncates payload and text."""

    ts: float
    source: str
    topic: str
    reason: str
    detail: str
    payload: bytes


@dataclass(frozen=True)
class OutboxStats:
    rows: int
    bytes: int
    oldest_created: float | None
    enqueued_total: int
    acked_total: int
    dropped_full_total: int
    dropped_full_bytes: int
    dropped_age_total: int
    rejected_full_total: int
    dead_letters: int
    dead_letters_total: int
    # Additions beyond the contract:
    discarded_total: int = 0  # removed via discard() (e.g. refused by the broker for good)
    next_seq: int = 0
    max_bytes: int = 0
    by_kind: Mapping[str, Mapping[str, int]] = field(default_factory=dict)
    dead_letters_by_reason: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class CommitResult:
    """What one tick did to the outbox, so the agent can update metrics and log."""

    stored: tuple[int, ...] = ()  # seqs of this tick now in the outbox
    dropped: tuple[int, ...] = ()  # seqs deleted by drop_oldest (may include seqs of this tick)
    dropped_bytes: int = 0
    refused: tuple[int, ...] = ()  # seqs of this tick not stored (reject_new overflow and oversized)
    oversized: tuple[int, ...] = ()  # subset of refused: larger than max_bytes on their own
    dead_letters_trimmed: int = 0
    committed: bool = False  # False: the tick was empty and nothing was written


def record_size(record: OutboxRecord) -> int:
    """Bytes a record counts against ``max_bytes``: payload + topic + id (UTF-8)."""
    return len(record.payload) + len(record.topic.encode()) + len(record.id.encode())


def _prefix_upper(prefix: str) -> str | None:
    """Smallest string above every string starting with ``prefix`` (None: no bound).

    SQLite's BINARY collation compares UTF-8 bytes, which orders like code points.
    """
    chars = list(prefix)
    while chars and chars[-1] == "\U0010ffff":
        chars.pop()
    if not chars:
        return None
    nxt = ord(chars[-1]) + 1
    if 0xD800 <= nxt <= 0xDFFF:  # surrogates cannot be encoded; skip them
        nxt = 0xE000
    chars[-1] = chr(nxt)
    return "".join(chars)


def _count_key(name: str, kind: str) -> str:
    return f"{_COUNT_PREFIX}{name}.{kind}"


class _Tx:
    """In-memory effects of a transaction, applied only after it commits."""

    def __init__(self, store: AgentStore) -> None:
        self.rows = store._rows
        self.bytes = store._bytes
        self.dl_rows = store._dl_rows
        self.next_seq = store._persisted_next_seq
        self.counts: dict[tuple[str, str], int] = {}
        self._base = store._counts

    def add(self, name: str, kind: str, n: int = 1) -> None:
        if n:
            key = (name, kind)
            cur = self.counts.get(key, self._base.get(key, 0))
            self.counts[key] = cur + n

    async def write_counts(self, conn: aiosqlite.Connection, extra: Sequence[tuple[str, Any]] = ()) -> None:
        """Counters (and ``extra`` meta rows) in one statement: one thread hop per tick, not one per key."""
        rows = [(_count_key(n, k), v) for (n, k), v in self.counts.items()]
        rows.extend(extra)
        if rows:
            await conn.executemany(
                "INSERT INTO meta(key, value) VALUES (?, ?) "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value", rows)


class AgentStore:
    """Durable outbox + state + dead letters + counters in one SQLite file (see module doc)."""

    def __init__(self, path: Path, cfg: OutboxConfig) -> None:
        self._path = Path(path)
        self._cfg = cfg
        self._conn: aiosqlite.Connection | None = None
        self._lock = asyncio.Lock()
        self._background: set[asyncio.Task[Any]] = set()
        self._next_seq = 0  # next number reserve_seq hands out
        self._persisted_next_seq = 0
        self._rows = 0
        self._bytes = 0
        self._dl_rows = 0
        self._counts: dict[tuple[str, str], int] = {}

    @property
    def path(self) -> Path:
        return self._path

    # ------------------------------------------------------------------ lifecycle

    async def open(self) -> None:
        if self._conn is not None:
            return
        try:
            await asyncio.to_thread(self._path.parent.mkdir, parents=True, exist_ok=True)
        except OSError as exc:
            raise OutboxError(f"cannot create directory for {self._path}: {exc}") from exc
        conn: aiosqlite.Connection | None = None
        try:
            # isolation_level=None: no implicit transactions; every write below is an explicit one.
            conn = await aiosqlite.connect(self._path, isolation_level=None)
            await self._setup(conn)
        except (sqlite3.Error, ValueError) as exc:
            if conn is not None:
                await conn.close()
            raise OutboxError(f"cannot open {self._path}: {exc}") from exc
        except BaseException:
            if conn is not None:
                await conn.close()
            raise
        self._conn = conn

    async def _setup(self, conn: aiosqlite.Connection) -> None:
        async with conn.execute("PRAGMA journal_mode=WAL") as cur:
            row = await cur.fetchone()
        if row is None or str(row[0]).lower() != "wal":
            raise OutboxError(f"{self._path}: cannot enable WAL journal (got {row and row[0]!r})")
        await conn.execute("PRAGMA synchronous=FULL")  # why: see module docstring
        await conn.execute("PRAGMA busy_timeout=5000")  # an operator's reader may hold a lock briefly
        await conn.execute("PRAGMA journal_size_limit=33554432")  # shrink the WAL back after big ticks
        async with conn.execute("PRAGMA user_version") as cur:
            row = await cur.fetchone()
        version = int(row[0]) if row else 0
        if version > SCHEMA_VERSION:
            raise OutboxError(f"{self._path}: schema version {version} is newer than this agent's")
        await conn.execute("BEGIN IMMEDIATE")
        try:
            for stmt in _SCHEMA.split(";"):
                if stmt.strip():
                    await conn.execute(stmt)
            await conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            await conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                await conn.execute("ROLLBACK")
            raise
        async with conn.execute("SELECT COUNT(*), COALESCE(SUM(size), 0), MAX(seq) FROM outbox") as cur:
            row = await cur.fetchone()
        if row is None:  # an aggregate always returns one row; this guards a broken file
            raise OutboxError(f"{self._path}: cannot read the outbox totals")
        self._rows, self._bytes = int(row[0]), int(row[1])
        max_seq = row[2]
        async with conn.execute("SELECT COUNT(*) FROM dead_letters") as cur:
            row = await cur.fetchone()
        self._dl_rows = int(row[0]) if row else 0
        stored_next = 1
        async with conn.execute("SELECT value FROM meta WHERE key = ?", (_NEXT_SEQ_KEY,)) as cur:
            row = await cur.fetchone()
        if row is not None:
            stored_next = int(row[0])
        if max_seq is not None:
            stored_next = max(stored_next, int(max_seq) + 1)
        self._next_seq = self._persisted_next_seq = stored_next
        self._counts = {}
        upper = _prefix_upper(_COUNT_PREFIX)
        async with conn.execute(
            "SELECT key, value FROM meta WHERE key >= ? AND key < ?", (_COUNT_PREFIX, upper)
        ) as cur:
            async for key, value in cur:
                name, _, kind = str(key)[len(_COUNT_PREFIX):].partition(".")
                self._counts[(name, kind)] = int(value)

    async def close(self) -> None:
        conn = self._conn
        if conn is None:
            return
        async with self._lock:  # let a running transaction finish first
            self._conn = None
            try:
                await conn.close()
            except sqlite3.Error as exc:
                raise OutboxError(f"closing {self._path}: {exc}") from exc

    async def __aenter__(self) -> AgentStore:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ------------------------------------------------------------------ plumbing

    def _require(self) -> aiosqlite.Connection:
        if self._conn is None:
            raise OutboxError(f"store {self._path} is not open")
        return self._conn

    async def _read(self, fn: Callable[[aiosqlite.Connection], Awaitable[T]]) -> T:
        async with self._lock:
            conn = self._require()
            try:
                return await fn(conn)
            except (sqlite3.Error, ValueError) as exc:
                raise OutboxError(f"{self._path}: {exc}") from exc

    async def _transaction(
        self, body: Callable[[aiosqlite.Connection], Awaitable[tuple[T, Callable[[], None]]]]
    ) -> T:
        """Run ``body`` in BEGIN IMMEDIATE .. COMMIT; apply its in-memory effects only after COMMIT.

        The work runs in its own task and the caller awaits it shielded: a cancelled
        caller never leaves the connection in the middle of a transaction.
        """
        self._require()

        async def run() -> T:
            async with self._lock:
                conn = self._require()
                try:
                    await conn.execute("BEGIN IMMEDIATE")
                    result, apply = await body(conn)
                    await conn.execute("COMMIT")
                except BaseException as exc:
                    try:
                        if conn.in_transaction:
                            await conn.execute("ROLLBACK")
                    except (sqlite3.Error, ValueError):
                        pass  # the original error is the one worth reporting
                    if isinstance(exc, sqlite3.Error | ValueError):
                        raise OutboxError(f"{self._path}: {exc}") from exc
                    raise
                apply()
                return result

        task = asyncio.create_task(run(), name="agent-store-transaction")
        self._background.add(task)
        task.add_done_callback(self._task_done)
        return await asyncio.shield(task)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._background.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved here so an abandoned task does not warn; the caller re-raises it

    def _apply_counts(self, tx: _Tx) -> None:
        self._rows, self._bytes, self._dl_rows = tx.rows, tx.bytes, tx.dl_rows
        self._persisted_next_seq = max(self._persisted_next_seq, tx.next_seq)
        self._next_seq = max(self._next_seq, self._persisted_next_seq)
        self._counts.update(tx.counts)

    # ------------------------------------------------------------------ ticks

    def reserve_seq(self) -> int:
        """Next per-node sequence number; persisted by the commit_tick that stores it."""
        self._require()
        seq = self._next_seq
        self._next_seq += 1
        return seq

    async def commit_tick(
        self,
        records: Sequence[tuple[int, OutboxRecord]] = (),
        state_upserts: Mapping[str, bytes] = {},  # read only, never mutated
        state_deletes: Iterable[str] = (),
        dead_letters: Sequence[DeadLetter] = (),
    ) -> CommitResult:
        """Commit one tick atomically (see the module docstring, "When full").

        A key may not be both upserted and deleted in one tick (ValueError): which one
        wins would be a guess. A duplicate record id or seq fails the whole tick with
        OutboxError and leaves nothing behind.
        """
        deletes = list(dict.fromkeys(state_deletes))
        both = set(deletes).intersection(state_upserts)
        if both:
            raise ValueError(f"state keys both upserted and deleted in one tick: {sorted(both)[:5]}")
        recs = [(int(seq), rec) for seq, rec in records]
        if not (recs or state_upserts or deletes or dead_letters):
            return CommitResult()
        max_bytes = self._cfg.max_bytes
        policy = self._cfg.when_full

        async def body(conn: aiosqlite.Connection) -> tuple[CommitResult, Callable[[], None]]:
            tx = _Tx(self)
            if state_upserts:
                await conn.executemany(
                    "INSERT INTO state(key, value) VALUES (?, ?) "
                    "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                    [(k, bytes(v)) for k, v in state_upserts.items()],
                )
            if deletes:
                await conn.executemany("DELETE FROM state WHERE key = ?", [(k,) for k in deletes])
            trimmed = 0
            if dead_letters:
                await conn.executemany(
                    "INSERT INTO dead_letters(ts, source, topic, reason, detail, payload) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    [(d.ts, d.source[:DEAD_LETTER_TEXT_MAX], d.topic[:DEAD_LETTER_TEXT_MAX],
                      d.reason[:DEAD_LETTER_TEXT_MAX], d.detail[:DEAD_LETTER_TEXT_MAX],
                      bytes(d.payload[:DEAD_LETTER_PAYLOAD_MAX])) for d in dead_letters],
                )
                for d in dead_letters:
                    tx.add("dead_letters", d.reason[:DEAD_LETTER_TEXT_MAX])
                tx.dl_rows += len(dead_letters)
                excess = tx.dl_rows - self._cfg.dead_letter_max_rows
                if excess > 0:
                    cur = await conn.execute(
                        "DELETE FROM dead_letters WHERE id IN "
                        "(SELECT id FROM dead_letters ORDER BY id LIMIT ?)", (excess,))
                    trimmed = cur.rowcount
                    await cur.close()
                    tx.dl_rows -= trimmed

            stored: list[int] = []
            refused: list[int] = []
            oversized: list[int] = []
            dropped: list[int] = []
            dropped_bytes = 0
            rows_to_insert: list[tuple[Any, ...]] = []
            sizes: dict[int, tuple[int, str]] = {}
            for seq, rec in recs:
                size = record_size(rec)
                if size > max_bytes:
                    refused.append(seq)
                    oversized.append(seq)
                    tx.add("rejected_full", rec.kind)
                    continue
                if policy == "reject_new" and tx.bytes + size > max_bytes:
                    refused.append(seq)
                    tx.add("rejected_full", rec.kind)
                    continue
                rows_to_insert.append((seq, rec.id, rec.topic, float(rec.created), size, rec.kind,
                                       bytes(rec.payload)))
                sizes[seq] = (size, rec.kind)
                stored.append(seq)
                tx.bytes += size
                tx.rows += 1
                tx.add("enqueued", rec.kind)
            if recs:
                tx.next_seq = max(tx.next_seq, self._next_seq, *(s + 1 for s, _ in recs))
            if rows_to_insert:
                await conn.executemany(
                    "INSERT INTO outbox(seq, id, topic, created, size, kind, payload) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)", rows_to_insert)
            if tx.bytes > max_bytes:  # only drop_oldest gets here
                need = tx.bytes - max_bytes
                last = None
                async with conn.execute("SELECT seq, size, kind FROM outbox ORDER BY seq") as cur:
                    while need > 0:
                        chunk = await cur.fetchmany(64)
                        if not chunk:
                            break
                        for seq, size, kind in chunk:
                            dropped.append(seq)
                            dropped_bytes += size
                            tx.add("dropped_full", kind)
                            tx.add("dropped_full_bytes", kind, size)
                            need -= size
                            last = seq
                            if need <= 0:
                                break
                if last is not None:
                    cur2 = await conn.execute("DELETE FROM outbox WHERE seq <= ?", (last,))
                    if cur2.rowcount != len(dropped):
                        raise OutboxError(
                            f"drop_oldest deleted {cur2.rowcount} rows, expected {len(dropped)}")
                    await cur2.close()
                tx.bytes -= dropped_bytes
                tx.rows -= len(dropped)
                gone = set(dropped)
                stored = [s for s in stored if s not in gone]
            extra = [(_NEXT_SEQ_KEY, tx.next_seq)] if tx.next_seq != self._persisted_next_seq else []
            await tx.write_counts(conn, extra)
            result = CommitResult(
                stored=tuple(stored), dropped=tuple(dropped), dropped_bytes=dropped_bytes,
                refused=tuple(refused), oversized=tuple(oversized), dead_letters_trimmed=trimmed,
                committed=True,
            )
            return result, lambda: self._apply_counts(tx)

        return await self._transaction(body)

    # ------------------------------------------------------------------ outbox

    async def pending(self, limit: int, after_seq: int = -1) -> list[OutboxRow]:
        """Oldest first, ``seq > after_seq``: page with the last seq of the previous page."""

        async def fn(conn: aiosqlite.Connection) -> list[OutboxRow]:
            rows = await conn.execute_fetchall(
                "SELECT seq, id, topic, payload, created, kind FROM outbox "
                "WHERE seq > ? ORDER BY seq LIMIT ?", (after_seq, max(0, limit)))
            return [OutboxRow(seq=r[0], id=r[1], topic=r[2], payload=bytes(r[3]), created=r[4], kind=r[5])
                    for r in rows]

        return await self._read(fn)

    async def _remove(self, seqs: Iterable[int], counter: str) -> int:
        wanted = sorted({int(s) for s in seqs})
        if not wanted:
            return 0

        async def body(conn: aiosqlite.Connection) -> tuple[int, Callable[[], None]]:
            tx = _Tx(self)
            n = 0
            for i in range(0, len(wanted), _CHUNK):
                part = wanted[i:i + _CHUNK]
                marks = ",".join("?" * len(part))
                rows = await conn.execute_fetchall(
                    f"DELETE FROM outbox WHERE seq IN ({marks}) RETURNING size, kind", part)
                for size, kind in rows:
                    tx.add(counter, kind)
                    tx.bytes -= size
                    tx.rows -= 1
                    n += 1
            if n:
                await tx.write_counts(conn)
            return n, lambda: self._apply_counts(tx)

        return await self._transaction(body)

    async def ack(self, seqs: Iterable[int]) -> None:
        """Delete delivered rows and count them; unknown seqs (already dropped) are ignored."""
        await self._remove(seqs, "acked")

    async def discard(self, seqs: Iterable[int]) -> int:
        """Delete rows that will never be delivered (e.g. the broker refused them for good).

        Counted apart from ``acked`` so that a dashboard does not show refusals as deliveries.
        """
        return await self._remove(seqs, "discarded")

    async def expire(self, now: float) -> int:
        """Drop rows whose age ``now - created`` exceeds ``max_age_s``; returns how many."""
        cutoff = now - self._cfg.max_age_s

        async def body(conn: aiosqlite.Connection) -> tuple[int, Callable[[], None]]:
            tx = _Tx(self)
            rows = list(await conn.execute_fetchall(
                "DELETE FROM outbox WHERE created < ? RETURNING size, kind", (cutoff,)))
            for size, kind in rows:
                tx.add("dropped_age", kind)
                tx.bytes -= size
                tx.rows -= 1
            if rows:
                await tx.write_counts(conn)
            return len(rows), lambda: self._apply_counts(tx)

        # Cheap check first: most calls find nothing to expire and should not cost an fsync.
        oldest = await self._read(self._oldest_created)
        if oldest is None or oldest >= cutoff:
            return 0
        return await self._transaction(body)

    @staticmethod
    async def _oldest_created(conn: aiosqlite.Connection) -> float | None:
        async with conn.execute("SELECT MIN(created) FROM outbox") as cur:
            row = await cur.fetchone()
        return None if row is None or row[0] is None else float(row[0])

    # ------------------------------------------------------------------ state, meta, stats

    async def load_state(self, prefix: str = "") -> dict[str, bytes]:
        upper = _prefix_upper(prefix)

        async def fn(conn: aiosqlite.Connection) -> dict[str, bytes]:
            if upper is None:
                rows = await conn.execute_fetchall(
                    "SELECT key, value FROM state WHERE key >= ?", (prefix,))
            else:
                rows = await conn.execute_fetchall(
                    "SELECT key, value FROM state WHERE key >= ? AND key < ?", (prefix, upper))
            return {str(k): bytes(v) for k, v in rows}

        return await self._read(fn)

    async def get_meta(self, key: str) -> str | None:
        async def fn(conn: aiosqlite.Connection) -> str | None:
            async with conn.execute("SELECT value FROM meta WHERE key = ?", (key,)) as cur:
                row = await cur.fetchone()
            return None if row is None else str(row[0])

        return await self._read(fn)

    async def set_meta(self, key: str, value: str) -> None:
        """Store a small string durably (its own transaction); ``store.*`` keys are reserved."""
        if key.startswith(RESERVED_META_PREFIX):
            raise ValueError(f"meta key {key!r} is reserved for the store")

        async def body(conn: aiosqlite.Connection) -> tuple[None, Callable[[], None]]:
            await conn.execute(
                "INSERT INTO meta(key, value) VALUES (?, ?) "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value", (key, str(value)))
            return None, lambda: None

        await self._transaction(body)

    async def stats(self) -> OutboxStats:
        oldest = await self._read(self._oldest_created)
        by_kind: dict[str, dict[str, int]] = {}
        by_reason: dict[str, int] = {}
        totals = dict.fromkeys(_KIND_COUNTERS, 0)
        for (name, kind), value in self._counts.items():
            if name == "dead_letters":
                by_reason[kind] = value
            elif name in totals:
                totals[name] += value
                by_kind.setdefault(kind, dict.fromkeys(_KIND_COUNTERS, 0))[name] = value
        return OutboxStats(
            rows=self._rows,
            bytes=self._bytes,
            oldest_created=oldest,
            enqueued_total=totals["enqueued"],
            acked_total=totals["acked"],
            dropped_full_total=totals["dropped_full"],
            dropped_full_bytes=totals["dropped_full_bytes"],
            dropped_age_total=totals["dropped_age"],
            rejected_full_total=totals["rejected_full"],
            dead_letters=self._dl_rows,
            dead_letters_total=sum(by_reason.values()),
            discarded_total=totals["discarded"],
            next_seq=self._next_seq,
            max_bytes=self._cfg.max_bytes,
            by_kind=by_kind,
            dead_letters_by_reason=by_reason,
        )

    async def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        """Newest first: what an operator looking at a problem wants to see."""

        async def fn(conn: aiosqlite.Connection) -> list[DeadLetter]:
            rows = await conn.execute_fetchall(
                "SELECT ts, source, topic, reason, detail, payload FROM dead_letters "
                "ORDER BY id DESC LIMIT ?", (max(0, limit),))
            return [DeadLetter(ts=r[0], source=r[1], topic=r[2], reason=r[3], detail=r[4],
                               payload=bytes(r[5])) for r in rows]

        return await self._read(fn)
