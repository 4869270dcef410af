"""HeapTrimmer: when it trims, and that a trim really gives fragmented free heap back to the OS."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from edge_agent.ops.heap import HeapTrimmer

REPO = Path(__file__).resolve().parents[2]


class Counting(HeapTrimmer):
    """The real policy, with the C call replaced by a counter (the policy is what is tested here)."""

    def __init__(self, interval_s: float) -> None:
        super().__init__(interval_s)
        self._fn, self._resolved = (lambda _pad: 1), True


def test_trims_when_a_burst_ends_and_periodically_under_sustained_work_never_when_idle() -> None:
    t = Counting(10.0)
    assert not t.maybe_trim(0.0, 0.0)  # idle from the start: nothing to give back
    assert t.maybe_trim(1.0, 100.0)  # first work seen: the interval since "never" has passed
    assert not t.maybe_trim(2.0, 200.0)  # still busy, 1 s after the last trim
    assert t.maybe_trim(3.0, 200.0)  # the burst ended (counter stopped): trim once
    assert not t.maybe_trim(4.0, 200.0) and not t.maybe_trim(60.0, 200.0)  # idle: never again
    busy = [t.maybe_trim(float(s), 300.0 + s) for s in range(61, 92)]  # 31 s of sustained work
    assert [61 + i for i, b in enumerate(busy) if b] == [61, 71, 81, 91]  # every 10 s
    assert t.trims == 6


def test_disabled_with_zero_interval() -> None:
    t = Counting(0.0)
    assert not any(t.maybe_trim(float(i), float(i)) for i in range(5)) and t.trims == 0


CHILD = r"""
import sys
from edge_agent.ops.heap import HeapTrimmer

def rss_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1]) / 1024

blocks = [bytes(2048) for _ in range(60_000)]  # ~120 MB of glibc heap (above pymalloc, below mmap)
keep = blocks[::16]  # survivors pin the heap: it cannot shrink from the top
del blocks
before = rss_mb()
t = HeapTrimmer(1.0)
assert t.available
assert t.maybe_trim(10.0, 1.0)
print(before, rss_mb(), len(keep))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc_trim")
def test_a_trim_returns_fragmented_free_heap_to_the_os() -> None:
    out = subprocess.run(
        [sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=60, cwd=REPO, check=True
    ).stdout.split()
    before, after = float(out[0]), float(out[1])
    assert before - after > 50, (before, after)  # most of the ~110 MB of freed blocks
