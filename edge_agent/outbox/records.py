"""What goes into the outbox, what the uplink reads back, and what one tick did to it."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["CommitResult", "OutboxRecord", "OutboxRow", "record_size"]


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
