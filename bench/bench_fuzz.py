"""Fuzz bench: every inbound payload type, 10,000 hypothesis cases each, on the real entry points.

Reports per type: cases, accepted, rejected by reason, max and p99 call time,
and crashes (an exception other than the documented rejection type, or a call
over the time bound); the count of crashes must be 0. Unlike the CI test
(tests/reliability/test_fuzz.py) a crash does not stop the run: it is counted
and the first few are printed, so one known bug does not hide the rest.

    .venv/bin/python bench/bench_fuzz.py [--examples 10000] [--only NAME ...] [--no-write]
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402

from edgeloop_sim.harness.fuzz.registry import TARGETS, make_target  # noqa: E402
from edgeloop_sim.harness.fuzz.target_base import MAX_CALL_S, Tally  # noqa: E402

try:
    from bench._report import command_line, machine_line, write_block
    from edge_agent.ops.tables import markdown_table
except ImportError:  # pragma: no cover - _report.py is written by someone else; fall back to a local writer
    write_block = None  # type: ignore[assignment]


def run_target(name: str, examples: int) -> tuple[Tally, list[str], float]:
    target = make_target(name)
    tally = Tally(name)
    crashes: list[str] = []

    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize=False,
        suppress_health_check=list(HealthCheck),
        phases=[Phase.generate],  # no shrinking: count every crash and keep going
    )
    @given(case=target.strategy())
    def run(case: Any) -> None:
        t0 = time.perf_counter()
        try:
            outcome = target.feed(case)
        except Exception as exc:
            crashes.append(f"{type(exc).__name__}: {str(exc)[:160]} on {repr(case)[:160]}")
            return
        dt = time.perf_counter() - t0
        tally.add(outcome, dt)
        if dt >= MAX_CALL_S:
            crashes.append(f"slow call {dt:.3f}s on {repr(case)[:160]}")

    t0 = time.perf_counter()
    try:
        run()
        try:
            target.verify_counts(tally)
        except AssertionError as exc:
            crashes.append(f"counts disagree with the component's own counters: {exc}")
    finally:
        target.close()
    return tally, crashes, time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--examples", type=int, default=10_000)
    ap.add_argument("--only", nargs="*", choices=sorted(TARGETS), default=None)
    ap.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = ap.parse_args(argv)
    # Rejections log warnings (rate-limited on the edge); millions of lines would measure the terminal.
    logging.basicConfig(level=logging.CRITICAL)
    rows: list[list[object]] = []
    details: list[str] = []
    total_crashes = 0
    for name in args.only or list(TARGETS):
        tally, crashes, wall = run_target(name, args.examples)
        cases = tally.cases + len([c for c in crashes if not c.startswith(("slow", "counts"))])
        total_crashes += len(crashes)
        reasons = ", ".join(f"{r} {n}" for r, n in tally.rejected.most_common())
        rows.append(
            [
                name,
                cases,
                tally.accepted,
                sum(tally.rejected.values()),
                reasons or "-",
                f"{tally.max_s * 1000:.1f}",
                f"{tally.p99_s * 1000:.2f}",
                len(crashes),
                f"{wall:.0f}",
            ]
        )
        print(f"{name}: {rows[-1][1:]}", flush=True)
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
        "p99 ms",
        "crashes",
        "wall s",
    ]
    if write_block is not None:
        table = markdown_table(table_header, rows)
        machine, cmd = machine_line(), command_line()
    else:  # pragma: no cover
        table = "\n".join("| " + " | ".join(str(c) for c in r) + " |" for r in [table_header, *rows])
        machine, cmd = "", " ".join(sys.argv)
    body = (
        "### Fuzzing inbound payloads (hypothesis)\n\n"
        f"{args.examples} generated cases per type (structure-aware mutations and raw bytes) fed into the "
        "real entry point of the receiving side. A crash is any exception other than the documented "
        f"rejection, a call over {MAX_CALL_S * 1000:.0f} ms, or a tally that disagrees with the component's "
        "own reject counters.\n\n"
        f"{table}\n\n"
        + ("Crashes (first 3 per type):\n\n" + "\n".join(details) + "\n\n" if details else "")
        + f"Machine: {machine}\n\nCommand: `{cmd}`\n"
    )
    if not args.no_write:
        if write_block is not None:
            write_block("fuzz", body)
        else:  # pragma: no cover
            _write_block_fallback("fuzz", body)
    print(f"total crashes: {total_crashes}")
    return 1 if total_crashes else 0


def _write_block_fallback(name: str, body: str) -> None:
    doc = REPO / "docs" / "benchmarks.md"
    start, end = f"<!-- bench:{name}:start -->", f"<!-- bench:{name}:end -->"
    text = doc.read_text(encoding="utf-8") if doc.exists() else "# Benchmarks\n"
    block = f"{start}\n{body.strip()}\n{end}"
    i, j = text.find(start), text.find(end)
    text = text.rstrip("\n") + "\n\n" + block + "\n" if i < 0 else text[:i] + block + text[j + len(end) :]
    doc.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    sys.exit(main())
