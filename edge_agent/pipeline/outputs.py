"""What the pure core hands to the commit tick: messages to send, rejected input, device replies.

These are plain values, not outbox rows: the pipeline says what should leave
the node and what was refused; the tick decides how that is stored (see
``edge_agent/tick.py``). Keeping the store's types out of here keeps the core
free of anything that touches a disk.
"""

from __future__ import annotations

from dataclasses import dataclass

from edge_agent.protocol import messages as wire
from edge_agent.protocol import topics


@dataclass(frozen=True)
class Outgoing:
    """One message for the cloud; ``id`` is the cloud's dedup key."""

    id: str
    topic: str
    payload: bytes
    created: float  # wall time, for the outbox's age limit
    kind: str = "summary"  # summary | hard_example


@dataclass(frozen=True)
class RejectedInput:
    """An inbound message refused by validation, kept for an operator (already truncated)."""

    ts: float
    source: str
    topic: str
    reason: str
    detail: str
    payload: bytes


@dataclass
class Reply:
    """An answer to a device, published on the local broker after the tick commits."""

    topic: str
    payload: bytes


def hard_example_record(example: wire.HardExample) -> Outgoing:
    """The message for a hard example, sent to ``nodes/{node}/hard-examples`` by the uplink."""
    return Outgoing(
        id=example.id,
        topic=topics.hard_examples(example.node),
        payload=wire.dumps(example),
        created=example.created,
        kind="hard_example",
    )
