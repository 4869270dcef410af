"""Tumbling windows per (device, metric): the edge's main data reduction.

Thousands of raw readings a second become one summary per metric per window.
Two properties matter more than anything else here:

* counts are exact: the ``count`` fields of everything emitted add up to the
  number of readings added, whatever the deadband, late data or crashes do.
  The cloud's "readings in" counter and the reduction ratio depend on it;
* the hot path is cheap: ``WindowAggregator.add`` is plain Python on
  ``__slots__`` objects, no pydantic or numpy per reading.

Running statistics use Welford/Chan updates (mean, sum of squared deviations,
co-moment of time and value) rather than raw power sums: they are mergeable in
the same way, but they do not lose precision when a signal sits far from zero
(Kelvin, 230 V mains) with a small spread. Timestamps (~1.7e9 s) are shifted by
the window's first timestamp; the difference of two nearby doubles is exact,
so the slope keeps full precision where a naive fit on epoch seconds would not.
"""

from __future__ import annotations

import math
import struct

from edge_agent.config import WindowConfig
from edge_agent.protocol.messages import WindowSummary

__all__ = ["Accumulator", "WindowAggregator", "state_key"]

_ACC = struct.Struct("<Q12d")
# version, flags, window index, length, held start/end, last sent mean, held windows, touched,
# pending summaries, len(device), len(metric)
_KEY_HEAD = struct.Struct("<BBqddddIdIHH")
_SPAN = struct.Struct("<dd")
_STATE_VERSION = 1
_F_OPEN, _F_HELD, _F_SENT = 1, 2, 4
_MAX_IDX = 2**62


