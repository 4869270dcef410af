"""Tumbling windows per (device, metric): the edge's main data reduction.

Thousands of raw readings a second become one summary per metric per window.
Two properties matter more than anything else here:

* counts are exact: the ``count`` fields of everything emitted add up to the
  number of readings added, whatever the deadband, late data or crashes do.
  The cloud's "readings in" counter and the reduction ratio depend on it;
* the hot path is cheap: ``WindowAggregator.add`` is plain Python on
  ``__slots__`` objects, no pydantic or numpy per reading.

The statistics themselves are :mod:`edge_agent.preprocess.running_stats`; the
per-stream state and its checkpoint bytes are :mod:`edge_agent.preprocess.window_state`.
"""

from __future__ import annotations

import math

from edge_agent.config import WindowConfig
from edge_agent.preprocess.running_stats import Accumulator
from edge_agent.preprocess.window_state import (
    ClosedWindow,
    StreamState,
    decode_state,
    encode_state,
    state_key,
)
from edge_agent.protocol.messages import WindowSummary

__all__ = ["UnsummarisableWindow", "WindowAggregator"]

_MAX_IDX = 2**62


class UnsummarisableWindow:
    """A closed window whose statistics cannot go on the wire (e.g. restored from a checkpoint
    written before readings were bounded): dead-lettered so it cannot stop the commit for others."""

    __slots__ = ("count", "device", "end", "error", "metric", "start")

    def __init__(self, device: str, metric: str, start: float, end: float, count: int, error: str) -> None:
        self.device, self.metric, self.start, self.end = device, metric, start, end
        self.count = count
        self.error = error


