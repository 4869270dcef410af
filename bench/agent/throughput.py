"""Throughput: queued QoS 1 messages drained by the baseline and by the agent, timed inside each
consumer process; the driver side of the ``--child`` processes."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.agent.workload import BATCH, batched_messages, publish_lines, single_messages

REPO = Path(__file__).resolve().parents[2]
ENTRY = REPO / "bench" / "bench_agent.py"  # re-invoked with --child


# ============================================================================ driver side


class ChildFailed(RuntimeError):
    """A consumer child did not finish; ``detail`` holds the counters it reported."""

    def __init__(self, message: str, detail: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.detail = detail or {}


@dataclass
class Run:
    rate: float  # readings/s
    detail: dict[str, Any] = field(default_factory=dict)


def _child_cmd(
    kind: str,
    phase: str,
    port: int,
    client_id: str,
    state: Path,
    n_msgs: int,
    n_readings: int,
    per_msg: int,
    timeout: float,
    profile: str | None = None,
) -> list[str]:
    cmd = [
        sys.executable,
        str(ENTRY),
        "--child",
        kind,
        "--phase",
        phase,
        "--port",
        str(port),
        "--client-id",
        client_id,
        "--state",
        str(state),
        "--n-msgs",
        str(n_msgs),
        "--n-readings",
        str(n_readings),
        "--per-msg",
        str(per_msg),
        "--timeout",
        str(timeout),
    ]
    if profile:
        cmd += ["--profile", profile]
    return cmd


SHUTDOWN_HANGS: list[str] = []
AGENT_CHILDREN = [0]


def _run_child(cmd: list[str], timeout: float) -> dict[str, Any]:
    AGENT_CHILDREN[0] += cmd[3] == "agent"
    p = subprocess.run(cmd, capture_output=True, timeout=timeout + 90, cwd=REPO)
    lines = [ln for ln in p.stdout.decode().splitlines() if ln.startswith("{")]
    if p.returncode == 4 and lines:  # result printed, then Agent.shutdown() hung: an agent bug, counted
        SHUTDOWN_HANGS.append(p.stderr.decode()[-3000:])
        return json.loads(lines[-1])
    if p.returncode != 0 or not lines:
        raise ChildFailed(
            f"child {cmd[3]} {cmd[5]} failed ({p.returncode}): "
            f"{p.stdout.decode()[-800:]} {p.stderr.decode()[-1500:]}",
            json.loads(lines[-1]) if lines else None,
        )
    return json.loads(lines[-1])


def measure_consumer(
    kind: str,
    port: int,
    tmp: Path,
    msgs: dict[str, list[bytes]],
    per_msg: int,
    *,
    live: bool,
    tag: str,
    timeout: float,
    profile: str | None = None,
) -> Run:
    """Prime a session, then pre-queue N messages (offline) or publish while the consumer runs (live)."""
    n_msgs = sum(len(v) for v in msgs.values())
    n_readings = n_msgs * per_msg
    cid = f"bench-{kind}-{tag}"
    state = tmp / cid
    _run_child(_child_cmd(kind, "prime", port, cid, state, n_msgs, n_readings, per_msg, 30), 30)
    cmd = _child_cmd(kind, "run", port, cid, state, n_msgs, n_readings, per_msg, timeout, profile)
    pub_s = None
    if not live:
        pub_s = publish_lines(port, msgs)
        res = _run_child(cmd, timeout)
        span = res["t_end"] - res["t_start"]
    else:
        AGENT_CHILDREN[0] += kind == "agent"
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO)
        assert proc.stdout is not None and proc.stderr is not None
        line = proc.stdout.readline().decode()
        if not line.startswith("READY"):
            proc.kill()
            raise RuntimeError(f"{kind} did not get ready: {line} {proc.stderr.read().decode()[-1000:]}")
        pub_s = publish_lines(port, msgs, parallel=True)
        out, err = proc.communicate(timeout=timeout + 90)
        lines = [ln for ln in out.decode().splitlines() if ln.startswith("{")]
        if proc.returncode == 4 and lines:
            SHUTDOWN_HANGS.append(err.decode()[-3000:])
        elif proc.returncode != 0 or not lines:
            raise RuntimeError(f"{kind} live run failed: {out.decode()[-500:]} {err.decode()[-1500:]}")
        res = json.loads(lines[-1])
        span = res["t_end"] - res["t_first"]
    res["publish_s"] = pub_s
    res["span_s"] = span
    return Run(n_readings / span, res)


def bench_throughput(
    port: int,
    tmp: Path,
    n: int,
    n_batched: int,
    repeats: int,
    live: bool,
    profile_dir: Path | None,
    probe_offline_batched: bool = True,
) -> dict[str, Any]:
    start = time.time()
    single = single_messages(n, start)
    batched = batched_messages(n_batched, start)
    timeout = 300.0
    out: dict[str, Any] = {"n_single": n, "n_batched_msgs": n_batched, "repeats": repeats}
    modes = [("offline", False)] + ([("live", True)] if live else [])
    for mode, is_live in modes:
        base_runs, agent_runs, ratios = [], [], []
        cpu_ratios: list[float] = []
        fast_runs: list[float] = []
        fast_ratios: list[float] = []
        details: list[dict[str, Any]] = []
        for r in range(repeats):
            b = measure_consumer(
                "baseline", port, tmp, single, 1, live=is_live, tag=f"s-{mode}-{r}", timeout=timeout
            )
            prof = str(profile_dir / f"agent-single-{mode}.prof") if profile_dir and r == 0 else None
            a = measure_consumer(
                "agent",
                port,
                tmp,
                single,
                1,
                live=is_live,
                tag=f"s-{mode}-{r}",
                timeout=timeout,
                profile=prof,
            )
            if not is_live:  # offline only: the same subscriber on the agent's client (information)
                f = measure_consumer(
                    "baseline-fast", port, tmp, single, 1, live=False, tag=f"s-{mode}-{r}", timeout=timeout
                )
                fast_runs.append(f.rate)
                fast_ratios.append(a.rate / f.rate)
                print(f"  single/{mode} run {r + 1}: bare FastClient subscriber {f.rate:,.0f}/s", flush=True)
            base_runs.append(b.rate)
            agent_runs.append(a.rate)
            details.append(a.detail)
            ratios.append(a.rate / b.rate)
            # CPU seconds per message of each consumer: the ratio a loaded machine disturbs least.
            b_cpu, a_cpu = b.detail.get("cpu_s"), a.detail.get("cpu_s")
            cpu_note = ""
            if b_cpu and a_cpu:
                cpu_ratios.append(b_cpu / a_cpu)
                cpu_note = (
                    f", CPU {b_cpu / n * 1e6:.1f} vs {a_cpu / n * 1e6:.1f} us/msg "
                    f"(CPU ratio {b_cpu / a_cpu:.3f})"
                )
            print(
                f"  single/{mode} run {r + 1}: baseline {b.rate:,.0f}/s, agent {a.rate:,.0f}/s, "
                f"ratio {a.rate / b.rate:.3f}{cpu_note} (summaries {a.detail['summaries']}, "
                f"readings {a.detail['readings']}, agent GC {a.detail.get('gc_s', 0):.3f} s in "
                f"{a.detail.get('gc_full', 0)} full collections)",
                flush=True,
            )
        out[f"single_{mode}"] = {
            "baseline": base_runs, "agent": agent_runs, "ratio": ratios, "cpu_ratio": cpu_ratios
        }
        if fast_runs:
            out[f"single_{mode}"].update(baseline_fast=fast_runs, ratio_fast=fast_ratios)
        out[f"details_{mode}"] = details
    # Batched runs are live (the agent is connected before the publisher starts): a pre-queued backlog of
    # 100-reading messages does not complete at all (see the offline probe below and the report).
    b_runs, a_runs = [], []
    for r in range(repeats):
        b = measure_consumer("baseline", port, tmp, batched, BATCH, live=True, tag=f"b-{r}", timeout=timeout)
        prof = str(profile_dir / "agent-batched.prof") if profile_dir and r == 0 else None
        a = measure_consumer(
            "agent", port, tmp, batched, BATCH, live=True, tag=f"b-{r}", timeout=timeout, profile=prof
        )
        b_runs.append(b.rate)
        a_runs.append(a.rate)
        print(
            f"  batched/live run {r + 1}: agent {a.rate:,.0f} readings/s "
            f"(bare subscriber {b.rate / BATCH:,.0f} msg/s)",
            flush=True,
        )
    if probe_offline_batched:
        try:
            a = measure_consumer("agent", port, tmp, batched, BATCH, live=False, tag="b-off", timeout=90.0)
            out["batched_offline"] = {"ok": True, "rate": a.rate, "detail": a.detail}
        except ChildFailed as exc:
            out["batched_offline"] = {"ok": False, "error": str(exc)[-600:], "detail": exc.detail}
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            out["batched_offline"] = {"ok": False, "error": str(exc)[-600:]}
        print(f"  batched/offline probe: {out['batched_offline']}"[:400], flush=True)
    out["batched"] = {"baseline": b_runs, "agent": a_runs}
    return out
