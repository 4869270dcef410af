"""Resident memory of the agent under repeated load, sampled from /proc (RSS and its high-water mark)."""

from __future__ import annotations

import contextlib
import statistics
import time
from pathlib import Path
from typing import Any

from bench.agent.bandwidth import agent_metric
from bench.agent.workload import BATCH, batched_messages, publish_lines

# ---------------------------------------------------------------------------- memory


def _rss_kb(pid: int) -> tuple[int, int]:
    rss = hwm = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1])
        elif line.startswith("VmHWM:"):
            hwm = int(line.split()[1])
    return rss, hwm


def bench_memory(port: int, tmp: Path, n_msgs: int, rounds: int, settle_s: float) -> dict[str, Any]:
    """RSS of one ``edge-agent run`` process (no model) under batched load, then idle."""
    import threading

    from edgeloop_sim.broker import free_port
    from edgeloop_sim.harness.agent import AgentProcess, agent_config, wait_until

    node = "bench-mem"
    cfg = agent_config(
        tmp,
        node,
        port,
        windows={"length_s": 10.0, "idle_close_s": 15.0},
        outbox={"batch_max_delay_s": 1.0},
        metrics={"enabled": True, "port": free_port()},
        log={"level": "INFO", "format": "json"},
    )
    agent = AgentProcess(tmp, cfg)
    samples: list[tuple[float, int, str]] = []
    phase = ["start"]
    stop = threading.Event()
    try:
        agent.start()
        assert agent.proc is not None
        pid = agent.proc.pid
        rss0, _ = _rss_kb(pid)

        def sample() -> None:
            while not stop.is_set():
                with contextlib.suppress(OSError):
                    samples.append((time.monotonic(), _rss_kb(pid)[0], phase[0]))
                stop.wait(0.02)

        th = threading.Thread(target=sample, name="rss-sampler", daemon=True)
        th.start()
        total = 0
        for r in range(rounds):
            msgs = batched_messages(n_msgs, time.time() + r * 86_400 * 10)
            total += n_msgs * BATCH
            phase[0] = f"load{r}"
            publish_lines(port, msgs, parallel=True)
            wait_until(lambda t=total: agent_metric(agent, "readings_in_total") >= t, 300, "agent to absorb load")  # noqa: E501
        phase[0] = "idle"
        stop.wait(settle_s)
        stop.set()
        th.join()
        rss, hwm = _rss_kb(pid)
    finally:
        stop.set()
        agent.close()
    last_load = [kb for _, kb, ph in samples if ph == f"load{rounds - 1}"]
    idle = [kb for _, kb, ph in samples if ph == "idle"]
    return {
        "rss_start_mb": rss0 / 1024,
        "load_median_mb": statistics.median(last_load) / 1024 if last_load else None,
        "load_max_mb": max(last_load) / 1024 if last_load else None,
        "steady_mb": statistics.median(idle) / 1024 if idle else rss / 1024,
        "peak_mb": hwm / 1024,
        "readings": total,
        "rounds": rounds,
    }
