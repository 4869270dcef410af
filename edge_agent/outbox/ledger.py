"""The store's totals and counters: kept in memory, persisted in the ``meta`` table by each transaction.

Every record that leaves the outbox other than by delivery is counted per kind, so
for every kind ``rows == enqueued - acked - discarded - dropped_full - dropped_age``.
A transaction works on a :class:`TxEffects` copy; the store applies it to its
:class:`Totals` only after COMMIT, so a rolled-back or cancelled transaction leaves
the in-memory figures as they were on disk.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiosqlite

__all__ = [
    "COUNT_PREFIX",
    "KIND_COUNTERS",
    "NEXT_SEQ_KEY",
    "RESERVED_META_PREFIX",
    "OutboxStats",
    "Totals",
    "TxEffects",
    "build_stats",
    "prefix_upper",
    "read_counts",
]

# Keys under this prefix belong to the store (counters, next_seq); set_meta refuses them.
RESERVED_META_PREFIX = "store."
NEXT_SEQ_KEY = "store.next_seq"
COUNT_PREFIX = "store.count."

# Counter names kept per record kind (dead_letters is kept per reason).
KIND_COUNTERS = ("enqueued", "acked", "discarded", "dropped_full", "dropped_full_bytes",
                 "dropped_age", "rejected_full")


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


def prefix_upper(prefix: str) -> str | None:
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
    return f"{COUNT_PREFIX}{name}.{kind}"


@dataclass
class Totals:
    """What the store knows without reading the file: row and byte totals, sequence numbers, counters."""

    rows: int = 0
    bytes: int = 0
    dl_rows: int = 0
    next_seq: int = 0  # next number reserve_seq hands out
    persisted_next_seq: int = 0
    counts: dict[tuple[str, str], int] = field(default_factory=dict)

    def apply(self, tx: TxEffects) -> None:
        """Take over a committed transaction's effects."""
        self.rows, self.bytes, self.dl_rows = tx.rows, tx.bytes, tx.dl_rows
        self.persisted_next_seq = max(self.persisted_next_seq, tx.next_seq)
        self.next_seq = max(self.next_seq, self.persisted_next_seq)
        self.counts.update(tx.counts)


class TxEffects:
    """In-memory effects of a transaction, applied only after it commits."""

    def __init__(self, totals: Totals) -> None:
        self.rows = totals.rows
        self.bytes = totals.bytes
        self.dl_rows = totals.dl_rows
        self.next_seq = totals.persisted_next_seq
        self.counts: dict[tuple[str, str], int] = {}
        self._base = totals.counts

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


async def read_counts(conn: aiosqlite.Connection) -> dict[tuple[str, str], int]:
    """Every persisted counter, keyed (name, kind)."""
    counts: dict[tuple[str, str], int] = {}
    upper = prefix_upper(COUNT_PREFIX)
    async with conn.execute(
        "SELECT key, value FROM meta WHERE key >= ? AND key < ?", (COUNT_PREFIX, upper)
    ) as cur:
        async for key, value in cur:
            name, _, kind = str(key)[len(COUNT_PREFIX):].partition(".")
            counts[(name, kind)] = int(value)
    return counts


def build_stats(totals: Totals, oldest_created: float | None, max_bytes: int) -> OutboxStats:
    """Fold the per-kind counters into the totals an operator and the metrics want."""
    by_kind: dict[str, dict[str, int]] = {}
    by_reason: dict[str, int] = {}
    sums = dict.fromkeys(KIND_COUNTERS, 0)
    for (name, kind), value in totals.counts.items():
        if name == "dead_letters":
            by_reason[kind] = value
        elif name in sums:
            sums[name] += value
            by_kind.setdefault(kind, dict.fromkeys(KIND_COUNTERS, 0))[name] = value
    return OutboxStats(
        rows=totals.rows,
        bytes=totals.bytes,
        oldest_created=oldest_created,
        enqueued_total=sums["enqueued"],
        acked_total=sums["acked"],
        dropped_full_total=sums["dropped_full"],
        dropped_full_bytes=sums["dropped_full_bytes"],
        dropped_age_total=sums["dropped_age"],
        rejected_full_total=sums["rejected_full"],
        dead_letters=totals.dl_rows,
        dead_letters_total=sum(by_reason.values()),
        discarded_total=sums["discarded"],
        next_seq=totals.next_seq,
        max_bytes=max_bytes,
        by_kind=by_kind,
        dead_letters_by_reason=by_reason,
    )
