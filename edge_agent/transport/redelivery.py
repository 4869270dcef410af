"""Recognising broker redeliveries of messages the agent has already absorbed.

Manual acknowledgement leaves a gap: a message absorbed into state (and maybe
already committed) but not yet acknowledged is redelivered by the broker after
a lost connection or a crash between the commit and the PUBACK. MQTT resends it
with the same packet id and DUP=1, and a broker never reuses a packet id that is
still unacknowledged. So a DUP message whose packet id *and* content match one
we absorbed is the same message again: acknowledge it, do not count it twice.

The record of absorbed packet ids is committed with the state it produced (keys
``ack:{mid}``), so the check also holds across a SIGKILL. Entries older than
``window_s`` are pruned because a redelivery comes first thing after a reconnect.

Memory bound: packet ids are 16-bit, so the record is a fixed table of 65,536
slots (an 8-byte digest and a timestamp each, 1 MiB) in anonymous ``mmap``
memory: a page becomes resident only once a packet id in it is used, and no
Python object survives per message. Why not a dict: a burst of N messages left
3 small objects per message alive for ``window_s`` (up to ~12 MB at 65,535
ids), scattered over every pymalloc arena the burst touched, which kept ~18 MB
of otherwise free arenas resident after the burst (issue 15,
``bench/bench_agent.py --only memory``). The ids absorbed in the current tick
(``_pending``) are a dict that the next commit empties.
"""

from __future__ import annotations

import hashlib
import mmap
import struct
import time
from array import array

PREFIX = "ack:"
_REC = struct.Struct("!8sd")
# Slots of the table: every 16-bit packet id (0 is never used by MQTT for QoS > 0).
SLOTS = 1 << 16
_DIGEST = 8
# Pruning visits only blocks whose oldest stamp may be due: 256 blocks of 256 slots.
_BLOCK = 256


def _digest(topic: str, payload: bytes) -> bytes:
    h = hashlib.blake2b(topic.encode(), digest_size=_DIGEST)
    h.update(payload)
    return h.digest()


class RedeliveryGuard:
    def __init__(self, window_s: float = 300.0, prune_every_s: float = 5.0) -> None:
        self.window_s = window_s
        self._prune_every = prune_every_s
        self._pending: dict[int, bytes] = {}
        # Lazily mapped on the first committed id: an agent that never sees a QoS 1 message pays nothing.
        self._map: mmap.mmap | None = None
        self._digests: memoryview | None = None
        self._stamps: memoryview[float] | None = None  # seconds since the epoch; 0.0 = empty slot
        # Per block, a lower bound of its occupied slots' stamps (0.0: the block is empty).
        self._oldest = array("d", bytes(8 * (SLOTS // _BLOCK)))
        self._live = 0  # occupied slots
        self._last_prune = 0.0
        self.duplicates = 0

    @property
    def tracked(self) -> int:
        """Packet ids remembered (committed ones plus this tick's); at most ``SLOTS``."""
        return self._live + sum(1 for mid in self._pending if not self._occupied(mid))

    def _tables(self) -> tuple[memoryview, memoryview[float]]:
        if self._digests is None or self._stamps is None:
            self._map = mmap.mmap(-1, SLOTS * (_DIGEST + 8))
            view = memoryview(self._map)
            self._stamps = stamps = view[: SLOTS * 8].cast("d")
            self._digests = digests = view[SLOTS * 8 :]
            return digests, stamps
        return self._digests, self._stamps

    def _occupied(self, mid: int) -> bool:
        return self._stamps is not None and self._stamps[mid] != 0.0

    def _recent(self, mid: int) -> bytes | None:
        if self._stamps is None or self._digests is None or not 0 < mid < SLOTS:
            return None
        if self._stamps[mid] == 0.0:
            return None
        return bytes(self._digests[mid * _DIGEST : (mid + 1) * _DIGEST])

    def _remember(self, mid: int, d: bytes, ts: float) -> None:
        if not 0 < mid < SLOTS:
            return
        digests, stamps = self._tables()
        ts = ts if ts > 0.0 else 5e-324  # 0.0 marks an empty slot
        if stamps[mid] == 0.0:
            self._live += 1
        digests[mid * _DIGEST : (mid + 1) * _DIGEST] = d
        stamps[mid] = ts
        b = mid // _BLOCK
        low = self._oldest[b]
        if low == 0.0 or ts < low:
            self._oldest[b] = ts

    def is_duplicate(self, mid: int, dup: bool, topic: str, payload: bytes) -> bool:
        if not dup or mid == 0:
            return False
        d = _digest(topic, payload)
        seen = self._pending.get(mid)
        if seen is None:
            seen = self._recent(mid)
        if seen == d:
            self.duplicates += 1
            return True
        return False

    def absorbed(self, mid: int, topic: str, payload: bytes) -> None:
        if mid:
            self._pending[mid] = _digest(topic, payload)

    def take_state(self, now: float | None = None) -> tuple[dict[str, bytes], list[str]]:
        """What to commit with this tick: the ids absorbed since the last one, and pruned ids."""
        now = time.time() if now is None else now
        ups = {f"{PREFIX}{mid}": _REC.pack(d, now) for mid, d in self._pending.items()}
        for mid, d in self._pending.items():
            self._remember(mid, d, now)
        self._pending.clear()
        dels: list[str] = []
        if now - self._last_prune >= self._prune_every:
            self._last_prune = now
            pruned = self._prune(now - self.window_s)
            dels = [key for key in (f"{PREFIX}{mid}" for mid in pruned) if key not in ups]
        return ups, dels

    def _prune(self, cutoff: float) -> list[int]:
        """Empty the slots stamped before ``cutoff``; returns their packet ids. Only blocks whose oldest
        stamp is due are scanned, so the cost follows the ids pruned, not the table size."""
        stamps = self._stamps
        if stamps is None or self._live == 0:
            return []
        old: list[int] = []
        oldest = self._oldest
        for b, low in enumerate(oldest):
            if low == 0.0 or low >= cutoff:
                continue
            base = b * _BLOCK
            keep = 0.0
            for i, ts in enumerate(stamps[base : base + _BLOCK].tolist()):
                if ts == 0.0:
                    continue
                if ts < cutoff:
                    stamps[base + i] = 0.0
                    old.append(base + i)
                elif keep == 0.0 or ts < keep:
                    keep = ts
            oldest[b] = keep
        self._live -= len(old)
        return old

    def restore(self, states: dict[str, bytes]) -> None:
        for key, raw in states.items():
            if key.startswith(PREFIX):
                d, ts = _REC.unpack(raw)
                self._remember(int(key[len(PREFIX) :]), d, ts)
