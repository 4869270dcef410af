"""Per-stream window state and its checkpoint format.

The aggregator's whole memory of one (device, metric) lives in a ``StreamState``;
``encode_state``/``decode_state`` turn it into the bytes the agent checkpoints in
the same SQLite transaction as the summaries of a tick, so the format is
versioned and every double round-trips bit for bit.
"""

from __future__ import annotations

import struct

from edge_agent.preprocess.running_stats import ACCUMULATOR_BYTES, Accumulator

__all__ = ["ClosedWindow", "StreamState", "decode_state", "encode_state", "state_key"]

# version, flags, window index, length, held start/end, last sent mean, held windows, touched,
# pending summaries, len(device), len(metric)
_KEY_HEAD = struct.Struct("<BBqddddIdIHH")
_SPAN = struct.Struct("<dd")
_STATE_VERSION = 1
_F_OPEN, _F_HELD, _F_SENT = 1, 2, 4


def state_key(device: str, metric: str) -> str:
    """Checkpoint key of one (device, metric) stream."""
    return f"win:{device}/{metric}"


class ClosedWindow:
    """A finished summary waiting for ``poll``: statistics plus its time span."""

    __slots__ = ("acc", "end", "start")

    def __init__(self, acc: Accumulator, start: float, end: float) -> None:
        self.acc = acc
        self.start = start
        self.end = end


class StreamState:
    """Everything the aggregator knows about one (device, metric)."""

    __slots__ = (
        "acc",
        "held",
        "held_end",
        "held_n",
        "held_start",
        "idx",
        "last_sent",
        "length",
        "pending",
        "touched",
    )

    def __init__(self, length: float) -> None:
        self.length = length  # window length of the open window (a reload changes only new ones)
        self.idx = 0  # window index of the open window (valid when acc is not None)
        self.acc: Accumulator | None = None
        self.held: Accumulator | None = None  # windows swallowed by the deadband, not yet sent
        self.held_start = 0.0
        self.held_end = 0.0
        self.held_n = 0
        self.last_sent: float | None = None  # mean of the last sent summary (deadband reference)
        self.touched = 0.0  # caller's wall clock at the last reading
        self.pending: list[ClosedWindow] | None = None  # closed by event time, handed out by poll()


def encode_state(key: tuple[str, str], st: StreamState) -> bytes:
    flags = (
        (_F_OPEN if st.acc is not None else 0)
        | (_F_HELD if st.held is not None else 0)
        | (_F_SENT if st.last_sent is not None else 0)
    )
    dev = key[0].encode()
    met = key[1].encode()
    pending = st.pending or []
    parts = [
        _KEY_HEAD.pack(
            _STATE_VERSION,
            flags,
            st.idx,
            st.length,
            st.held_start,
            st.held_end,
            st.last_sent if st.last_sent is not None else 0.0,
            st.held_n,
            st.touched,
            len(pending),
            len(dev),
            len(met),
        ),
        dev,
        met,
    ]
    if st.acc is not None:
        parts.append(st.acc.to_bytes())
    if st.held is not None:
        parts.append(st.held.to_bytes())
    for c in pending:
        parts.append(_SPAN.pack(c.start, c.end))
        parts.append(c.acc.to_bytes())
    return b"".join(parts)


def decode_state(blob: bytes) -> tuple[tuple[str, str], StreamState]:
    try:
        (version, flags, idx, length, held_start, held_end, last_sent, held_n, touched, npend, ldev, lmet) = (
            _KEY_HEAD.unpack_from(blob, 0)
        )
        if version != _STATE_VERSION:
            raise ValueError(f"unknown window state version {version}")
        pos = _KEY_HEAD.size
        device = blob[pos : pos + ldev].decode()
        pos += ldev
        metric = blob[pos : pos + lmet].decode()
        pos += lmet
        st = StreamState(length)
        st.idx = idx
        st.held_start = held_start
        st.held_end = held_end
        st.held_n = held_n
        st.touched = touched
        st.last_sent = last_sent if flags & _F_SENT else None
        if flags & _F_OPEN:
            st.acc = Accumulator.from_bytes(blob[pos : pos + ACCUMULATOR_BYTES])
            pos += ACCUMULATOR_BYTES
        if flags & _F_HELD:
            st.held = Accumulator.from_bytes(blob[pos : pos + ACCUMULATOR_BYTES])
            pos += ACCUMULATOR_BYTES
        if npend:
            st.pending = []
            for _ in range(npend):
                start, end = _SPAN.unpack_from(blob, pos)
                pos += _SPAN.size
                acc = Accumulator.from_bytes(blob[pos : pos + ACCUMULATOR_BYTES])
                st.pending.append(ClosedWindow(acc, start, end))
                pos += ACCUMULATOR_BYTES
        if pos != len(blob):
            raise ValueError(f"{len(blob) - pos} trailing bytes")
    except (struct.error, UnicodeDecodeError) as exc:
        raise ValueError(f"corrupt window state: {exc}") from exc
    return (device, metric), st
