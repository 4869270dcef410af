"""The edge agent's one durable database: outbox, checkpointed state, dead letters, counters.

Why one database and one transaction per tick
----------------------------------------------
The agent reads device messages with MQTT QoS 1 and, every ``commit_interval_s``,
commits one *tick*: the new outbox records, the processing state that changed
(open sensor windows, dialogue sessions), the dead letters and the counters, all
in ONE SQLite transaction (:meth:`AgentStore.commit_tick`). Only after that commit
returns does it acknowledge the inbound messages to the broker. After a SIGKILL or
a power loss either the whole tick is on disk (and its messages were, or will
harmlessly be, acked) or none of it is (and the broker redelivers the messages,
which are processed again from the state of the previous tick). A message is
therefore counted exactly once, and the cloud drops uplink duplicates by record ``id``.

The rooms of the file: :mod:`~edge_agent.outbox.ddl` (tables, pragmas, why
``synchronous=FULL``), :mod:`~edge_agent.outbox.outbox_table` (the size limit and
what happens when full), :mod:`~edge_agent.outbox.dead_letters`,
:mod:`~edge_agent.outbox.ledger` (totals, per-kind counters, stats). This module
owns the connection and the transactions; the others only run statements inside them.

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
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite

from edge_agent.config import OutboxConfig
from edge_agent.outbox import outbox_table
from edge_agent.outbox.ddl import prepare, read_totals
from edge_agent.outbox.dead_letters import DeadLetter, insert_dead_letters, newest_dead_letters
from edge_agent.outbox.ledger import (
    NEXT_SEQ_KEY,
    RESERVED_META_PREFIX,
    OutboxStats,
    Totals,
    TxEffects,
    build_stats,
    prefix_upper,
)
from edge_agent.outbox.records import CommitResult, OutboxRecord, OutboxRow
from edge_agent.protocol.errors import OutboxError

__all__ = ["AgentStore"]

T = TypeVar("T")


class AgentStore:
    """Durable outbox + state + dead letters + counters in one SQLite file (see module doc)."""

    def __init__(self, path: Path, cfg: OutboxConfig) -> None:
        self._path = Path(path)
        self._cfg = cfg
        self._conn: aiosqlite.Connection | None = None
        self._lock = asyncio.Lock()
        self._background: set[asyncio.Task[Any]] = set()
        self._totals = Totals()

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
            await prepare(conn, self._path)
            totals = await read_totals(conn, self._path)
        except (sqlite3.Error, ValueError) as exc:
            if conn is not None:
                await conn.close()
            raise OutboxError(f"cannot open {self._path}: {exc}") from exc
        except BaseException:
            if conn is not None:
                await conn.close()
            raise
        self._totals = totals
        self._conn = conn

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

    def _apply(self, tx: TxEffects) -> Callable[[], None]:
        return lambda: self._totals.apply(tx)

    # ------------------------------------------------------------------ ticks

    def reserve_seq(self) -> int:
        """Next per-node sequence number; persisted by the commit_tick that stores it."""
        self._require()
        seq = self._totals.next_seq
        self._totals.next_seq += 1
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
            tx = TxEffects(self._totals)
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
                trimmed = await insert_dead_letters(conn, tx, dead_letters, self._cfg.dead_letter_max_rows)
            if recs:
                tx.next_seq = max(tx.next_seq, self._totals.next_seq, *(s + 1 for s, _ in recs))
            placed = await outbox_table.store_records(conn, tx, recs, max_bytes, policy)
            persisted = self._totals.persisted_next_seq
            extra = [(NEXT_SEQ_KEY, tx.next_seq)] if tx.next_seq != persisted else []
            await tx.write_counts(conn, extra)
            result = CommitResult(
                stored=tuple(placed.stored), dropped=tuple(placed.dropped),
                dropped_bytes=placed.dropped_bytes, refused=tuple(placed.refused),
                oversized=tuple(placed.oversized), dead_letters_trimmed=trimmed, committed=True,
            )
            return result, self._apply(tx)

        return await self._transaction(body)

    # ------------------------------------------------------------------ outbox

    async def pending(self, limit: int, after_seq: int = -1) -> list[OutboxRow]:
        """Oldest first, ``seq > after_seq``: page with the last seq of the previous page."""
        return await self._read(lambda conn: outbox_table.select_pending(conn, limit, after_seq))

    async def _remove(self, seqs: Iterable[int], counter: str) -> int:
        wanted = sorted({int(s) for s in seqs})
        if not wanted:
            return 0

        async def body(conn: aiosqlite.Connection) -> tuple[int, Callable[[], None]]:
            tx = TxEffects(self._totals)
            n = await outbox_table.delete_seqs(conn, tx, wanted, counter)
            if n:
                await tx.write_counts(conn)
            return n, self._apply(tx)

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
            tx = TxEffects(self._totals)
            n = await outbox_table.delete_older_than(conn, tx, cutoff)
            if n:
                await tx.write_counts(conn)
            return n, self._apply(tx)

        # Cheap check first: most calls find nothing to expire and should not cost an fsync.
        oldest = await self._read(outbox_table.oldest_created)
        if oldest is None or oldest >= cutoff:
            return 0
        return await self._transaction(body)

    # ------------------------------------------------------------------ state, meta, stats

    async def load_state(self, prefix: str = "") -> dict[str, bytes]:
        upper = prefix_upper(prefix)

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
        oldest = await self._read(outbox_table.oldest_created)
        return build_stats(self._totals, oldest, self._cfg.max_bytes)

    async def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        """Newest first: what an operator looking at a problem wants to see."""
        return await self._read(lambda conn: newest_dead_letters(conn, limit))