class Accumulator:
    """Mergeable, serializable running statistics of one stream of (ts, value).

    ``first``/``last`` are the values with the earliest/latest timestamp (ties:
    the earlier/later arrival), so a late reading folded in does not become
    the "last" value of a window.
    """

    __slots__ = (
        "count",
        "cov",
        "first_t",
        "first_v",
        "last_t",
        "last_v",
        "m2t",
        "m2v",
        "max",
        "mean_t",
        "mean_v",
        "min",
        "t0",
    )

    def __init__(self) -> None:
        self.count = 0
        self.min = 0.0
        self.max = 0.0
        self.first_t = 0.0
        self.first_v = 0.0
        self.last_t = 0.0
        self.last_v = 0.0
        self.t0 = 0.0  # shift for timestamps: the first timestamp seen
        self.mean_t = 0.0  # mean of (ts - t0)
        self.mean_v = 0.0
        self.m2t = 0.0  # sum of squared deviations of (ts - t0)
        self.m2v = 0.0  # sum of squared deviations of value
        self.cov = 0.0  # co-moment sum((t - mean_t) * (v - mean_v))

    def add(self, ts: float, v: float) -> None:
        n = self.count + 1
        self.count = n
        if n == 1:
            self.min = self.max = self.first_v = self.last_v = self.mean_v = v
            self.first_t = self.last_t = self.t0 = ts
            return
        t = ts - self.t0
        dt = t - self.mean_t
        dv = v - self.mean_v
        mean_t = self.mean_t + dt / n
        mean_v = self.mean_v + dv / n
        self.mean_t = mean_t
        self.mean_v = mean_v
        rv = v - mean_v
        self.m2t += dt * (t - mean_t)
        self.m2v += dv * rv
        self.cov += dt * rv
        if v < self.min:
            self.min = v
        elif v > self.max:
            self.max = v
        if ts < self.first_t:
            self.first_t = ts
            self.first_v = v
        if ts >= self.last_t:
            self.last_t = ts
            self.last_v = v

    def merge(self, other: Accumulator) -> None:
        """Fold ``other`` into ``self`` (Chan et al.); ``other`` is left unchanged."""
        nb = other.count
        if nb == 0:
            return
        na = self.count
        if na == 0:
            self._copy_from(other)
            return
        n = na + nb
        dt = (other.mean_t + (other.t0 - self.t0)) - self.mean_t
        dv = other.mean_v - self.mean_v
        f = na * nb / n
        self.m2t += other.m2t + dt * dt * f
        self.m2v += other.m2v + dv * dv * f
        self.cov += other.cov + dt * dv * f
        self.mean_t += dt * nb / n
        self.mean_v += dv * nb / n
        self.count = n
        if other.min < self.min:
            self.min = other.min
        if other.max > self.max:
            self.max = other.max
        if other.first_t < self.first_t:
            self.first_t, self.first_v = other.first_t, other.first_v
        if other.last_t >= self.last_t:
            self.last_t, self.last_v = other.last_t, other.last_v

    @classmethod
    def from_run(cls, ts: list[float], vs: list[float]) -> Accumulator:
        """Statistics of a run of readings in one pass over lists (two-pass, so exact to rounding).

        Equal to ``add``-ing them one by one, up to rounding, at a fraction of the
        cost: the sums run in C (``sum`` over generators), not per-reading methods.
        """
        acc = cls()
        k = len(vs)
        if k == 0:
            return acc
        t0 = ts[0]
        sh = [t - t0 for t in ts]
        mt = sum(sh) / k
        mv = sum(vs) / k
        acc.count = k
        acc.t0 = t0
        acc.mean_t = mt
        acc.mean_v = mv
        acc.m2t = sum((x - mt) * (x - mt) for x in sh)
        acc.m2v = sum((v - mv) * (v - mv) for v in vs)
        acc.cov = sum((x - mt) * (v - mv) for x, v in zip(sh, vs, strict=True))
        acc.min = min(vs)
        acc.max = max(vs)
        # first: earliest timestamp, ties to the earlier arrival; last: latest, ties to the later one.
        fi = min(range(k), key=ts.__getitem__)
        li = k - 1 - min(range(k), key=lambda i: -ts[k - 1 - i])
        acc.first_t, acc.first_v = ts[fi], vs[fi]
        acc.last_t, acc.last_v = ts[li], vs[li]
        return acc

    def _copy_from(self, other: Accumulator) -> None:
        for name in Accumulator.__slots__:
            setattr(self, name, getattr(other, name))

    def copy(self) -> Accumulator:
        acc = Accumulator()
        acc._copy_from(self)
        return acc

    # ---------------------------------------------------------------- derived statistics

    @property
    def mean(self) -> float:
        return self.mean_v

    @property
    def std(self) -> float:
        """Population standard deviation (numpy's ddof=0)."""
        if self.count < 2 or self.m2v <= 0.0:
            return 0.0
        s = math.sqrt(self.m2v / self.count)
        return s if math.isfinite(s) else 0.0

    @property
    def slope(self) -> float:
        """Least-squares slope of value over time, in value units per second."""
        if self.count < 2 or self.m2t <= 0.0:
            return 0.0
        s = self.cov / self.m2t
        return s if math.isfinite(s) else 0.0

    def to_summary(self, device: str, metric: str, start: float, end: float) -> WindowSummary:
        if self.count == 0:
            raise ValueError("an empty accumulator has no summary")
        return WindowSummary(
            device=device,
            metric=metric,
            start=start,
            end=end,
            count=self.count,
            min=self.min,
            max=self.max,
            mean=self.mean_v,
            std=self.std,
            first=self.first_v,
            last=self.last_v,
            slope=self.slope,
        )

    # ---------------------------------------------------------------- serialization

    def to_bytes(self) -> bytes:
        """Fixed 104 bytes, little endian; doubles round-trip bit for bit."""
        return _ACC.pack(
            self.count,
            self.min,
            self.max,
            self.first_t,
            self.first_v,
            self.last_t,
            self.last_v,
            self.t0,
            self.mean_t,
            self.mean_v,
            self.m2t,
            self.m2v,
            self.cov,
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> Accumulator:
        if len(data) != _ACC.size:
            raise ValueError(f"accumulator state must be {_ACC.size} bytes, got {len(data)}")
        acc = cls()
        (
            acc.count,
            acc.min,
            acc.max,
            acc.first_t,
            acc.first_v,
            acc.last_t,
            acc.last_v,
            acc.t0,
            acc.mean_t,
            acc.mean_v,
            acc.m2t,
            acc.m2v,
            acc.cov,
        ) = _ACC.unpack(data)
        return acc

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Accumulator):
            return NotImplemented
        return self.to_bytes() == other.to_bytes()

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        return f"Accumulator(count={self.count}, mean={self.mean_v!r}, min={self.min!r}, max={self.max!r})"


def state_key(device: str, metric: str) -> str:
    """Checkpoint key of one (device, metric) stream."""
    return f"win:{device}/{metric}"


class _Closed:
    """A finished summary waiting for ``poll``: statistics plus its time span."""

    __slots__ = ("acc", "end", "start")

    def __init__(self, acc: Accumulator, start: float, end: float) -> None:
        self.acc = acc
        self.start = start
        self.end = end


