"""Crash soak: the CI crash-safety scenario at full length, with the 2-minute cloud outage.

Same code as ``tests/reliability/test_crash_safety.py`` (``edgeloop_sim.faults``),
different parameters: by default 10 agent SIGKILLs, 2 controller SIGKILLs, 3
broker restarts and a 120 s outage of the cloud side (cloud broker stopped,
controller killed) over a slower replay of SKAB so that every fault, and the
outage, falls inside the stream. Exits 1 if any reading was lost or counted
twice, or an outbox is not empty at the end.

    .venv/bin/python bench/bench_crash_soak.py [--outage 120] [--speedup 4] [--rows 1100]
        [--devices 6] [--agents 2] [--seed N] [--no-write]

It rewrites the ``<!-- bench:crash:start -->`` block of ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from _report import command_line, machine_line, write_block  # noqa: E402

from edge_agent.ops.tables import markdown_table  # noqa: E402
from edgeloop_sim.faults import CrashReport, CrashScenario, run_crash_scenario  # noqa: E402

NAME = "crash"


def _fmt_s(values: list[float]) -> str:
    vals = [v for v in values if v == v]  # NaN: not measured
    if not vals:
        return "-"
    return f"median {statistics.median(vals):.2f} s, max {max(vals):.2f} s"


def markdown(r: CrashReport) -> str:
    sc = r.scenario
    ok = r.readings_counted == r.readings_sent and r.seq_gaps == 0 and not any(r.outbox_rows.values())
    rows: list[list[object]] = [
        ["readings sent (SKAB, broker-acknowledged)", f"{r.readings_sent:,} in {r.messages_sent:,} messages"],
        ["readings counted by the controller", f"{r.readings_counted:,}"],
        ["exactly once", "yes" if ok else "**NO**"],
        ["duplicate batches dropped by the cloud (not in totals)", r.duplicates],
        ["sequence gaps", r.seq_gaps],
        ["outbox rows after SIGTERM", ", ".join(f"{k}: {v}" for k, v in sorted(r.outbox_rows.items()))],
    ]
    for kind in ("agent_kill", "controller_kill", "broker_restart", "cloud_outage"):
        fs = r.faults_of(kind)
        if not fs:
            continue
        streaming = sum(f.streaming for f in fs)
        rows.append(
            [
                f"{kind.replace('_', ' ')} x{len(fs)} ({streaming} while devices published)",
                f"up again: {_fmt_s([f.recovery_s for f in fs])}; "
                f"cloud counting again: {_fmt_s([f.progress_s for f in fs])}",
            ]
        )
    if sc.outage_s > 0:
        peak = ", ".join(f"{k}: {v}" for k, v in sorted(r.outage_outbox_peak.items())) or "-"
        drain = f"{r.outage_drain_s:.2f} s" if r.outage_drain_s is not None else "-"
        rows.append(
            [
                f"cloud outage {sc.outage_s:.0f} s",
                f"{r.outage_readings:,} readings in {r.outage_batches} summaries made during it; "
                f"outbox peak rows {peak}; drained {drain} after the cloud came back",
            ]
        )
    rows.append(["stream end -> cloud count == sent", f"{r.settle_s:.2f} s"])
    rows.append(["wall time", f"{r.wall_s:.1f} s"])
    return "\n\n".join(
        [
            "## Crash soak (exactly-once under faults)",
            f"`{command_line()}`",
            f"{sc.agents} agents, {sc.devices} SKAB devices x {sc.rows_per_device} rows, "
            f"{sc.batch} rows per message, replay speed-up {sc.speedup:g}, seed {sc.seed}; "
            f"{'edge and cloud brokers split' if sc.split_uplink else 'one broker'}.",
            markdown_table(["measure", "value"], rows),
            f"Machine: {machine_line()}",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--outage", type=float, default=120.0, help="cloud outage seconds (default %(default)s)")
    p.add_argument("--speedup", type=float, default=4.0, help="replay speed-up (default %(default)s)")
    p.add_argument("--rows", type=int, default=1100, help="SKAB rows per device (default %(default)s)")
    p.add_argument("--devices", type=int, default=6)
    p.add_argument("--agents", type=int, default=2)
    p.add_argument("--agent-kills", type=int, default=10)
    p.add_argument("--controller-kills", type=int, default=2)
    p.add_argument("--broker-restarts", type=int, default=3)
    p.add_argument("--outage-at", type=float, default=0.3, help="share of the stream before the outage")
    p.add_argument("--seed", type=int, default=CrashScenario.seed)
    p.add_argument("--workdir", type=Path, default=None, help="keep logs and databases here")
    p.add_argument("--no-write", action="store_true", help="do not touch docs/benchmarks.md")
    args = p.parse_args(argv)
    sc = CrashScenario(
        agents=args.agents,
        devices=args.devices,
        rows_per_device=args.rows,
        speedup=args.speedup,
        agent_kills=args.agent_kills,
        controller_kills=args.controller_kills,
        broker_restarts=args.broker_restarts,
        outage_s=args.outage,
        outage_at=args.outage_at,
        seed=args.seed,
        settle_timeout_s=max(90.0, args.outage * 2),
    )
    # SIGTERM unwinds like Ctrl-C, so the scenario's cleanup stops every process it started.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    with tempfile.TemporaryDirectory(prefix="edgeloop-crash-") as tmp:
        workdir = (args.workdir or Path(tmp)).resolve()
        report = run_crash_scenario(workdir, sc, log=lambda m: print(m, flush=True))
    print(json.dumps(report.to_json(), default=str, indent=1))
    text = markdown(report)
    print(text)
    if not args.no_write:
        write_block(NAME, text)
    ok = (
        report.readings_counted == report.readings_sent
        and report.seq_gaps == 0
        and not any(report.outbox_rows.values())
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
