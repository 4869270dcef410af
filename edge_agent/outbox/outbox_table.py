"""The ``outbox`` table: storing a tick's records under the size limit, paging, deleting, expiring.

Every function runs inside a transaction or read the store opened; none commits.

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
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import aiosqlite

from edge_agent.outbox.ledger import TxEffects
from edge_agent.outbox.records import OutboxRecord, OutboxRow, record_size
from edge_agent.protocol.errors import OutboxError

__all__ = [
    "Placement",
    "delete_older_than",
    "delete_seqs",
    "oldest_created",
    "select_pending",
    "store_records",
]

# One statement binds at most this many parameters (SQLite's limit is 32766 since 3.32).
_CHUNK = 500


@dataclass
class Placement:
    """Where a tick's records ended up: stored, refused (too big or no room), or dropped to make room."""

    stored: list[int] = field(default_factory=list)
    refused: list[int] = field(default_factory=list)
    oversized: list[int] = field(default_factory=list)
    dropped: list[int] = field(default_factory=list)
    dropped_bytes: int = 0


async def store_records(
    conn: aiosqlite.Connection,
    tx: TxEffects,
    recs: Sequence[tuple[int, OutboxRecord]],
    max_bytes: int,
    policy: str,
) -> Placement:
    """Insert ``recs`` under the ``when_full`` policy (see module doc); counts go to ``tx``."""
    out = Placement()
    rows_to_insert: list[tuple[Any, ...]] = []
    for seq, rec in recs:
        size = record_size(rec)
        if size > max_bytes:
            out.refused.append(seq)
            out.oversized.append(seq)
            tx.add("rejected_full", rec.kind)
            continue
        if policy == "reject_new" and tx.bytes + size > max_bytes:
            out.refused.append(seq)
            tx.add("rejected_full", rec.kind)
            continue
        rows_to_insert.append((seq, rec.id, rec.topic, float(rec.created), size, rec.kind,
                               bytes(rec.payload)))
        out.stored.append(seq)
        tx.bytes += size
        tx.rows += 1
        tx.add("enqueued", rec.kind)
    if rows_to_insert:
        await conn.executemany(
            "INSERT INTO outbox(seq, id, topic, created, size, kind, payload) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)", rows_to_insert)
    if tx.bytes > max_bytes:  # only drop_oldest gets here
        await _drop_oldest(conn, tx, tx.bytes - max_bytes, out)
    return out


async def _drop_oldest(conn: aiosqlite.Connection, tx: TxEffects, need: int, out: Placement) -> None:
    """Delete the lowest seqs until ``need`` bytes are free."""
    dropped = out.dropped
    dropped_bytes = 0
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
            raise OutboxError(f"drop_oldest deleted {cur2.rowcount} rows, expected {len(dropped)}")
        await cur2.close()
    tx.bytes -= dropped_bytes
    tx.rows -= len(dropped)
    out.dropped_bytes = dropped_bytes
    gone = set(dropped)
    out.stored = [s for s in out.stored if s not in gone]


async def select_pending(conn: aiosqlite.Connection, limit: int, after_seq: int) -> list[OutboxRow]:
    """Oldest first, ``seq > after_seq``."""
    rows = await conn.execute_fetchall(
        "SELECT seq, id, topic, payload, created, kind FROM outbox "
        "WHERE seq > ? ORDER BY seq LIMIT ?", (after_seq, max(0, limit)))
    return [OutboxRow(seq=r[0], id=r[1], topic=r[2], payload=bytes(r[3]), created=r[4], kind=r[5])
            for r in rows]


async def delete_seqs(conn: aiosqlite.Connection, tx: TxEffects, wanted: Sequence[int], counter: str) -> int:
    """Delete the rows with these seqs, counting each under ``counter``; unknown seqs are ignored."""
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
    return n


async def delete_older_than(conn: aiosqlite.Connection, tx: TxEffects, cutoff: float) -> int:
    """Delete rows created before ``cutoff``, counted as ``dropped_age``."""
    rows = list(await conn.execute_fetchall(
        "DELETE FROM outbox WHERE created < ? RETURNING size, kind", (cutoff,)))
    for size, kind in rows:
        tx.add("dropped_age", kind)
        tx.bytes -= size
        tx.rows -= 1
    return len(rows)


async def oldest_created(conn: aiosqlite.Connection) -> float | None:
    async with conn.execute("SELECT MIN(created) FROM outbox") as cur:
        row = await cur.fetchone()
    return None if row is None or row[0] is None else float(row[0])
