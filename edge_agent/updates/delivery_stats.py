"""Counters of model delivery, shared by the download and the manager that activates."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["DeliveryStats"]


@dataclass
class DeliveryStats:
    manifests_fetched: int = 0
    chunks_received: int = 0  # chunk messages used from the broker
    chunks_duplicate: int = 0  # chunk messages for chunks already held (should stay 0)
    chunks_from_disk: int = 0  # chunks resumed from a partial download
    chunks_bad: int = 0  # chunk messages that failed their signed digest (dropped, fetched again later)
    bytes_received: int = 0
    transfer_connects: int = 0
    activations: int = 0
    rollbacks: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
