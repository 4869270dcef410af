"""A token budget per clock hour for a paid teacher.

Why the clock hour and not a sliding window: a bill is read per hour or day,
and "refused until the hour rolls" is something an operator can predict and
see. Tokens are counted from the response's ``usage`` when the endpoint gives
it (OpenAI, vLLM and Ollama do), else estimated from the text
(:func:`estimate_tokens`). A call is allowed while the hour's spend is below
the budget, so the last call of an hour may overshoot by one answer; calls in
flight when the budget runs out are not cut off.
"""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["HourlySpend", "estimate_tokens"]


def estimate_tokens(*texts: str) -> int:
    """About one token per CJK character or per four other characters (the usual rule of thumb)."""
    n = 0
    for t in texts:
        wide = sum(1 for ch in t if ord(ch) >= 0x2E80)
        n += wide + (len(t) - wide + 3) // 4
    return max(1, n)


class HourlySpend:
    def __init__(self, tokens_per_hour: int | None, clock: Callable[[], float] = time.time) -> None:
        self.tokens_per_hour = tokens_per_hour
        self._clock = clock
        self._hour = self._now_hour()
        self.spent = 0  # this hour
        self.total = 0

    def _now_hour(self) -> int:
        return int(self._clock() // 3600)

    def _roll(self) -> None:
        hour = self._now_hour()
        if hour != self._hour:
            self._hour, self.spent = hour, 0

    def allows(self) -> bool:
        self._roll()
        return self.tokens_per_hour is None or self.spent < self.tokens_per_hour

    def spend(self, tokens: int) -> None:
        self._roll()
        self.spent += max(0, tokens)
        self.total += max(0, tokens)
