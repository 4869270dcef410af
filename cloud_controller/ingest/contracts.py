"""The store protocols of the controller's non-resource state, one per kind of row.

Why protocols and two backends: the embedded controller keeps summaries, hard
examples and its fleet cache in SQLite files beside it (nothing to run), while
replicas of a cluster controller must share one store, or a message redelivered
to the other replica counts twice and a restarted pod forgets everything
(``docs/cluster.md``, "Shared store"). ``ingest/backends.py`` picks the backend
from ``store_dsn``; the contract tests (``tests/cloud/test_ingest_store_contract.py``)
run the same assertions against both.

Every backend deduplicates per (node, message id): ids are unique per node (the
node numbers its own), not across the fleet, so a key on the id alone lets one
node's message swallow another's.

Writes are synchronous and transactional: ingest stores a burst, and acks it
only after ``add_many`` returned (store-then-ack). A backend that cannot reach
its database raises :class:`StoreUnavailable` (transient: the caller keeps the
burst unacknowledged and retries) or :class:`StoreConnectError` with
``permanent=True`` (wrong password, unknown database: retrying will not help).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from edge_agent.protocol import messages as wire
from edge_agent.protocol.errors import EdgeLoopError, TransientError

__all__ = [
    "DesiredRow",
    "FleetRecords",
    "HardExampleStoreProtocol",
    "NodeTotals",
    "SeqState",
    "StatusRow",
    "StoreConnectError",
    "StoreUnavailable",
    "StoredHardExample",
    "SummaryStoreProtocol",
]


@dataclass(frozen=True)
class NodeTotals:
    node: str
    batches: int
    readings: int
    windows: int
    bytes: int
    duplicates: int
    first_seq: int | None  # of the current epoch
    last_seq: int | None  # of the current epoch
    seq_gaps: int  # sequence numbers never received, summed over the epochs (each between its first and last)
    resets: int = 0  # times the node's sequence started again (epochs after the first)


@dataclass
class SeqState:
    """A node's current sequence epoch (``ingest/seq_epochs.py``) and its gaps over all epochs."""

    epoch: int
    first: int
    last: int
    gaps: int


@dataclass(frozen=True)
class StoredHardExample:
    id: str
    received: float
    created: float
    node: str
    task: str
    text: str | None
    features: list[float] | None
    label: str | None  # the teacher's label (intent for chat)
    confidence: float | None  # the teacher's confidence
    teacher: dict[str, Any] | None
    student: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "received": self.received,
            "created": self.created,
            "node": self.node,
            "task": self.task,
            "text": self.text,
            "features": self.features,
            "label": self.label,
            "confidence": self.confidence,
            "teacher": self.teacher,
            "student": self.student,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> StoredHardExample:
        return cls(
            id=str(d["id"]),
            received=float(d["received"]),
            created=float(d["created"]),
            node=str(d["node"]),
            task=str(d["task"]),
            text=d.get("text"),
            features=d.get("features"),
            label=d.get("label"),
            confidence=d.get("confidence"),
            teacher=d.get("teacher"),
            student=dict(d.get("student") or {}),
        )


class StoreUnavailable(TransientError):
    """The shared store cannot be reached right now; nothing of the failed call was committed."""


class StoreConnectError(EdgeLoopError):
    """Connecting to the store failed: names the host and the reason, and whether retrying may help."""

    def __init__(self, host: str, reason: str, *, permanent: bool) -> None:
        self.host = host
        self.reason = reason
        self.permanent = permanent
        kind = "permanent" if permanent else "transient"
        super().__init__(f"cannot connect to the store at {host} ({kind}): {reason}")


class SummaryStoreProtocol(Protocol):
    """Summary batches, their per-node totals, duplicates and sequence epochs, and the rejects table."""

    def open(self) -> Any: ...

    def close(self) -> None: ...

    def add_many(self, items: Sequence[tuple[wire.SummaryBatch, float, int]]) -> list[bool]:
        """Store ``(batch, received, payload_bytes)`` in one transaction; per item, new or duplicate."""
        ...

    def sequence(self, node: str) -> SeqState | None:
        """The node's sequence epoch as of the last ``add_many`` (None before its first batch)."""
        ...

    def reject(self, reason: str, detail: str = "") -> None: ...

    def reject_many(self, rejects: Sequence[tuple[str, str]]) -> None:
        """Count ``(reason, detail)`` rejects (summaries and hard examples alike) in one transaction."""
        ...

    def rejects(self) -> dict[str, int]: ...

    def totals(self) -> list[NodeTotals]: ...


class HardExampleStoreProtocol(Protocol):
    """Hard examples: stored once per (node, id), read back by the distillation job."""

    def open(self) -> Any: ...

    def close(self) -> None: ...

    def add_many(self, items: Sequence[tuple[wire.HardExample, float]]) -> list[bool]: ...

    def prune(self, older_than: float) -> int: ...

    def since(
        self,
        ts: float | None,
        task: str,
        min_confidence: float | None = None,
        limit: int | None = None,
    ) -> list[StoredHardExample]: ...

    def count(self, task: str | None = None) -> int: ...

    def counts(self) -> dict[str, dict[str, int]]: ...


StatusRow = tuple[str, str, float, float]  # node, Status JSON, received, last_seen
DesiredRow = tuple[str, int, str, str | None, str | None, int, str, float]  # fleet_desired's columns


class FleetRecords(Protocol):
    """Where the fleet cache persists: statuses (batched per burst) and published desired states."""

    def load(self) -> tuple[list[StatusRow], list[DesiredRow]]: ...

    def save_statuses(self, rows: Sequence[StatusRow]) -> None: ...

    def save_desired(self, row: DesiredRow) -> None: ...

    def delete_desired(self, node: str) -> None: ...

    def close(self) -> None: ...
