"""Dead letters: rejected inbound messages kept for an operator, in a bounded table.

The newest ``dead_letter_max_rows`` are kept; the payload is truncated to 1 KiB and the
text fields to 1024 characters, so a flood of garbage cannot grow the database.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import aiosqlite

from edge_agent.outbox.ledger import TxEffects

__all__ = [
    "DEAD_LETTER_PAYLOAD_MAX",
    "DEAD_LETTER_TEXT_MAX",
    "DeadLetter",
    "insert_dead_letters",
    "newest_dead_letters",
]

DEAD_LETTER_PAYLOAD_MAX = 1024
DEAD_LETTER_TEXT_MAX = 1024


@dataclass(frozen=True)
class DeadLetter:
    """A rejected inbound message kept for an operator; the store truncates payload and text."""

    ts: float
    source: str
    topic: str
    reason: str
    detail: str
    payload: bytes


async def insert_dead_letters(
    conn: aiosqlite.Connection, tx: TxEffects, letters: Sequence[DeadLetter], max_rows: int
) -> int:
    """Store ``letters`` (truncated) in the caller's transaction; returns how many old rows were trimmed."""
    await conn.executemany(
        "INSERT INTO dead_letters(ts, source, topic, reason, detail, payload) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        [(d.ts, d.source[:DEAD_LETTER_TEXT_MAX], d.topic[:DEAD_LETTER_TEXT_MAX],
          d.reason[:DEAD_LETTER_TEXT_MAX], d.detail[:DEAD_LETTER_TEXT_MAX],
          bytes(d.payload[:DEAD_LETTER_PAYLOAD_MAX])) for d in letters],
    )
    for d in letters:
        tx.add("dead_letters", d.reason[:DEAD_LETTER_TEXT_MAX])
    tx.dl_rows += len(letters)
    trimmed = 0
    excess = tx.dl_rows - max_rows
    if excess > 0:
        cur = await conn.execute(
            "DELETE FROM dead_letters WHERE id IN "
            "(SELECT id FROM dead_letters ORDER BY id LIMIT ?)", (excess,))
        trimmed = cur.rowcount
        await cur.close()
        tx.dl_rows -= trimmed
    return trimmed


async def newest_dead_letters(conn: aiosqlite.Connection, limit: int) -> list[DeadLetter]:
    """Newest first: what an operator looking at a problem wants to see."""
    rows = await conn.execute_fetchall(
        "SELECT ts, source, topic, reason, detail, payload FROM dead_letters "
        "ORDER BY id DESC LIMIT ?", (max(0, limit),))
    return [DeadLetter(ts=r[0], source=r[1], topic=r[2], reason=r[3], detail=r[4],
                       payload=bytes(r[5])) for r in rows]