class _KeyState:
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
        self.pending: list[_Closed] | None = None  # closed by event time, handed out by poll()


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
        self._keys: dict[tuple[str, str], _KeyState] = {}
        self._dirty: set[tuple[str, str]] = set()
        self._has_pending: set[tuple[str, str]] = set()
        self.late_readings = 0
        self.readings = 0
        self.windows_closed = 0
        self.summaries_emitted = 0
        self.windows_held = 0  # windows the deadband merged instead of sending

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

    @property
    def open_windows(self) -> int:
        return sum(1 for st in self._keys.values() if st.acc is not None)

    @property
    def pending(self) -> int:
        """Closed summaries waiting for the next poll."""
        return sum(len(self._keys[k].pending or ()) for k in self._has_pending)

    def __len__(self) -> int:
        return len(self._keys)

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
            st = self._keys[key] = _KeyState(length)
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
                    closed = _Closed(acc, st.idx * st.length, (st.idx + 1) * st.length)
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

    def _send(self, key: tuple[str, str], st: _KeyState, closed: _Closed) -> None:
        if st.pending is None:
            st.pending = [closed]
            self._has_pending.add(key)
        else:
            st.pending.append(closed)
        st.last_sent = closed.acc.mean_v

    def _flush_held(self, key: tuple[str, str], st: _KeyState) -> None:
        if st.held is not None:
            self._send(key, st, _Closed(st.held, st.held_start, st.held_end))
            st.held = None
            st.held_n = 0

    def _route(self, key: tuple[str, str], st: _KeyState, closed: _Closed) -> None:
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

    def _drain(self, key: tuple[str, str], st: _KeyState, out: list[WindowSummary]) -> None:
        if st.pending:
            device, metric = key
            out.extend(c.acc.to_summary(device, metric, c.start, c.end) for c in st.pending)
            self.summaries_emitted += len(st.pending)
        st.pending = None
        self._dirty.add(key)

    def _close_key(self, key: tuple[str, str], st: _KeyState, out: list[WindowSummary]) -> None:
        """Close the open window, send anything held, hand it all out and forget the stream."""
        if st.acc is not None and st.acc.count:
            closed = _Closed(st.acc, st.idx * st.length, (st.idx + 1) * st.length)
            st.acc = None
            self._route(key, st, closed)
        self._flush_held(key, st)
        self._drain(key, st, out)
        self._has_pending.discard(key)
        del self._keys[key]

    def poll(self, now: float) -> list[WindowSummary]:
        """Hand out every closed summary; first close streams quiet for ``idle_close_s``."""
        out: list[WindowSummary] = []
        limit = now - self._idle
        for key, st in [(k, st) for k, st in self._keys.items() if st.touched <= limit]:
            self._close_key(key, st, out)
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
                states[state_key(*key)] = _encode_state(key, st)
        self._dirty.clear()
        return states, removed

    def snapshot(self) -> dict[str, bytes]:
        """State of every stream (a full checkpoint)."""
        return {state_key(*k): _encode_state(k, st) for k, st in self._keys.items()}

    def restore(self, states: dict[str, bytes], now: float | None = None) -> None:
        """Replace all stream state with a checkpoint.

        ``now`` restarts every stream's idle timer; pass it when the caller's
        clock is monotonic (its values do not survive a restart). Without it
        the checkpointed wall-clock times are kept.
        """
        keys: dict[tuple[str, str], _KeyState] = {}
        for name, blob in states.items():
            key, st = _decode_state(blob)
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


def _encode_state(key: tuple[str, str], st: _KeyState) -> bytes:
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


def _decode_state(blob: bytes) -> tuple[tuple[str, str], _KeyState]:
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
        st = _KeyState(length)
        st.idx = idx
        st.held_start = held_start
        st.held_end = held_end
        st.held_n = held_n
        st.touched = touched
        st.last_sent = last_sent if flags & _F_SENT else None
        if flags & _F_OPEN:
            st.acc = Accumulator.from_bytes(blob[pos : pos + _ACC.size])
            pos += _ACC.size
        if flags & _F_HELD:
            st.held = Accumulator.from_bytes(blob[pos : pos + _ACC.size])
            pos += _ACC.size
        if npend:
            st.pending = []
            for _ in range(npend):
                start, end = _SPAN.unpack_from(blob, pos)
                pos += _SPAN.size
                st.pending.append(_Closed(Accumulator.from_bytes(blob[pos : pos + _ACC.size]), start, end))
                pos += _ACC.size
        if pos != len(blob):
            raise ValueError(f"{len(blob) - pos} trailing bytes")
    except (struct.error, UnicodeDecodeError) as exc:
        raise ValueError(f"corrupt window state: {exc}") from exc
    return (device, metric), st