class WindowAggregator:
    """Tumbling, epoch-aligned windows per (device, metric) with an exact-count deadband.

    Event time closes windows (a reading in a later window closes the open
    one); wall time closes windows whose stream went quiet. Closed windows wait
    inside the aggregator, as part of its checkpointed state, until ``poll`` or
    ``flush_all`` hands them out: a summary is always either in the checkpoint
    or in the caller's hands, never in between.

    The caller owns the clock: ``now`` is passed in, so tests are
    deterministic and the same code runs on ``time.monotonic`` or ``time.time``.
    Not thread-safe; it lives on the agent's event loop.
    """

    def __init__(self, cfg: WindowConfig) -> None:
        self.cfg = cfg
        self._keys: dict[tuple[str, str], StreamState] = {}
        self._dirty: set[tuple[str, str]] = set()
        self._has_pending: set[tuple[str, str]] = set()
        self.late_readings = 0
        self.readings = 0
        self.windows_closed = 0
        self.summaries_emitted = 0
        self.windows_held = 0  # windows the deadband merged instead of sending
        self.streams_closed_early = 0  # streams closed by the max_streams cap before their idle close
        # Closed windows that had no valid summary since the last take_unsummarisable(): their
        # readings are accounted here instead of in an emitted ``count``.
        self._unsummarisable: list[UnsummarisableWindow] = []

    @property
    def cfg(self) -> WindowConfig:
        return self._cfg

    @cfg.setter
    def cfg(self, cfg: WindowConfig) -> None:
        """Apply a reloaded config: open windows keep their length, new ones use the new one."""
        self._cfg = cfg
        self._length = float(cfg.length_s)
        self._deadband = float(cfg.deadband)
        self._max_hold = int(cfg.deadband_max_hold)
        self._idle = float(cfg.idle_close_s)
        self._max_streams = int(cfg.max_streams)

    @property
    def pending(self) -> int:
        """Closed summaries waiting for the next poll."""
        return sum(len(self._keys[k].pending or ()) for k in self._has_pending)

    def __len__(self) -> int:
        return len(self._keys)

    def open_windows(self, device: str | None = None, limit: int = 100) -> list[dict[str, object]]:
        """The open window of each stream (of ``device``), at most ``limit``: a live look for a cloud call."""
        out: list[dict[str, object]] = []
        for (dev, metric), st in self._keys.items():
            if len(out) >= limit:
                break
            if (device is not None and dev != device) or st.acc is None:
                continue
            acc = st.acc
            start = st.idx * st.length
            out.append(
                {
                    "device": dev,
                    "metric": metric,
                    "start": start,
                    "end": start + st.length,
                    "count": acc.count,
                    "mean": acc.mean,
                    "min": acc.min,
                    "max": acc.max,
                }
            )
        return out

    # ---------------------------------------------------------------- hot path

    def add(self, device: str, metric: str, ts: float, value: float, now: float) -> None:
        """Add one reading (``ts``: event time in epoch seconds, ``now``: the caller's wall clock).

        ``device`` and ``metric`` must already be valid wire ids (topics.validate_id,
        wire.Reading); a summary is validated when it is built.
        """
        if not (0.0 <= ts < math.inf) or value - value != 0.0:  # rejects NaN, ±Inf, negative ts
            raise ValueError(f"reading needs a finite value and a timestamp >= 0: ts={ts!r} value={value!r}")
        length = self._length
        idx = int(ts // length)
        if idx > _MAX_IDX:  # absurd event time: would not fit the checkpoint format
            raise ValueError(f"timestamp {ts!r} is out of range")
        key = (device, metric)
        st = self._keys.get(key)
        if st is None:
            st = self._keys[key] = StreamState(length)
        self._dirty.add(key)
        self.readings += 1
        st.touched = now
        acc = st.acc
        if acc is None:
            acc = st.acc = Accumulator()
            st.idx = idx
            st.length = length
        else:
            cur = idx if st.length == length else int(ts // st.length)
            if cur != st.idx:
                if cur > st.idx:
                    closed = ClosedWindow(acc, st.idx * st.length, (st.idx + 1) * st.length)
                    acc = st.acc = Accumulator()
                    st.idx = idx
                    st.length = length
                    self._route(key, st, closed)
                else:
                    # Late: its window was already closed; fold it into the open one so it
                    # is counted exactly once rather than dropped.
                    self.late_readings += 1
        acc.add(ts, value)

    def add_many(self, device: str, metric: str, ts: list[float], vs: list[float], now: float) -> None:
        """Readings of one stream, in arrival order: the same result as ``add`` for each.

        The first reading of every run in one window goes through ``add`` (which
        closes windows, counts late readings and validates); the rest of the run
        is folded in with one :meth:`Accumulator.from_run` merge. Batched
        telemetry spends most of its time here, so this is the hot path.
        """
        n = len(ts)
        i = 0
        key = (device, metric)
        while i < n:
            self.add(device, metric, ts[i], vs[i], now)
            st = self._keys[key]
            length, idx = st.length, st.idx
            j = i + 1
            while j < n:
                t, v = ts[j], vs[j]
                if not (0.0 <= t < math.inf) or v - v != 0.0 or int(t // length) != idx:
                    break
                j += 1
            if j - i > 4:
                acc = st.acc
                assert acc is not None
                acc.merge(Accumulator.from_run(ts[i + 1 : j], vs[i + 1 : j]))
                self.readings += j - i - 1
            else:
                for m in range(i + 1, j):
                    self.add(device, metric, ts[m], vs[m], now)
            i = j

    # ---------------------------------------------------------------- closing

    def _send(self, key: tuple[str, str], st: StreamState, closed: ClosedWindow) -> None:
        if st.pending is None:
            st.pending = [closed]
            self._has_pending.add(key)
        else:
            st.pending.append(closed)
        st.last_sent = closed.acc.mean_v

    def _flush_held(self, key: tuple[str, str], st: StreamState) -> None:
        if st.held is not None:
            self._send(key, st, ClosedWindow(st.held, st.held_start, st.held_end))
            st.held = None
            st.held_n = 0

    def _route(self, key: tuple[str, str], st: StreamState, closed: ClosedWindow) -> None:
        """Send a closed window, or hold it when it stays within the deadband."""
        self.windows_closed += 1
        acc = closed.acc
        ref = st.last_sent
        db = self._deadband
        if (
            db > 0.0
            and ref is not None
            and abs(acc.mean_v - ref) <= db
            and abs(acc.min - ref) <= db
            and abs(acc.max - ref) <= db
        ):
            self.windows_held += 1
            if st.held is None:
                st.held = acc
                st.held_start = closed.start
            else:
                st.held.merge(acc)
            st.held_end = closed.end
            st.held_n += 1
            if st.held_n >= self._max_hold:
                self._flush_held(key, st)
            return
        self._flush_held(key, st)
        self._send(key, st, closed)

    def _drain(self, key: tuple[str, str], st: StreamState, out: list[WindowSummary]) -> None:
        if st.pending:
            device, metric = key
            for c in st.pending:
                # One window at a time: a window that cannot be summarised is set aside, never
                # raised into the commit tick, where it would stop every other device's output.
                try:
                    out.append(c.acc.to_summary(device, metric, c.start, c.end))
                except (ValueError, ArithmeticError) as exc:
                    self._unsummarisable.append(
                        UnsummarisableWindow(device, metric, c.start, c.end, c.acc.count, str(exc)[:300])
                    )
                else:
                    self.summaries_emitted += 1
        st.pending = None
        self._dirty.add(key)

    def take_unsummarisable(self) -> list[UnsummarisableWindow]:
        """Windows set aside since the last call, for the caller to dead-letter and count."""
        bad, self._unsummarisable = self._unsummarisable, []
        return bad

    def _close_key(self, key: tuple[str, str], st: StreamState, out: list[WindowSummary]) -> None:
        """Close the open window, send anything held, hand it all out and forget the stream."""
        if st.acc is not None and st.acc.count:
            closed = ClosedWindow(st.acc, st.idx * st.length, (st.idx + 1) * st.length)
            st.acc = None
            self._route(key, st, closed)
        self._flush_held(key, st)
        self._drain(key, st, out)
        self._has_pending.discard(key)
        del self._keys[key]

    def poll(self, now: float) -> list[WindowSummary]:
        """Hand out every closed summary; first close streams quiet for ``idle_close_s``, and the
        least recently touched ones beyond ``max_streams``."""
        out: list[WindowSummary] = []
        limit = now - self._idle
        for key, st in [(k, st) for k, st in self._keys.items() if st.touched <= limit]:
            self._close_key(key, st, out)
        over = len(self._keys) - self._max_streams
        if over > 0:  # least recently touched first: the streams idle close would take next
            for key, st in sorted(self._keys.items(), key=lambda kv: kv[1].touched)[:over]:
                self._close_key(key, st, out)
            self.streams_closed_early += over
        for key in self._has_pending:
            self._drain(key, self._keys[key], out)
        self._has_pending.clear()
        return _ordered(out)

    def flush_all(self) -> list[WindowSummary]:
        """Close every open window and hand out everything, held windows included (shutdown)."""
        out: list[WindowSummary] = []
        for key, st in list(self._keys.items()):
            self._close_key(key, st, out)
        return _ordered(out)

    # ---------------------------------------------------------------- checkpointing

    def take_dirty(self) -> tuple[dict[str, bytes], list[str]]:
        """State of every stream changed since the last call, and the keys that went away.

        Write both into the checkpoint table in the same transaction as the
        summaries ``poll`` handed out since the previous call: then a crash at
        any point neither loses nor double-counts a reading.
        """
        states: dict[str, bytes] = {}
        removed: list[str] = []
        for key in self._dirty:
            st = self._keys.get(key)
            if st is None:
                removed.append(state_key(*key))
            else:
                states[state_key(*key)] = encode_state(key, st)
        self._dirty.clear()
        return states, removed

    def snapshot(self) -> dict[str, bytes]:
        """State of every stream (a full checkpoint)."""
        return {state_key(*k): encode_state(k, st) for k, st in self._keys.items()}

    def restore(self, states: dict[str, bytes], now: float | None = None) -> None:
        """Replace all stream state with a checkpoint.

        ``now`` restarts every stream's idle timer; pass it when the caller's
        clock is monotonic (its values do not survive a restart). Without it
        the checkpointed wall-clock times are kept.
        """
        keys: dict[tuple[str, str], StreamState] = {}
        for name, blob in states.items():
            key, st = decode_state(blob)
            if name != state_key(*key):
                raise ValueError(f"checkpoint key {name!r} does not match its content {state_key(*key)!r}")
            if now is not None:
                st.touched = now
            keys[key] = st
        self._keys = keys
        self._has_pending = {k for k, st in keys.items() if st.pending}
        self._dirty.clear()


def _ordered(out: list[WindowSummary]) -> list[WindowSummary]:
    """Deterministic order (time, then stream), independent of dict history: a restored
    aggregator hands out exactly what an uninterrupted one would. Stable, so a stream's
    held summary still precedes its newer window."""
    if len(out) > 1:
        out.sort(key=lambda s: (s.start, s.device, s.metric))
    return out
