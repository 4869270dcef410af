"""Progress for long stages: a tqdm bar on a terminal, a plain line every few seconds otherwise.

Why both: a bar redrawn with carriage returns turns a log file or a CI job's
output into noise, but a silent 10-minute stage looks hung. The plain line
carries the same facts (done/total, rate, ETA).
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

from tqdm import tqdm

__all__ = ["Progress"]


class Progress:
    def __init__(
        self, total: int, desc: str, unit: str = "step", stream: TextIO | None = None, every_s: float = 5.0
    ) -> None:
        self.stream = stream or sys.stderr
        self.total, self.desc, self.unit, self.every_s = max(1, total), desc, unit, every_s
        self.done = 0
        self.t0 = self.last = time.monotonic()
        tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.bar: Any = tqdm(total=self.total, desc=desc, unit=unit, file=self.stream) if tty else None

    def update(self, done: int, message: str = "") -> None:
        """Absolute progress (``done`` of ``total``)."""
        step, self.done = done - self.done, done
        if self.bar is not None:
            self.bar.update(step)
            if message:
                self.bar.set_postfix_str(message[-60:])
            return
        now = time.monotonic()
        if now - self.last >= self.every_s or done >= self.total:
            self.last = now
            self.stream.write(self.line(now) + (f" {message}" if message else "") + "\n")
            self.stream.flush()

    def line(self, now: float) -> str:
        elapsed = now - self.t0
        rate = self.done / elapsed if elapsed > 0 else 0.0
        eta = (self.total - self.done) / rate if rate > 0 else float("nan")
        pct = 100.0 * self.done / self.total
        return (
            f"{self.desc}: {self.done}/{self.total} {self.unit} ({pct:.0f} %), "
            f"{elapsed:.0f} s elapsed, ETA {eta:.0f} s"
        )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
