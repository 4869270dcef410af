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
"""

from __future__ import annotations

import hashlib
import struct
import time

PREFIX = "ack:"  # the older form, one row per packet id: read on restore, then deleted
BUCKET_PREFIX = "acks:"
_BUCKET_BITS = 8
_REC = struct.Struct("!8sd")
_ENTRY = struct.Struct("!H8sd")


def _digest(topic: str, payload: bytes) -> bytes:
    h = hashlib.blake2b(topic.encode(), digest_size=8)
    h.update(payload)
    return h.digest()


def _bucket_key(bucket: int) -> str:
    return f"{BUCKET_PREFIX}{bucket}"


class RedeliveryGuard:
    def __init__(self, window_s: float = 300.0, prune_every_s: float = 5.0) -> None:
        self.window_s = window_s
        self._prune_every = prune_every_s
        self._pending: dict[int, bytes] = {}
        self._recent: dict[int, tuple[bytes, float]] = {}
        self._last_prune = 0.0
        # Rows of the older per-id form found on restore: deleted with the next commit, which writes
        # their entries into buckets (``_dirty``).
        self._legacy: list[str] = []
        self._dirty: set[int] = set()
        self.duplicates = 0

    def is_duplicate(self, mid: int, dup: bool, topic: str, payload: bytes) -> bool:
        if not dup or mid == 0:
            return False
        d = _digest(topic, payload)
        seen = self._pending.get(mid)
        if seen is None:
            rec = self._recent.get(mid)
            seen = rec[0] if rec is not None else None
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
        recent = self._recent
        dirty = {mid >> _BUCKET_BITS for mid in self._pending}
        if self._dirty:
            dirty |= self._dirty
            self._dirty = set()
        for mid, d in self._pending.items():
            recent[mid] = (d, now)
        self._pending.clear()
        dels, self._legacy = self._legacy, []
        if now - self._last_prune >= self._prune_every:
            self._last_prune = now
            old = [mid for mid, (_, ts) in recent.items() if now - ts > self.window_s]
            for mid in old:
                del recent[mid]
            dirty.update(mid >> _BUCKET_BITS for mid in old)
        ups: dict[str, bytes] = {}
        for bucket in dirty:
            first = bucket << _BUCKET_BITS
            rows = [
                _ENTRY.pack(mid, *rec)
                for mid in range(first, first + (1 << _BUCKET_BITS))
                if (rec := recent.get(mid)) is not None
            ]
            if rows:
                ups[_bucket_key(bucket)] = b"".join(rows)
            else:
                dels.append(_bucket_key(bucket))
        return ups, dels

    def restore(self, states: dict[str, bytes]) -> None:
        for key, raw in states.items():
            if key.startswith(BUCKET_PREFIX):
                for mid, d, ts in _ENTRY.iter_unpack(raw):
                    self._keep(mid, d, ts)
            elif key.startswith(PREFIX):
                d, ts = _REC.unpack(raw)
                mid = int(key[len(PREFIX) :])
                self._keep(mid, d, ts)
                self._legacy.append(key)
                self._dirty.add(mid >> _BUCKET_BITS)

    def _keep(self, mid: int, d: bytes, ts: float) -> None:
        rec = self._recent.get(mid)
        if rec is None or rec[1] <= ts:
            self._recent[mid] = (d, ts)
