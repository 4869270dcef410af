"""Fuzz bench: every inbound payload type, 10,000 hypothesis cases each, on the real entry points.

Reports per type: cases, accepted, rejected by reason, max and p99 call time,
the longest call's CPU time, stalls (calls over 100 ms of wall time, issue 15)
and crashes (an exception other than the documented rejection type, or a call
over the 500 ms hang bound); crashes and stalls must both be 0 (exit code 1
otherwise). The slowest call of each type is printed with its wall, CPU and
garbage-collection time, so a stall says whether the component or the machine
took the time. Unlike the CI test
(tests/reliability/test_fuzz.py) a crash does not stop the run: it is counted
and the first few are printed, so one known bug does not hide the rest.

    .venv/bin/python bench/bench_fuzz.py [--examples 10000] [--only NAME ...] [--no-write]
"""

from __future__ import annotations

import argparse
import gc
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402

from edgeloop_sim.harness.fuzz.registry import TARGETS, make_target  # noqa: E402
from edgeloop_sim.harness.fuzz.target_base import MAX_CALL_S, Tally, frozen_heap  # noqa: E402

SLOW_NOTE_S = 0.02  # calls at least this slow are listed with their time breakdown
STALL_S = 0.1  # issue 15: no call may stall longer (wall time, GC inside the call included)
CHUNK = 200  # examples per hypothesis run (see run_target)

from bench._report import command_line, machine_line, proc_status_kb, write_block  # noqa: E402
from edge_agent.ops.tables import markdown_table  # noqa: E402


class GcClock:
    """Seconds the cyclic garbage collector has run so far, and collections by generation (gc.callbacks)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.collections = [0, 0, 0]
        self._t0 = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._t0 = time.perf_counter()
        else:
            self.seconds += time.perf_counter() - self._t0
            self.collections[info["generation"]] += 1


GC = GcClock()


@dataclass
class CaseTime:
    """Where one call's time went: wall, this thread's CPU, and garbage collection inside the call."""

    index: int
    wall_s: float
    cpu_s: float
    gc_s: float
    full_gcs: int
    case: str

    def line(self) -> str:
        return (
            f"case {self.index}: wall {self.wall_s * 1000:.1f} ms, CPU {self.cpu_s * 1000:.1f} ms, "
            f"GC {self.gc_s * 1000:.1f} ms ({self.full_gcs} full), "
            f"other {max(0.0, self.wall_s - self.gc_s) * 1000:.1f} ms; {self.case}"
        )


@dataclass
class Resident:
    """The process's resident size after the first run of cases (warm) and after the last one (MB)."""

    warm_mb: float = 0.0
    end_mb: float = 0.0

    @property
    def growth_mb(self) -> float:
        return self.end_mb - self.warm_mb


def _rss_mb() -> float:
    return proc_status_kb("self", "VmRSS") / 1024.0


