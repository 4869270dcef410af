"""The store's file: tables, pragmas, schema version, and the totals read back at open.

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
"""

from __future__ import annotations

from pathlib import Path

import aiosqlite

from edge_agent.outbox.ledger import NEXT_SEQ_KEY, Totals, read_counts
from edge_agent.protocol.errors import OutboxError

__all__ = ["SCHEMA_VERSION", "prepare", "read_totals"]

SCHEMA_VERSION = 1

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


async def prepare(conn: aiosqlite.Connection, path: Path) -> None:
    """Set the pragmas and create or check the schema; ``path`` only names the file in errors."""
    async with conn.execute("PRAGMA journal_mode=WAL") as cur:
        row = await cur.fetchone()
    if row is None or str(row[0]).lower() != "wal":
        raise OutboxError(f"{path}: cannot enable WAL journal (got {row and row[0]!r})")
    await conn.execute("PRAGMA synchronous=FULL")  # why: see module docstring
    await conn.execute("PRAGMA busy_timeout=5000")  # an operator's reader may hold a lock briefly
    await conn.execute("PRAGMA journal_size_limit=33554432")  # shrink the WAL back after big ticks
    async with conn.execute("PRAGMA user_version") as cur:
        row = await cur.fetchone()
    version = int(row[0]) if row else 0
    if version > SCHEMA_VERSION:
        raise OutboxError(f"{path}: schema version {version} is newer than this agent's")
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


async def read_totals(conn: aiosqlite.Connection, path: Path) -> Totals:
    """Row and byte totals, the next sequence number and the counters, as the file holds them."""
    async with conn.execute("SELECT COUNT(*), COALESCE(SUM(size), 0), MAX(seq) FROM outbox") as cur:
        row = await cur.fetchone()
    if row is None:  # an aggregate always returns one row; this guards a broken file
        raise OutboxError(f"{path}: cannot read the outbox totals")
    rows, nbytes = int(row[0]), int(row[1])
    max_seq = row[2]
    async with conn.execute("SELECT COUNT(*) FROM dead_letters") as cur:
        row = await cur.fetchone()
    dl_rows = int(row[0]) if row else 0
    stored_next = 1
    async with conn.execute("SELECT value FROM meta WHERE key = ?", (NEXT_SEQ_KEY,)) as cur:
        row = await cur.fetchone()
    if row is not None:
        stored_next = int(row[0])
    if max_seq is not None:
        stored_next = max(stored_next, int(max_seq) + 1)
    return Totals(rows=rows, bytes=nbytes, dl_rows=dl_rows, next_seq=stored_next,
                  persisted_next_seq=stored_next, counts=await read_counts(conn))
