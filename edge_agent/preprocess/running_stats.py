"""Mergeable running statistics of one stream of (ts, value): the unit a window summary is built from.

Welford/Chan updates (mean, sum of squared deviations, co-moment of time and
value) rather than raw power sums: they merge the same way, but they do not lose
precision when a signal sits far from zero (Kelvin, 230 V mains) with a small
spread. Timestamps (~1.7e9 s) are shifted by the first timestamp seen; the
difference of two nearby doubles is exact, so the slope keeps full precision
where a naive fit on epoch seconds would not.

The hot path stays plain Python on ``__slots__``: no pydantic or numpy per reading.
"""

from __future__ import annotations

import math
import struct

from edge_agent.protocol.messages import WindowSummary

__all__ = ["ACCUMULATOR_BYTES", "Accumulator"]

_ACC = struct.Struct("<Q12d")
# Size of Accumulator.to_bytes(): the checkpoint codec slices streams by it.
ACCUMULATOR_BYTES = _ACC.size


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
