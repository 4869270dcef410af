"""Escalation budget: which unsure utterances may ask the cloud teacher.

Why a budget and not only a threshold
-------------------------------------
A fixed confidence threshold escalates whatever fraction of traffic happens to
fall below it: a new slang word, a drifted microphone or a bad student version
can turn 5% into 80% and flood the teacher and the uplink exactly when things
go wrong. The budget bounds the *fraction* instead, and spends it on the inputs
the student is least sure about, which are also the most useful hard examples.

The window counts utterances, not seconds
-----------------------------------------
"At most 10% of utterances" is a ratio of utterances, so the window is the last
``window`` utterances (default 200). A time window would let a quiet hour
followed by a burst escalate most of the burst while still meeting "10% per
hour"; a count window makes the bound hold for every run of ``window``
consecutive utterances, whatever their timing. It needs no clock, so decisions
are deterministic and replayable.

Two mechanisms
--------------
1. Hard cap (the guarantee): an utterance is escalated only if the escalations
   among the previous ``window - 1`` decisions plus this one stay within
   ``floor(max_rate * window)``. Hence *every* window of ``window`` consecutive
   utterances holds at most that many escalations, even under a burst of
   all-unsure inputs.
2. Adaptive quantile (the preference): an utterance is a candidate only if its
   confidence lies in the lowest ``quantile_rate`` fraction of the recent
   confidences (the same window). ``quantile_rate`` defaults to 90% of
   ``max_rate`` so that the cap has headroom and slots are not used up by
   middling inputs before a really unsure one comes along. Until
   ``min_history`` confidences are seen the fixed threshold stands in.

Confidences are binned into 1024 bins in a Fenwick tree, so each decision is
O(log 1024) whatever the window. ``ceiling`` optionally exempts confident
inputs (>= ceiling) even when they are the lowest of a very confident stream.

``mode="threshold"`` is the fallback setting: escalate iff confidence <
``threshold_fallback``, with no cap (the caller asked for a plain threshold).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Literal

__all__ = ["BudgetStats", "EscalationBudget"]

_BINS = 1024


class _Fenwick:
    """Counts per confidence bin with O(log n) prefix sums."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.tree = [0] * (n + 1)

    def add(self, i: int, delta: int) -> None:
        i += 1
        while i <= self.n:
            self.tree[i] += delta
            i += i & -i

    def prefix(self, i: int) -> int:
        """Sum of bins ``[0, i)``."""
        s = 0
        while i > 0:
            s += self.tree[i]
            i -= i & -i
        return s


@dataclass
class BudgetStats:
    seen: int = 0
    escalated: int = 0
    capped: int = 0  # would have escalated, refused by the hard cap


class EscalationBudget:
    def __init__(
        self,
        max_rate: float = 0.10,
        window: int = 200,
        threshold_fallback: float = 0.8,
        mode: Literal["budget", "threshold"] = "budget",
        *,
        quantile_rate: float | None = None,
        min_history: int = 20,
        ceiling: float = 1.0,
    ) -> None:
        if not 0.0 <= max_rate <= 1.0:
            raise ValueError("max_rate must be in [0, 1]")
        if window < 1:
            raise ValueError("window must be >= 1")
        if mode not in ("budget", "threshold"):
            raise ValueError("mode must be 'budget' or 'threshold'")
        self.max_rate = max_rate
        self.window = window
        self.threshold_fallback = threshold_fallback
        self.mode = mode
        self.quantile_rate = 0.9 * max_rate if quantile_rate is None else quantile_rate
        self.min_history = min_history
        self.ceiling = ceiling
        # Escalations allowed in any run of `window` consecutive utterances.
        self.cap = math.floor(max_rate * window + 1e-9)
        self.stats = BudgetStats()
        # Last window-1 decisions (True = escalated) and their running sum.
        self._decisions: deque[bool] = deque()
        self._in_window = 0
        # Last `window` confidences, binned.
        self._bins: deque[int] = deque()
        self._hist = _Fenwick(_BINS)

    def retune(
        self,
        *,
        max_rate: float | None = None,
        threshold: float | None = None,
        mode: Literal["budget", "threshold"] | None = None,
    ) -> None:
        """Change the budget live (a cloud call): the recent window is kept, the cap follows ``max_rate``."""
        if max_rate is not None:
            if not 0.0 <= max_rate <= 1.0:
                raise ValueError("max_rate must be in [0, 1]")
            self.max_rate = max_rate
            self.quantile_rate = 0.9 * max_rate
            self.cap = math.floor(max_rate * self.window + 1e-9)
        if threshold is not None:
            if not 0.0 <= threshold <= 1.0:
                raise ValueError("threshold must be in [0, 1]")
            self.threshold_fallback = threshold
        if mode is not None:
            if mode not in ("budget", "threshold"):
                raise ValueError("mode must be 'budget' or 'threshold'")
            self.mode = mode

    # ------------------------------------------------------------------ decisions

    def decide(self, confidence: float) -> bool:
        """Record one utterance and return whether it is escalated (and counted against the budget)."""
        conf = _clamp(confidence)
        if self.mode == "threshold":
            escalate = conf < self.threshold_fallback
        else:
            escalate = self._candidate(conf)
            if escalate and self._in_window + 1 > self.cap:
                escalate = False
                self.stats.capped += 1
        self._record(conf, escalate)
        return escalate

    def observe(self, confidence: float) -> None:
        """Record an utterance answered without escalating (e.g. a cache hit): it counts in the window."""
        self._record(_clamp(confidence), False)

    def threshold(self) -> float:
        """The confidence below which an input is currently a candidate (for metrics and status)."""
        if self.mode == "threshold" or len(self._bins) < self.min_history:
            return min(self.threshold_fallback, self.ceiling)
        # Smallest bin b with rank(b) >= quantile_rate * n: inputs in bins below b are candidates.
        n = len(self._bins)
        lo, hi = 0, _BINS
        while lo < hi:
            mid = (lo + hi) // 2
            if self._hist.prefix(mid) < self.quantile_rate * n:
                lo = mid + 1
            else:
                hi = mid
        return min(lo / _BINS, self.ceiling)

    # ------------------------------------------------------------------ internals

    def _candidate(self, conf: float) -> bool:
        if conf >= self.ceiling:
            return False
        n = len(self._bins)
        if n < self.min_history:
            return conf < self.threshold_fallback
        # Rank = recent confidences strictly below this one's bin; ties never push it over.
        return self._hist.prefix(_bin(conf)) < self.quantile_rate * n

    def _record(self, conf: float, escalated: bool) -> None:
        self.stats.seen += 1
        self.stats.escalated += int(escalated)
        if self.window > 1:
            self._decisions.append(escalated)
            self._in_window += int(escalated)
            if len(self._decisions) > self.window - 1:
                self._in_window -= int(self._decisions.popleft())
        b = _bin(conf)
        self._bins.append(b)
        self._hist.add(b, 1)
        if len(self._bins) > self.window:
            self._hist.add(self._bins.popleft(), -1)


def _clamp(x: float) -> float:
    if x != x:  # NaN: treat as "no idea"
        return 0.0
    return 0.0 if x < 0.0 else 1.0 if x > 1.0 else float(x)


def _bin(conf: float) -> int:
    return min(int(conf * _BINS), _BINS - 1)