def run_target(name: str, examples: int) -> tuple[Tally, list[str], float, list[CaseTime], Resident]:
    target = make_target(name)
    resident = Resident()
    tally = Tally(name)
    crashes: list[str] = []
    slow: list[CaseTime] = []

    def one(case: Any) -> None:
        gc0, full0, c0 = GC.seconds, GC.collections[2], time.thread_time()
        t0 = time.perf_counter()
        try:
            outcome = target.feed(case)
        except Exception as exc:
            crashes.append(f"{type(exc).__name__}: {str(exc)[:160]} on {repr(case)[:160]}")
            return
        dt = time.perf_counter() - t0
        ct = CaseTime(
            tally.cases, dt, time.thread_time() - c0, GC.seconds - gc0, GC.collections[2] - full0,
            repr(case)[:120],
        )
        tally.add(outcome, dt)
        tally.cpu_max_s = max(tally.cpu_max_s, ct.cpu_s)
        if dt >= SLOW_NOTE_S:
            slow.append(ct)
        if dt >= MAX_CALL_S:
            crashes.append(f"slow call {dt:.3f}s on {repr(case)[:160]}")

    t0 = time.perf_counter()
    # As Agent.start() does (edge_agent.ops.gc_freeze): the heap built before the first message is frozen,
    # so a full collection inside a call walks what was allocated since (the component's own state
    # included), not the modules, schemas and models of every component this process imported.
    with frozen_heap():
        try:
            # Hypothesis keeps a tree of every choice it made during one run (54,000 nodes after 2,000
            # escalation requests); full collections inside a call walked that tree, up to 180 ms, which no
            # agent has. Runs of CHUNK examples, each tree freed between them (outside any timed call).
            done = 0
            while done < examples:
                n = min(CHUNK, examples - done)
                settings(
                    max_examples=n,
                    deadline=None,
                    database=None,
                    derandomize=False,
                    suppress_health_check=list(HealthCheck),
                    phases=[Phase.generate],  # no shrinking: count every crash and keep going
                )(given(case=target.strategy())(one))()
                done += n
                gc.collect()
                resident.end_mb = _rss_mb()
                if done == n:
                    resident.warm_mb = resident.end_mb
            try:
                target.verify_counts(tally)
            except AssertionError as exc:
                crashes.append(f"counts disagree with the component's own counters: {exc}")
        finally:
            target.close()
    return tally, crashes, time.perf_counter() - t0, slow, resident


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--examples", type=int, default=10_000)
    ap.add_argument("--only", nargs="*", choices=sorted(TARGETS), default=None)
    ap.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = ap.parse_args(argv)
    # Rejections log warnings (rate-limited on the edge); millions of lines would measure the terminal.
    logging.basicConfig(level=logging.CRITICAL)
    gc.callbacks.append(GC)
    rows: list[list[object]] = []
    details: list[str] = []
    total_crashes = 0
    total_stalls = 0
    slowest: list[str] = []
    for name in args.only or list(TARGETS):
        tally, crashes, wall, slow, resident = run_target(name, args.examples)
        cases = tally.cases + len([c for c in crashes if not c.startswith(("slow", "counts"))])
        total_crashes += len(crashes)
        total_stalls += sum(t > STALL_S for t in tally.times)
        reasons = ", ".join(f"{r} {n}" for r, n in tally.rejected.most_common())
        rows.append(
            [
                name,
                cases,
                tally.accepted,
                sum(tally.rejected.values()),
                reasons or "-",
                f"{tally.max_s * 1000:.1f}",
                f"{tally.cpu_max_s * 1000:.1f}",
                f"{tally.p99_s * 1000:.2f}",
                sum(t > STALL_S for t in tally.times),
                len(crashes),
                f"{resident.warm_mb:.1f} → {resident.end_mb:.1f}",
                f"{wall:.0f}",
            ]
        )
        print(f"{name}: {rows[-1][1:]}", flush=True)
        for i, ct in enumerate(sorted(slow, key=lambda c: -c.wall_s)[:3]):
            print(f"  slow {ct.line()}", flush=True)
            if i == 0:
                slowest.append(f"- `{name}`: {ct.line()[:220]}")
        for c in crashes[:3]:
            details.append(f"- `{name}`: {c}")
            print(f"  CRASH {c}", flush=True)
    table_header = [
        "type",
        "cases",
        "accepted",
        "rejected",
        "rejected by reason",
        "max ms",
        "max CPU ms",
        "p99 ms",
        f"stalls > {STALL_S * 1000:.0f} ms",
        "crashes",
        f"RSS MB after {CHUNK} cases → end",
        "wall s",
    ]
    table = markdown_table(table_header, rows)
    machine, cmd = machine_line(), command_line()
    body = (
        "### Fuzzing inbound payloads (hypothesis)\n\n"
        f"{args.examples} generated cases per type (structure-aware mutations and raw bytes) fed into the "
        "real entry point of the receiving side. A crash is any exception other than the documented "
        f"rejection, a call over {MAX_CALL_S * 1000:.0f} ms, or a tally that disagrees with the component's "
        "own reject counters. "
        f"A stall is a call over {STALL_S * 1000:.0f} ms of wall time, garbage collection inside the call "
        "included (issue 15: 0 stalls); `max CPU ms` is the same call's CPU time, which a loaded machine "
        "does not inflate. The heap built before the first case is frozen as `Agent.start()` freezes the "
        f"agent's, and hypothesis runs {CHUNK} examples at a time with its record of them freed in between "
        "(it grew to 54,000 objects that every full collection inside a call walked: the 175-182 ms calls "
        "of earlier runs were 96-99 % such collections). Bounded memory: the process's resident size after "
        f"the first {CHUNK} cases of a type and after the last (one process runs every type in turn, so "
        "each row starts where the one above ended; hypothesis's own state is in it too, an upper bound for "
        "the component's).\n\n"
        f"{table}\n\n"
        + ("Slowest call per type (wall, CPU, GC inside it):\n\n" + "\n".join(slowest) + "\n\n"
           if slowest else "")
        + ("Crashes (first 3 per type):\n\n" + "\n".join(details) + "\n\n" if details else "")
        + f"Machine: {machine}\n\nCommand: `{cmd}`\n"
    )
    if not args.no_write:
        write_block("fuzz", body)
    print(f"total crashes: {total_crashes}; stalls over {STALL_S * 1000:.0f} ms: {total_stalls}")
    return 1 if total_crashes or total_stalls else 0


if __name__ == "__main__":
    sys.exit(main())
