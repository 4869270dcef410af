"""Per-session dialogue state with versioned, transactional updates.

A session is keyed by ``(device, session_id)``: session ids are chosen by
devices, so two devices may well both call theirs "s1", and must not share
(or overwrite) one dialogue.

Chat messages arrive over QoS 1: duplicates and reordering are normal, and a
handler can fail half-way (a model error, a cancelled task). So every update
names the version it produces, stale or duplicate versions are dropped, and
an update is applied to a copy that replaces the session only when the whole
handler succeeded: a session is always at its last consistent state.

Memory is bounded twice: sessions idle longer than ``ttl_s`` expire, and at
most ``max_sessions`` are kept (the least recently updated goes first).

Checkpoint rows are ``dlg:{device}/{session_id}`` (both are validated ids, so
the ``/`` is unambiguous). Rows of the old per-session layout (``dlg:{session_id}``,
written before sessions were keyed by device) cannot be given back to their
device: restore drops them, counts them in ``legacy_dropped`` and deletes them
with the next commit; those dialogues restart, as after a TTL expiry.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from types import TracebackType

from edge_agent.protocol.messages import DialogueView

__all__ = ["DialogueState", "DialogueStore", "SessionKey", "Transaction", "state_key"]

_PREFIX = "dlg:"

SessionKey = tuple[str, str]  # (device, session_id)


def state_key(device: str, session_id: str) -> str:
    return f"{_PREFIX}{device}/{session_id}"


@dataclass(slots=True)
class DialogueState:
    session_id: str
    intent: str | None = None
    slots: dict[str, str] = field(default_factory=dict)
    step: int = 0
    version: int = 0
    updated: float = 0.0
    device: str = ""

    @property
    def key(self) -> SessionKey:
        return (self.device, self.session_id)

    def to_view(self) -> DialogueView:
        return DialogueView(
            session_id=self.session_id,
            intent=self.intent,
            slots=dict(self.slots),
            step=self.step,
            version=self.version,
        )

    def copy(self) -> DialogueState:
        return replace(self, slots=dict(self.slots))

    def to_bytes(self) -> bytes:
        return json.dumps(
            {
                "device": self.device,
                "session_id": self.session_id,
                "intent": self.intent,
                "slots": self.slots,
                "step": self.step,
                "version": self.version,
                "updated": self.updated,
            },
            separators=(",", ":"),
            ensure_ascii=False,
        ).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> DialogueState:
        try:
            d = json.loads(data)
            state = cls(
                session_id=d["session_id"],
                intent=d["intent"],
                slots=d["slots"],
                step=d["step"],
                version=d["version"],
                updated=d["updated"],
                device=d["device"],
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"corrupt dialogue state: {exc}") from exc
        ok = (
            isinstance(state.session_id, str)
            and isinstance(state.device, str)
            and (state.intent is None or isinstance(state.intent, str))
            and isinstance(state.slots, dict)
            and all(isinstance(k, str) and isinstance(v, str) for k, v in state.slots.items())
            and type(state.step) is int
            and type(state.version) is int
            and isinstance(state.updated, int | float)
        )
        if not ok:
            raise ValueError("corrupt dialogue state: wrong field types")
        state.updated = float(state.updated)
        return state


class Transaction:
    """One update of one session, applied to a copy; commit on success, discard on error.

    Use it as a context manager: ``with txn as state:`` yields the working copy
    (also ``txn.state``); the helpers below cover the usual moves.
    """

    def __init__(
        self, store: DialogueStore, base: DialogueState | None, state: DialogueState, version: int, now: float
    ) -> None:
        self._store = store
        self._base = base
        self.state = state
        self.version = version
        self._now = now
        self._open = False
        self._done = False
        self.committed = False

    def set_intent(self, intent: str | None) -> None:
        self._check()
        self.state.intent = intent

    def merge_slots(self, slots: dict[str, str]) -> None:
        self._check()
        self.state.slots.update(slots)

    def bump_step(self, by: int = 1) -> None:
        self._check()
        self.state.step += by

    def _check(self) -> None:
        if self._done:
            raise RuntimeError("transaction already finished")

    def __enter__(self) -> DialogueState:
        """Yields the working copy; edit it directly or through the transaction's helpers."""
        if self._open or self._done:
            raise RuntimeError("a transaction can be entered once")
        self._open = True
        return self.state

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._done = True
        if exc_type is not None:
            self._store.rolled_back += 1
            return  # the exception propagates; the session was never touched
        self.committed = self._store._commit(self._base, self.state, self.version, self._now)


