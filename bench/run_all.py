"""Run every ``bench/bench_*.py`` in turn; each writes its own block of ``docs/benchmarks.md``.

Usage::

    .venv/bin/python bench/run_all.py [--quick] [--only agent,sensor] [-- extra args for every bench]

``--quick`` is passed to a bench whose ``--help`` lists it; a bench without it
runs with its documented small configuration if it has one (below), otherwise
in full. A failing bench does not stop the others; the exit code is non-zero
if any failed, and a summary says which.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent

# Small configurations of benches that predate --quick (their own flags, from their --help).
QUICK_FALLBACK: dict[str, list[str]] = {
    "bench_chat": ["--config", "tiny"],
    "bench_sensor": ["--config", "tiny"],
    "bench_escalation": ["-n", "200", "--n-default", "10", "--warmup", "50"],
}


def discover(only: set[str] | None = None) -> list[Path]:
    found = sorted(p for p in BENCH.glob("bench_*.py") if p.is_file())
    if only:
        found = [p for p in found if p.stem in only or p.stem.removeprefix("bench_") in only]
    return found


def supports(script: Path, flag: str) -> bool:
    try:
        p = subprocess.run(
            [sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=120, cwd=REPO
        )
    except subprocess.TimeoutExpired:
        return False
    return p.returncode == 0 and flag in p.stdout


def quick_args(script: Path) -> list[str]:
    if supports(script, "--quick"):
        return ["--quick"]
    fallback = QUICK_FALLBACK.get(script.stem, [])
    # Only flags the script still documents: a renamed option must not turn into a usage error.
    return fallback if all(supports(script, a) for a in fallback if a.startswith("-")) else []


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="pass --quick (or a small config) to every bench")
    ap.add_argument("--only", default="", help="comma-separated bench names (agent or bench_agent)")
    ap.add_argument("--timeout", type=float, default=3600.0, help="seconds per bench")
    ap.add_argument("extra", nargs=argparse.REMAINDER, help="after --: arguments for every bench")
    args = ap.parse_args(argv)
    extra = [a for a in args.extra if a != "--"]
    only = {s.strip() for s in args.only.split(",") if s.strip()} or None
    scripts = discover(only)
    if not scripts:
        print("no bench scripts found", file=sys.stderr)
        return 2
    results: list[tuple[str, str, float]] = []
    for script in scripts:
        cmd = [sys.executable, str(script.relative_to(REPO))]
        if args.quick:
            cmd += quick_args(script)
        cmd += extra
        print(f"==> {' '.join(cmd)}", flush=True)
        t0 = time.perf_counter()
        try:
            rc = subprocess.run(cmd, cwd=REPO, timeout=args.timeout).returncode
            status = "ok" if rc == 0 else f"FAILED (exit {rc})"
        except subprocess.TimeoutExpired:
            status = f"FAILED (timeout {args.timeout:.0f} s)"
        except OSError as exc:
            status = f"FAILED ({exc})"
        results.append((script.stem, status, time.perf_counter() - t0))
    print("\nsummary:")
    for name, status, secs in results:
        print(f"  {name:<24} {status:<28} {secs:7.1f} s")
    return 1 if any(s != "ok" for _, s, _ in results) else 0


if __name__ == "__main__":
    raise SystemExit(main())
