"""Recognising broker redeliveries of messages the agent has already absorbed.

Manual acknowledgement leaves a gap: a message absorbed into state (and maybe
already committed) but not yet acknowledged is redelivered by the broker after
a lost connection or a crash between the commit and the PUBACK. MQTT resends it
with the same packet id and DUP=1, and a broker never reuses a packet id that is
still unacknowledged. So a DUP message whose packet id *and* content match one
we absorbed is the same message again: acknowledge it, do not count it twice.

The record of absorbed packet ids is committed with the state it produced (keys
``ack:{mid}``), so the check also holds across a SIGKILL. Packet ids are 16-bit,
which bounds the record at 65,535 entries; entries older than ``window_s`` are
pruned because a redelivery comes first thing after a reconnect.
"""

from __future__ import annotations

import hashlib
import struct
import time

PREFIX = "ack:"
_REC = struct.Struct("!8sd")


def _digest(topic: str, payload: bytes) -> bytes:
    h = hashlib.blake2b(topic.encode(), digest_size=8)
    h.update(payload)
    return h.digest()


class RedeliveryGuard:
    def __init__(self, window_s: float = 300.0, prune_every_s: float = 5.0) -> None:
        self.window_s = window_s
        self._prune_every = prune_every_s
        self._pending: dict[int, bytes] = {}
        self._recent: dict[int, tuple[bytes, float]] = {}
        self._last_prune = 0.0
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
        """What to commit with this tick: the ids absorbed since the last one, and pruned ids."""
        now = time.time() if now is None else now
        ups = {f"{PREFIX}{mid}": _REC.pack(d, now) for mid, d in self._pending.items()}
        for mid, d in self._pending.items():
            self._recent[mid] = (d, now)
        self._pending.clear()
        dels: list[str] = []
        if now - self._last_prune >= self._prune_every:
            self._last_prune = now
            old = [mid for mid, (_, ts) in self._recent.items() if now - ts > self.window_s]
            for mid in old:
                del self._recent[mid]
                if f"{PREFIX}{mid}" not in ups:
                    dels.append(f"{PREFIX}{mid}")
        return ups, dels

    def restore(self, states: dict[str, bytes]) -> None:
        for key, raw in states.items():
            if key.startswith(PREFIX):
                d, ts = _REC.unpack(raw)
                self._recent[int(key[len(PREFIX) :])] = (d, ts)
