"""Recognising broker redeliveries of messages the agent has already absorbed.

Manual acknowledgement leaves a gap: a message absorbed into state (and maybe
already committed) but not yet acknowledged is redelivered by the broker after
a lost connection or a crash between the commit and the PUBACK. MQTT resends it
with the same packet id and DUP=1, and a broker never reuses a packet id that is
still unacknowledged. So a DUP message whose packet id *and* content match one
we absorbed is the same message again: acknowledge it, do not count it twice.

The record of absorbed packet ids is committed with the state it produced, so
the check also holds across a SIGKILL. Packet ids are 16-bit, which bounds the
record at 65,535 entries; entries older than ``window_s`` are pruned because a
redelivery comes first thing after a reconnect.

Storage: one state row per bucket of 256 packet ids (``acks:{bucket}``), holding
every live entry of that bucket, rewritten when one of its ids is absorbed.
Before, every absorbed message upserted its own row (``ack:{mid}``): one SQLite
row per inbound message was most of a commit's time under a backlog (profile in
docs/profiles/agent-single.md). A broker hands out packet ids in sequence, so a
commit of a thousand messages now rewrites four or five rows; on disk the record
stays bounded at 256 rows of at most 4.6 kB. Rows of the older per-id form are
read on restore and deleted at the first commit after it.

Memory bound: in memory the record is a fixed table of 65,536 slots (an 8-byte
digest and a timestamp each, 1 MiB) in anonymous ``mmap`` memory: a page becomes
resident only once a packet id in it is used, and no Python object survives per
message. Why not a dict: a burst of N messages left 3 small objects per message
alive for ``window_s`` (up to ~11 MB at 65,535 ids, tests/edge/test_memory_bounds.py),
scattered over every pymalloc arena the burst touched, which kept those arenas
resident after the burst (issue 15, ``bench/bench_agent.py --only memory``). The
ids absorbed in the current tick (``_pending``) are a dict that the next commit
empties.
"""

from __future__ import annotations

import hashlib
import mmap
import struct
import time
from array import array

PREFIX = "ack:"  # the older form, one row per packet id: read on restore, then deleted
BUCKET_PREFIX = "acks:"
_BUCKET_BITS = 8
_BUCKET = 1 << _BUCKET_BITS
_REC = struct.Struct("!8sd")
_ENTRY = struct.Struct("!H8sd")
# Slots of the table: every 16-bit packet id (0 is never used by MQTT for QoS > 0).
SLOTS = 1 << 16
_DIGEST = 8


def _digest(topic: str, payload: bytes) -> bytes:
    h = hashlib.blake2b(topic.encode(), digest_size=_DIGEST)
    h.update(payload)
    return h.digest()


def _bucket_key(bucket: int) -> str:
    return f"{BUCKET_PREFIX}{bucket}"


class RedeliveryGuard:
    def __init__(self, window_s: float = 300.0, prune_every_s: float = 5.0) -> None:
        self.window_s = window_s
        self._prune_every = prune_every_s
        self._pending: dict[int, bytes] = {}
        # Lazily mapped on the first committed id: an agent that never sees a QoS 1 message pays nothing.
        self._map: mmap.mmap | None = None
        self._digests: memoryview | None = None
        self._stamps: memoryview[float] | None = None  # seconds since the epoch; 0.0 = empty slot
        # Per bucket, a lower bound of its occupied slots' stamps (0.0: the bucket is empty).
        self._oldest = array("d", bytes(8 * (SLOTS // _BUCKET)))
        self._live = 0  # occupied slots
        self._last_prune = 0.0
        # Rows of the older per-id form found on restore: deleted with the next commit, which writes
        # their entries into buckets (``_dirty``).
        self._legacy: list[str] = []
        self._dirty: set[int] = set()
        self.duplicates = 0

    @property
    def tracked(self) -> int:
        """Packet ids remembered (committed ones plus this tick's); at most ``SLOTS - 1``."""
        return self._live + sum(1 for mid in self._pending if self._recent(mid) is None)

    def _tables(self) -> tuple[memoryview, memoryview[float]]:
        if self._digests is None or self._stamps is None:
            self._map = mmap.mmap(-1, SLOTS * (_DIGEST + 8))
            view = memoryview(self._map)
            self._stamps = stamps = view[: SLOTS * 8].cast("d")
            self._digests = digests = view[SLOTS * 8 :]
            return digests, stamps
        return self._digests, self._stamps

    def _recent(self, mid: int) -> bytes | None:
        if self._stamps is None or self._digests is None or not 0 < mid < SLOTS:
            return None
        if self._stamps[mid] == 0.0:
            return None
        return bytes(self._digests[mid * _DIGEST : (mid + 1) * _DIGEST])

    def _remember(self, mid: int, d: bytes, ts: float, *, keep_newer: bool = False) -> None:
        if not 0 < mid < SLOTS:
            return
        digests, stamps = self._tables()
        ts = ts if ts > 0.0 else 5e-324  # 0.0 marks an empty slot
        old = stamps[mid]
        if keep_newer and old > ts:
            return
        if old == 0.0:
            self._live += 1
        digests[mid * _DIGEST : (mid + 1) * _DIGEST] = d
        stamps[mid] = ts
        b = mid >> _BUCKET_BITS
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
        """What to commit with this tick: rewritten buckets of absorbed ids, and rows to delete."""
        now = time.time() if now is None else now
        dirty = {mid >> _BUCKET_BITS for mid in self._pending}
        if self._dirty:
            dirty |= self._dirty
            self._dirty = set()
        for mid, d in self._pending.items():
            self._remember(mid, d, now)
        self._pending.clear()
        dels, self._legacy = self._legacy, []
        if now - self._last_prune >= self._prune_every:
            self._last_prune = now
            dirty.update(mid >> _BUCKET_BITS for mid in self._prune(now - self.window_s))
        ups: dict[str, bytes] = {}
        for bucket in dirty:
            row = self._bucket_row(bucket)
            if row:
                ups[_bucket_key(bucket)] = row
            else:
                dels.append(_bucket_key(bucket))
        return ups, dels

    def _bucket_row(self, bucket: int) -> bytes:
        if self._stamps is None or self._digests is None:
            return b""
        first = bucket << _BUCKET_BITS
        digests = self._digests
        return b"".join(
            _ENTRY.pack(first + i, bytes(digests[(first + i) * _DIGEST : (first + i + 1) * _DIGEST]), ts)
            for i, ts in enumerate(self._stamps[first : first + _BUCKET].tolist())
            if ts != 0.0
        )

    def _prune(self, cutoff: float) -> list[int]:
        """Empty the slots stamped before ``cutoff``; returns their packet ids. Only buckets whose oldest
        stamp is due are scanned, so the cost follows the ids pruned, not the table size."""
        stamps = self._stamps
        if stamps is None or self._live == 0:
            return []
        old: list[int] = []
        oldest = self._oldest
        for b, low in enumerate(oldest):
            if low == 0.0 or low >= cutoff:
                continue
            base = b << _BUCKET_BITS
            keep = 0.0
            for i, ts in enumerate(stamps[base : base + _BUCKET].tolist()):
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
            if key.startswith(BUCKET_PREFIX):
                for mid, d, ts in _ENTRY.iter_unpack(raw):
                    self._remember(mid, d, ts, keep_newer=True)
            elif key.startswith(PREFIX):
                d, ts = _REC.unpack(raw)
                mid = int(key[len(PREFIX) :])
                self._remember(mid, d, ts, keep_newer=True)
                self._legacy.append(key)
                self._dirty.add(mid >> _BUCKET_BITS)