class DialogueStore:
    """All live sessions of one agent, LRU- and TTL-bounded, checkpointable.

    Not thread-safe; it lives on the agent's event loop. A transaction may
    span ``await``s: if another update of the same session commits first, the
    later commit is checked again and dropped as stale when it is no longer newer.
    """

    def __init__(self, max_sessions: int, ttl_s: float) -> None:
        if max_sessions < 1:
            raise ValueError("max_sessions must be >= 1")
        if ttl_s <= 0:
            raise ValueError("ttl_s must be > 0")
        self._max = max_sessions
        self._ttl = ttl_s
        self._sessions: OrderedDict[SessionKey, DialogueState] = OrderedDict()  # oldest update first
        self._dirty: set[SessionKey] = set()
        self._legacy_keys: list[str] = []  # old-layout checkpoint rows to delete
        self.legacy_dropped = 0
        self.stale_dropped = 0
        self.rolled_back = 0
        self.committed = 0
        self.expired = 0
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._sessions)

    def __contains__(self, key: object) -> bool:
        """``(device, session_id) in store``."""
        return key in self._sessions

    def get(self, device: str, session_id: str) -> DialogueState | None:
        """A copy of the session's committed state (reads do not refresh LRU order)."""
        state = self._sessions.get((device, session_id))
        return state.copy() if state is not None else None

    def begin(self, device: str, session_id: str, version: int | None, now: float) -> Transaction | None:
        """Start an update producing ``version`` (None: the next one); None if it is stale.

        A session past its TTL counts as gone even before ``expire`` runs, so
        the outcome does not depend on when housekeeping last ran.
        """
        key = (device, session_id)
        current = self._sessions.get(key)
        if current is not None and now - current.updated > self._ttl:
            self._remove(key)
            self.expired += 1
            current = None
        if version is None:
            version = current.version + 1 if current is not None else 1
        elif version < 0:
            raise ValueError("version must be >= 0")
        elif current is not None and version <= current.version:
            self.stale_dropped += 1
            return None
        work = current.copy() if current is not None else DialogueState(session_id=session_id, device=device)
        return Transaction(self, current, work, version, now)

    def _commit(self, base: DialogueState | None, state: DialogueState, version: int, now: float) -> bool:
        key = state.key
        current = self._sessions.get(key)
        if current is not base and current is not None and version <= current.version:
            self.stale_dropped += 1  # a newer update committed while this one was running
            return False
        state.version = version
        state.updated = now
        self._sessions[key] = state
        self._sessions.move_to_end(key)
        self._dirty.add(key)
        self.committed += 1
        while len(self._sessions) > self._max:
            oldest = next(iter(self._sessions))
            self._remove(oldest)
            self.evicted += 1
        return True

    def _remove(self, key: SessionKey) -> None:
        del self._sessions[key]
        self._dirty.add(key)

    def drop(self, device: str, session_id: str) -> bool:
        """Forget a session (the user ended it)."""
        key = (device, session_id)
        if key not in self._sessions:
            return False
        self._remove(key)
        return True

    def expire(self, now: float) -> list[SessionKey]:
        """Remove sessions idle longer than ``ttl_s``; returns their ``(device, session_id)`` keys."""
        gone = [key for key, st in self._sessions.items() if now - st.updated > self._ttl]
        for key in gone:
            self._remove(key)
        self.expired += len(gone)
        return gone

    # ---------------------------------------------------------------- checkpointing

    def snapshot(self) -> dict[str, bytes]:
        return {state_key(*key): st.to_bytes() for key, st in self._sessions.items()}

    def take_dirty(self) -> tuple[dict[str, bytes], list[str]]:
        """Sessions changed since the last call and the keys of sessions that went away."""
        states: dict[str, bytes] = {}
        removed: list[str] = self._legacy_keys
        self._legacy_keys = []
        for key in self._dirty:
            st = self._sessions.get(key)
            if st is None:
                removed.append(state_key(*key))
            else:
                states[state_key(*key)] = st.to_bytes()
        self._dirty.clear()
        return states, removed

    def restore(self, states: dict[str, bytes]) -> None:
        """Replace every session with a checkpoint; LRU order follows the update times."""
        loaded: list[DialogueState] = []
        legacy: list[str] = []
        for key, blob in states.items():
            if "/" not in key:  # the old per-session layout: whose device it was is unknown
                legacy.append(key)
                continue
            st = DialogueState.from_bytes(blob)
            if key != state_key(st.device, st.session_id):
                raise ValueError(
                    f"checkpoint key {key!r} does not match its session {st.device!r}/{st.session_id!r}"
                )
            loaded.append(st)
        loaded.sort(key=lambda s: s.updated)
        self._sessions = OrderedDict((st.key, st) for st in loaded)
        self._dirty.clear()
        self._legacy_keys = legacy
        self.legacy_dropped += len(legacy)
        while len(self._sessions) > self._max:
            self._remove(next(iter(self._sessions)))
            self.evicted += 1
