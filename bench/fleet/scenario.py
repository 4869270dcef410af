"""The fleet run itself: N simulated nodes against a real controller (ingest, rollout, memory), and
the long soak."""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bench.fleet.controller_process import ControllerProcess, Sampler
from bench.fleet.probes import (
    cpu_s,
    drain_rate,
    latencies,
    metric,
    pct,
    proc_kb,
    raise_fd_limit,
    wait_for,
    write_rates,
)
from bench.fleet.rollout_release import create_rollout, make_release, publish_release, rollout_status
from edgeloop_sim.broker import Broker
from edgeloop_sim.fleet_sim import FleetSim
from edgeloop_sim.sim_node import SimConfig, node_names

REPO = Path(__file__).resolve().parents[2]


# --------------------------------------------------------------------------- the run


def run(args: argparse.Namespace) -> dict[str, Any]:
    fd = raise_fd_limit(max(16384, args.nodes * 4 + 1024))
    (REPO / "var").mkdir(exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="bench-fleet-", dir=REPO / "var"))
    res: dict[str, Any] = {"root": str(root), "fd_limit": fd[0], "nodes": args.nodes}
    print(f"bench-fleet: {args.nodes} nodes, work dir {root}", flush=True)
    broker = Broker(root / "broker", persistence=False, extra_config=["max_connections -1"])
    broker.start()
    ctl = ControllerProcess(root, broker, args)
    sim: FleetSim | None = None
    sampler: Sampler | None = None
    py_spy: subprocess.Popen[bytes] | None = None
    try:
        rel, pub_path, sign_s = make_release(root, args.model_bytes)
        res["release"] = {
            "size": rel.size,
            "chunks": rel.chunks,
            "sign_s": sign_s,
            "publish_s": asyncio.run(publish_release(broker, root, rel)),
        }
        ctl.start()
        sampler = Sampler(ctl)
        sampler.start()
        names = node_names(args.nodes)
        cfg = SimConfig(
            port=broker.port,
            rate=0.0,
            status_interval_s=args.node_status_interval,
            public_key_pem=pub_path.read_bytes(),
            initial_model="sim-model",
            initial_version="1",
        )
        sim = FleetSim(names, cfg, workers=args.workers)
        t = time.time()
        sim.start()
        sim.wait(lambda s: s["connected"] >= args.nodes, 180)
        res["connect_s"] = time.time() - t
        wait_for(lambda: metric(ctl.metrics(), "nodes_registered") >= args.nodes, 180, "all nodes registered")
        res["register_s"] = time.time() - t
        print(
            f"  connected {args.nodes} in {res['connect_s']:.1f}s, registered in {res['register_s']:.1f}s",
            flush=True,
        )

        if args.minutes:
            soak(args, res, ctl, sim, sampler)
            return res

        # 1. live ingest at the offered rate
        sim.set_rate(args.rate)
        time.sleep(args.warmup)  # bench: let the offered load reach steady state
        if args.profile:
            py_spy = subprocess.Popen(
                [
                    str(REPO / ".venv" / "bin" / "py-spy"),
                    "record",
                    "-p",
                    str(ctl.pid),
                    "-r",
                    "50",
                    "-d",
                    str(args.profile),
                    "-f",
                    "raw",
                    "-o",
                    str(root / "live-profile.txt"),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        m0, s0, t0, c0 = ctl.metrics(), sim.stats(), time.time(), cpu_s(ctl.pid)
        time.sleep(args.ingest_seconds)
        m1, s1, t1, c1 = ctl.metrics(), sim.stats(), time.time(), cpu_s(ctl.pid)
        stored = metric(m1, "ingest_summaries_stored") - metric(m0, "ingest_summaries_stored")
        offered = s1["summaries_published"] - s0["summaries_published"]
        if py_spy is not None:
            py_spy.wait(args.profile + 30)
            res["profile"] = summarize_profile(root / "live-profile.txt")
            py_spy = None
        res["live"] = {
            "offered_per_s": offered / (t1 - t0),
            "stored_per_s": stored / (t1 - t0),
            "skipped": s1["summaries_skipped"] - s0["summaries_skipped"],
            "load": os.getloadavg()[0],
            "cpu_s": c1 - c0,
            "cpu_us_per_msg": (c1 - c0)
            / max(1.0, metric(m1, "ingest_messages") - metric(m0, "ingest_messages"))
            * 1e6,
        }
        print(f"  live: {res['live']}", flush=True)
        pid = ctl.pid
        assert pid is not None
        res["rss_mb"] = (proc_kb(pid, "VmRSS") or 0) / 1024

        # 2. capacity: drain a backlog with the load generator idle
        sim.set_rate(0)
        s = sim.wait(lambda s: s["backlog_done"], 60)
        wait_for(
            lambda: metric(ctl.metrics(), "ingest_summaries_stored") >= s["summaries_acked"],
            300,
            "live load drained",
            0.5,
        )
        res["live"]["drained_after_s"] = time.time() - t1
        # After the drain: a batch the controller fell behind on counts with its full queueing delay.
        lat = latencies(ctl.data / "summaries.db", t0, t1)
        res["live"].update(p50_ms=pct(lat, 50), p99_ms=pct(lat, 99), n_lat=len(lat))
        backlog = args.backlog_per_node * args.nodes
        base = metric(ctl.metrics(), "ingest_summaries_stored")
        if args.restart_drain:  # the backlog waits in the controller's persistent session
            ctl.stop()
            sim.backlog(args.backlog_per_node)
            sim.wait(lambda s: s["backlog_done"], 300)
            base = 0.0
            restart = time.time()
            ctl.start()
        else:  # a burst as fast as the simulator can publish; the controller drains it meanwhile and after
            restart = time.time()
            sim.backlog(args.backlog_per_node)
        wait_for(
            lambda: metric(ctl.metrics(), "ingest_summaries_stored") >= base + backlog,
            args.drain_timeout,
            "backlog drained",
            0.5,
        )
        m = ctl.metrics()
        drain = [x for x in sampler.samples if x["t"] >= restart and x["pid"] == ctl.pid]
        end = base + backlog
        drain = [x for x in drain if x["stored"] < end] + [x for x in drain if x["stored"] >= end][:1]
        if len(drain) >= 2 and drain[-1]["stored"] > drain[0]["stored"]:
            cpu0, cpu1, n_cpu = drain[0]["cpu"], drain[-1]["cpu"], drain[-1]["stored"] - drain[0]["stored"]
        else:  # drained within one sample: whole process, start-up included
            cpu0, cpu1, n_cpu = 0.0, cpu_s(ctl.pid), int(metric(m, "ingest_summaries_stored"))
        n, span = drain_rate(ctl.data / "summaries.db", restart)
        res["capacity"] = {
            "backlog": backlog,
            "stored": n,
            "span_s": span,
            "per_s": n / span if span else float("nan"),
            "restart_to_drained_s": time.time() - restart,
            "cpu_s": cpu1 - cpu0,
            "cpu_us_per_summary": (cpu1 - cpu0) / max(1, n_cpu) * 1e6,
            "messages": metric(m, "ingest_messages"),
            "duplicates": metric(m, "ingest_duplicates"),
            "load": os.getloadavg()[0],
        }
        print(f"  capacity: {res['capacity']}", flush=True)

        # 3. rollout, with light background traffic
        sim.set_rate(args.rollout_rate)
        time.sleep(3)  # bench: nodes re-seen after the restart
        t = time.time()
        asyncio.run(create_rollout(ctl.store, root, rel))
        st: dict[str, Any] = {}
        deadline = t + args.rollout_timeout
        steps: dict[int, float] = {}
        while time.time() < deadline:
            st = asyncio.run(rollout_status(ctl.store))
            if st.get("currentStep") is not None and st["currentStep"] not in steps:
                steps[st["currentStep"]] = time.time() - t
            if st.get("phase") in ("Succeeded", "RolledBack", "Failed"):
                break
            time.sleep(0.25)
        elapsed = time.time() - t
        s = sim.stats()
        fs = s.get("fetch_seconds") or []
        res["rollout"] = {
            "phase": st.get("phase"),
            "seconds": elapsed,
            "updated": st.get("updatedNodes"),
            "ready": st.get("readyNodes"),
            "total": st.get("totalNodes"),
            "nodes_on_v2": s["versions"].get("sim-model@2", 0),
            "fetch_p50_s": pct(fs, 50),
            "fetch_p99_s": pct(fs, 99),
            "fetch_failures": s["fetch_failures"],
            "verify_errors": s["verify_errors"],
            "bytes_fetched": s["fetch_bytes"],
            "step_started_s": steps,
        }
        print(f"  rollout: {res['rollout']}", flush=True)
        pid = ctl.pid
        assert pid is not None
        res["rss_mb_end"] = (proc_kb(pid, "VmRSS") or 0) / 1024
        res["hwm_mb"] = (proc_kb(pid, "VmHWM") or 0) / 1024
        m = ctl.metrics()
        res["rejected"] = metric(m, "ingest_rejected")
        res["sim"] = {k: s[k] for k in ("disconnects", "publish_errors", "summaries_skipped", "connects")}
        mean_w, max_w = write_rates(sampler.samples)
        res["writes"] = {
            "mean_per_s": mean_w,
            "max_5s_per_s": max_w,
            # Token bucket: rate plus one second's burst, spread over the 5 s measuring window.
            "bound": args.status_max_writes * (1 + 1 / 5),
            "total": metric(m, "status_writes"),
            "coalesced": metric(m, "status_coalesced"),
            "rate_limited": metric(m, "status_rate_limited"),
        }
        res["errors"] = ctl.error_lines()
        res["warnings"] = dict(ctl.warning_count().most_common(5))
        res["load"] = os.getloadavg()
        return res
    finally:
        if py_spy is not None and py_spy.poll() is None:
            py_spy.terminate()
        if sampler is not None:
            sampler.stop()
        if sim is not None:
            sim.stop()
        ctl.stop()
        broker.stop()


def soak(
    args: argparse.Namespace, res: dict[str, Any], ctl: ControllerProcess, sim: FleetSim, sampler: Sampler
) -> None:
    """``--minutes`` at ``--rate``: RSS every 10 s after warm-up, errors, latency over the whole soak."""
    sim.set_rate(args.rate)
    t_start = time.time()
    total = args.minutes * 60
    warm = min(120.0, total * 0.2)
    rss: list[tuple[float, float]] = []
    s0: dict[str, Any] | None = None
    m0: dict[str, float] = {}
    t0 = t_start
    while time.time() - t_start < total:
        time.sleep(10)  # bench: the sampling period itself
        el = time.time() - t_start
        pid = ctl.pid
        if pid is None:
            raise RuntimeError("controller died during the soak")
        if el >= warm:
            if s0 is None:
                s0, m0, t0 = sim.stats(), ctl.metrics(), time.time()
            rss.append((el, (proc_kb(pid, "VmRSS") or 0) / 1024))
            print(f"  soak t={el:.0f}s rss={rss[-1][1]:.1f} MB load={os.getloadavg()[0]:.2f}", flush=True)
    t1 = time.time()
    s1, m1 = sim.stats(), ctl.metrics()
    lat = latencies(ctl.data / "summaries.db", t0, t1 - 2.0)
    first, last, peak = rss[0][1], rss[-1][1], max(r for _, r in rss)
    assert s0 is not None
    res["soak"] = {
        "minutes": args.minutes,
        "warmup_s": warm,
        "rate": args.rate,
        "rss_first_mb": first,
        "rss_last_mb": last,
        "rss_peak_mb": peak,
        "growth": (last - first) / first,
        "peak_growth": (peak - first) / first,
        "rss_series": rss,
        "stored_per_s": (metric(m1, "ingest_summaries_stored") - metric(m0, "ingest_summaries_stored"))
        / (t1 - t0),
        "offered_per_s": (s1["summaries_published"] - s0["summaries_published"]) / (t1 - t0),
        "p50_ms": pct(lat, 50),
        "p99_ms": pct(lat, 99),
        "n_lat": len(lat),
        "rejected": metric(m1, "ingest_rejected"),
        "errors": ctl.error_lines(),
        "sim_disconnects": s1["disconnects"],
        "sim_publish_errors": s1["publish_errors"],
        "sim_skipped": s1["summaries_skipped"] - s0["summaries_skipped"],
        "hwm_mb": (proc_kb(ctl.pid or 0, "VmHWM") or 0) / 1024,
    }
    mean_w, max_w = write_rates(sampler.samples)
    res["soak"]["writes"] = {
        "mean_per_s": mean_w,
        "max_5s_per_s": max_w,
        "bound": args.status_max_writes * 1.2,
    }
    res["load"] = os.getloadavg()


def summarize_profile(path: Path, top: int = 15) -> list[tuple[str, float]]:
    """py-spy raw (collapsed) stacks -> share of busy samples by leaf function (self time)."""
    if not path.exists():
        return []
    c: Counter[str] = Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, n = line.rpartition(" ")
        if not n.isdigit():
            continue
        leaf = stack.split(";")[-1]
        if "concurrent/futures/thread.py:81" in leaf or "selectors.py" in leaf:
            continue  # idle executor threads and the event loop waiting: not work
        c[leaf] += int(n)
        total += int(n)
    return [(k, v / total) for k, v in c.most_common(top)] if total else []
