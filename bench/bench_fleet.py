"""Fleet benchmark: one ``cloud-controller run`` against 1,000 light simulated nodes.

Usage::

    .venv/bin/python bench/bench_fleet.py                 # 1,000 nodes: ingest, rollout, RSS, throttle
    .venv/bin/python bench/bench_fleet.py --quick         # 100 nodes, smoke test
    .venv/bin/python bench/bench_fleet.py --minutes 10    # soak (issue 5/5): RSS growth, errors, latency

Parts, all real processes: mosquitto (``edgeloop_sim.broker``), the controller
(embedded SQLite store, enrollment auto) and ``edgeloop_sim.fleet_sim`` workers
(each node its own MQTT client id). Measured:

1. ingest, live: every node offers ``--rate`` summaries/s; summaries stored per
   second (controller ``/metrics``) and created -> stored latency (the
   ``created`` and ``received`` columns of the controller's summaries.db;
   ``received`` is taken when the burst is processed, just before its commit);
2. ingest, capacity: the controller is stopped, its persistent session
   collects a backlog, it is restarted and timed draining it (the sim is idle,
   so the controller is not competing with the load generator for the 2 cores);
3. rollout: a signed 1 MB release is published (retained), an EdgeModel and a
   ModelRollout (10/50/100 %, no pauses, passing analysis) are created in the
   store; time from creation to phase Succeeded with every node updated;
4. controller RSS (VmRSS, VmHWM from /proc) with all nodes connected;
5. EdgeNode status writes/s (``status_writes`` counter) against the throttle.

Writes the ``bench:fleet`` block (``bench:fleet-soak`` for ``--minutes``) of
docs/benchmarks.md through ``bench/_report.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from _report import command_line, machine_line, write_block  # noqa: E402

from edge_agent.ops.tables import markdown_table  # noqa: E402
from edgeloop_sim.broker import Broker, free_port  # noqa: E402
from edgeloop_sim.fleet_sim import FleetSim, SimConfig, node_names  # noqa: E402

NAME = "fleet"
TARGET_INGEST = 5000.0
TARGET_ROLLOUT_S = 60.0
TARGET_RSS_MB = 300.0
TARGET_SOAK_GROWTH = 0.10
MP = "edgeloop_controller_"


# --------------------------------------------------------------------------- helpers


def raise_fd_limit(want: int = 16384) -> tuple[int, int]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < want:
        new = want if hard == resource.RLIM_INFINITY else min(want, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def proc_kb(pid: int, key: str) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


def cpu_s(pid: int | None) -> float:
    """utime + stime of ``pid`` in seconds (what the controller really got on a shared machine)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return float("nan")


def scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        name, _, value = line.rpartition(" ")
        try:
            out[name] = float(value)
        except ValueError:
            continue
    return out


def metric(m: dict[str, float], name: str) -> float:
    return m.get(MP + name + "_total", m.get(MP + name, 0.0))


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))]


def wait_for(pred: Any, timeout: float, what: str, poll_s: float = 0.25) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout}s")
        time.sleep(poll_s)


class Controller:
    """``cloud-controller run`` as a subprocess; restartable (same store, data dir and MQTT session)."""

    def __init__(self, root: Path, broker: Broker, args: argparse.Namespace) -> None:
        self.root = root
        self.store = root / "resources.db"
        self.data = root / "controller"
        self.log = root / "controller.log"
        self.http_port = free_port()
        self.broker = broker
        self.args = args
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0

    def start(self) -> None:
        cmd = [
            sys.executable,
            "-m",
            "cloud_controller.cli.main",
            "--log-level",
            "INFO",
            "run",
            "--store",
            str(self.store),
            "--data-dir",
            str(self.data),
            "--broker",
            f"127.0.0.1:{self.broker.port}",
            "--http-port",
            str(self.http_port),
            "--enrollment",
            "auto",
            "--client-id",
            "edgeloop-controller-bench",
            "--status-interval",
            str(self.args.status_interval),
            "--status-max-writes",
            str(self.args.status_max_writes),
        ]
        with self.log.open("ab") as f:
            self.proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=REPO)
        self.started_at = time.time()
        wait_for(self.ready, 60, "controller /readyz")

    def ready(self) -> bool:
        if self.proc is None or self.proc.poll() is not None:
            raise RuntimeError(f"controller exited; see {self.log}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/readyz", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.proc.poll() is None else None

    def metrics(self) -> dict[str, float]:
        return scrape(self.http_port)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def error_lines(self) -> list[str]:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return [ln for ln in text.splitlines() if " ERROR " in ln or "Traceback" in ln]

    def warning_count(self) -> Counter[str]:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        c: Counter[str] = Counter()
        for ln in text.splitlines():
            if " WARNING " in ln:
                c[" ".join(ln.split(" WARNING ", 1)[1].split()[:3])] += 1
        return c


class Sampler(threading.Thread):
    """Every ``period`` s: controller metrics, RSS, load average (a restart changes the pid: followed)."""

    def __init__(self, ctl: Controller, period: float = 1.0) -> None:
        super().__init__(name="bench-sampler", daemon=True)
        self.ctl = ctl
        self.period = period
        self.samples: list[dict[str, Any]] = []
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.wait(self.period):
            pid = self.ctl.pid
            if pid is None:
                continue
            try:
                m = self.ctl.metrics()
            except OSError:
                continue
            self.samples.append(
                {
                    "t": time.time(),
                    "pid": pid,
                    "rss_kb": proc_kb(pid, "VmRSS"),
                    "hwm_kb": proc_kb(pid, "VmHWM"),
                    "writes": metric(m, "status_writes"),
                    "stored": metric(m, "ingest_summaries_stored"),
                    "load": os.getloadavg()[0],
                    "cpu": cpu_s(pid),
                }
            )

    def stop(self) -> None:
        self._halt.set()
        self.join(5)

    def between(self, t0: float, t1: float) -> list[dict[str, Any]]:
        return [s for s in self.samples if t0 <= s["t"] <= t1]


def latencies(db: Path, t0: float, t1: float) -> list[float]:
    """created -> stored (ms) of the batches created in [t0, t1] (read-only while the controller writes)."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        rows = con.execute(
            "SELECT (received - created) * 1000 FROM batches WHERE created BETWEEN ? AND ?", (t0, t1)
        ).fetchall()
    finally:
        con.close()
    return [r[0] for r in rows]


def drain_rate(db: Path, since: float) -> tuple[int, float]:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        n, lo, hi = con.execute(
            "SELECT COUNT(*), MIN(received), MAX(received) FROM batches WHERE received >= ?", (since,)
        ).fetchone()
    finally:
        con.close()
    return int(n), (hi - lo) if n else 0.0


def write_rates(samples: list[dict[str, Any]], window_s: float = 5.0) -> tuple[float, float]:
    """(mean, max over ``window_s`` windows) of status writes/s; restarts (counter resets) are skipped."""
    rates = []
    for i, a in enumerate(samples):
        for b in samples[i + 1 :]:
            if b["pid"] != a["pid"]:
                break
            if b["t"] - a["t"] >= window_s:
                rates.append((b["writes"] - a["writes"]) / (b["t"] - a["t"]))
                break
    if not rates:
        return 0.0, 0.0
    return statistics.fmean(rates), max(rates)


# --------------------------------------------------------------------------- release + rollout


def make_release(root: Path, model_bytes: int) -> tuple[Any, Path, float]:
    from cloud_controller.releases.artifacts import ArtifactStore
    from cloud_controller.releases.signing import generate_keys, load_private_key
    from edge_agent.models.bundle import write_bundle

    keys = generate_keys(root / "keys")
    # Random-ish bytes (incompressible): the simulated nodes verify but do not load ONNX.
    model = os.urandom(model_bytes)
    bundle = write_bundle(
        root / "bundles" / "2",
        {"model.onnx": model, "labels.json": b"{}", "vocab.json": b"{}"},
        {"name": "sim-model", "task": "sensor-anomaly", "version": "2", "metrics": {"f1": 0.8}},
    )
    t = time.perf_counter()
    rel = ArtifactStore(root / "artifacts").put_bundle(
        bundle, load_private_key(keys.private_path), task="sensor"
    )
    return rel, keys.public_path, time.perf_counter() - t


async def publish_release(broker: Broker, root: Path, rel: Any) -> float:
    from cloud_controller.releases.artifacts import ArtifactStore
    from cloud_controller.releases.publisher import ModelPublisher
    from edge_agent.config import MqttConfig
    from edge_agent.transport.mqtt import MqttClient

    client = MqttClient(
        MqttConfig(host="127.0.0.1", port=broker.port), "edgeloop-controller-release", clean_start=True
    )
    await client.start()
    try:
        await client.wait_connected(10)
        t = time.perf_counter()
        await ModelPublisher(client, ArtifactStore(root / "artifacts")).publish(rel)
        return time.perf_counter() - t
    finally:
        await client.stop()


async def create_rollout(store_path: Path, root: Path, rel: Any) -> None:
    from cloud_controller.releases.artifacts import ArtifactStore
    from cloud_controller.resources.sqlite_store import SqliteResourceStore
    from cloud_controller.resources.store_protocol import API_VERSION

    store = SqliteResourceStore(store_path)
    try:
        await store.create(ArtifactStore(root / "artifacts").edge_model(rel, name="sim-model-2"))
        await store.create(
            {
                "apiVersion": API_VERSION,
                "kind": "ModelRollout",
                "metadata": {"name": "sim-model-2-rollout", "namespace": "default"},
                "spec": {
                    "model": rel.name,
                    "version": rel.version,
                    "steps": [
                        {"setWeight": 10, "pauseSeconds": 0},
                        {"setWeight": 50, "pauseSeconds": 0},
                        {"setWeight": 100, "pauseSeconds": 0},
                    ],
                    "analysis": {"maxErrorRate": 0.05, "maxEscalationRate": 0.5, "minSamples": 10},
                },
            }
        )
    finally:
        await store.close()


async def rollout_status(store_path: Path) -> dict[str, Any]:
    from cloud_controller.resources.sqlite_store import SqliteResourceStore

    store = SqliteResourceStore(store_path)
    try:
        obj = await store.get("ModelRollout", "default", "sim-model-2-rollout")
        return dict(obj.get("status") or {})
    finally:
        await store.close()


# --------------------------------------------------------------------------- the run


def run(args: argparse.Namespace) -> dict[str, Any]:
    fd = raise_fd_limit(max(16384, args.nodes * 4 + 1024))
    (REPO / "var").mkdir(exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="bench-fleet-", dir=REPO / "var"))
    res: dict[str, Any] = {"root": str(root), "fd_limit": fd[0], "nodes": args.nodes}
    print(f"bench-fleet: {args.nodes} nodes, work dir {root}", flush=True)
    broker = Broker(root / "broker", persistence=False, extra_config=["max_connections -1"])
    broker.start()
    ctl = Controller(root, broker, args)
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
    args: argparse.Namespace, res: dict[str, Any], ctl: Controller, sim: FleetSim, sampler: Sampler
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


# --------------------------------------------------------------------------- report


def verdict(ok: bool) -> str:
    return "**meets**" if ok else "**misses**"


def render(args: argparse.Namespace, r: dict[str, Any]) -> str:
    load = r.get("load", (0, 0, 0))
    head = [
        f"Command: `{command_line()}`  ",
        f"Machine: {machine_line()}; mosquitto 2.0.11; load average at the end {load[0]:.2f} / {load[1]:.2f} "
        f"/ {load[2]:.2f} (2 cores shared with other jobs)  ",
        f"Setup: {args.nodes} simulated nodes (own MQTT client id each, {args.workers} simulator processes), "
        "one `cloud-controller run` (SQLite store, enrollment auto, status interval "
        f"{args.status_interval:g} s, "
        f"max {args.status_max_writes:g} status writes/s), mosquitto; node status every "
        f"{args.node_status_interval:g} s. Nodes connected in {r['connect_s']:.1f} s, all EdgeNodes "
        "registered "
        f"after {r['register_s']:.1f} s. fd limit {r['fd_limit']}.",
        "",
    ]
    if "soak" in r:
        s = r["soak"]
        rows = [
            [
                "RSS growth after warm-up (last vs first)",
                f"{s['growth'] * 100:+.1f} % "
                f"({s['rss_first_mb']:.0f} -> {s['rss_last_mb']:.0f} MB, peak {s['rss_peak_mb']:.0f} MB)",
                "< 10 %",
                verdict(s["growth"] < TARGET_SOAK_GROWTH),
            ],
            [
                "errors (controller ERROR lines, rejects, sim publish errors, disconnects)",
                f"{len(s['errors'])}, {s['rejected']:.0f}, {s['sim_publish_errors']}, {s['sim_disconnects']}",
                "0",
                verdict(not s["errors"] and not s["rejected"] and not s["sim_publish_errors"]),
            ],
            [
                "summaries stored / offered per s",
                f"{s['stored_per_s']:.0f} / {s['offered_per_s']:.0f}",
                "-",
                "",
            ],
            [
                "ingest latency created -> stored p50 / p99",
                f"{s['p50_ms']:.1f} / {s['p99_ms']:.1f} ms (n={s['n_lat']})",
                "reported",
                "",
            ],
            [
                "status writes/s mean / max (5 s)",
                f"{s['writes']['mean_per_s']:.1f} / {s['writes']['max_5s_per_s']:.1f}",
                f"<= {s['writes']['bound']:g}",
                verdict(s["writes"]["max_5s_per_s"] <= s["writes"]["bound"] * 1.05),
            ],
        ]
        series = ", ".join(
            f"{t:.0f}s:{v:.0f}" for t, v in s["rss_series"][:: max(1, len(s["rss_series"]) // 12)]
        )
        return "\n".join(
            [
                f"## Fleet soak: {args.nodes} nodes for {s['minutes']} min, {s['rate']:g} "
                "summaries/s per node",
                "",
                *head,
                markdown_table(["metric", "measured", "target", ""], rows),
                "",
                f"- RSS (MB) after {s['warmup_s']:.0f} s warm-up, every 10 s (subsampled): {series}; VmHWM "
                f"{s['hwm_mb']:.0f} MB.",
                "- Latency is `received - created` from the controller's summaries.db (`received` "
                "is stamped when "
                "the burst is processed, just before its commit; same host clock).",
            ]
        )
    lv, cap, ro, w = r["live"], r["capacity"], r["rollout"], r["writes"]
    rows = [
        [
            "summaries ingested/s, live (offered)",
            f"{lv['stored_per_s']:.0f} ({lv['offered_per_s']:.0f} offered)",
            f">= {TARGET_INGEST:g}",
            verdict(lv["stored_per_s"] >= TARGET_INGEST),
        ],
        [
            "summaries ingested/s, capacity (backlog drain)",
            f"{cap['per_s']:.0f} ({cap['stored']} in {cap['span_s']:.1f} s)",
            f">= {TARGET_INGEST:g}",
            verdict(cap["per_s"] >= TARGET_INGEST),
        ],
        [
            "ingest latency created -> stored p50 / p99 (live)",
            f"{lv['p50_ms']:.1f} / {lv['p99_ms']:.1f} ms",
            "reported",
            "",
        ],
        [
            f"rollout {r['release']['size'] / 1e6:.2f} MB model 0 -> 100 %",
            f"{ro['seconds']:.1f} s ({ro['phase']}, {ro['updated']}/{ro['total']} updated, "
            f"{ro['ready']} ready)",
            f"<= {TARGET_ROLLOUT_S:g} s",
            verdict(
                ro["phase"] == "Succeeded"
                and ro["seconds"] <= TARGET_ROLLOUT_S
                and ro["updated"] == args.nodes
            ),
        ],
        [
            "controller RSS with all nodes (after live ingest / at the end, VmHWM)",
            f"{r['rss_mb']:.0f} / {r['rss_mb_end']:.0f} MB (HWM {r['hwm_mb']:.0f})",
            f"<= {TARGET_RSS_MB:g} MB",
            verdict(max(r["rss_mb"], r["rss_mb_end"]) <= TARGET_RSS_MB),
        ],
        [
            "EdgeNode status writes/s mean / max (5 s windows)",
            f"{w['mean_per_s']:.1f} / {w['max_5s_per_s']:.1f}",
            f"<= {w['bound']:g} ({args.status_max_writes:g}/s + 1 s burst over 5 s; +5 % sampling jitter)",
            verdict(w["max_5s_per_s"] <= w["bound"] * 1.05),
        ],
    ]
    lines = [
        f"## Fleet: {args.nodes} simulated nodes against one controller",
        "",
        *head,
        markdown_table(["metric", "measured", "target", ""], rows),
        "",
        f"- Live: each node offered {args.rate:g} summaries/s for {args.ingest_seconds:g} s after "
        f"{args.warmup:g} s warm-up; {lv['skipped']} sends skipped at the per-node in-flight bound; load "
        f"average during it {lv['load']:.2f}. Latency is `received - created` from summaries.db "
        f"(n={lv['n_lat']}; "
        "`received` is stamped when the burst is processed, just before its commit).",
        f"- Controller CPU: live {lv['cpu_us_per_msg']:.0f} us per ingested message ({lv['cpu_s']:.1f} CPU-s "
        f"in {args.ingest_seconds:g} s, i.e. {lv['cpu_s'] / args.ingest_seconds * 100:.0f} % of a "
        "core); backlog "
        f"drain {cap['cpu_us_per_summary']:.0f} us per stored summary ({cap['cpu_s']:.1f} CPU-s): one "
        f"uncontended core would ingest about {1e6 / cap['cpu_us_per_summary']:.0f} summaries/s. "
        "Load average "
        f"during the drain {cap['load']:.2f}; drain messages {cap['messages']:.0f}, duplicates "
        f"{cap['duplicates']:.0f}.",
        (
            f"- Capacity: controller stopped, {cap['backlog']} summaries queued by mosquitto in its "
            "persistent session, controller restarted with the simulator idle"
            if args.restart_drain
            else f"- Capacity: a burst of {cap['backlog']} summaries ({args.backlog_per_node} per node) "
            "published as fast as the simulator can, drained by the running controller"
        )
        + "; rate = stored rows / (last - first received). "
        f"Burst start to drained: {cap['restart_to_drained_s']:.1f} s.",
        f"- Rollout: release signed in {r['release']['sign_s']:.2f} s and published once, retained "
        f"({r['release']['chunks']} chunks, {r['release']['publish_s']:.2f} s); steps 10/50/100 % without "
        f"pauses; analysis maxErrorRate 0.05, maxEscalationRate 0.5, minSamples 10. Step start times (s): "
        f"{ro['step_started_s']}. Per node fetch (new connection, manifest + signature, "
        f"{r['release']['chunks']} "
        f"chunks sha256-checked, archive + files re-hashed; not unpacked to disk, ONNX not loaded) p50 "
        f"{ro['fetch_p50_s']:.2f} s, p99 {ro['fetch_p99_s']:.2f} s; {ro['bytes_fetched'] / 1e6:.0f} "
        "MB fetched "
        f"in total, fetch failures {ro['fetch_failures']}, verify errors {ro['verify_errors'] or 0}.",
        f"- Status writes: {w['total']:.0f} admitted, {w['coalesced']:.0f} deferred/coalesced "
        f"({w['rate_limited']:.0f} by the global rate).",
        f"- Errors: controller ERROR lines {len(r['errors'])}, ingest rejects {r['rejected']:.0f}, simulator "
        f"{r['sim']}; top warnings {r['warnings'] or '-'}.",
    ]
    if r.get("profile"):
        prof = ", ".join(f"`{k[:70]}` {v * 100:.0f} %" for k, v in r["profile"][:8])
        lines.append(f"- py-spy (self time, controller during the live phase): {prof}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--nodes", type=int, default=1000)
    p.add_argument("--workers", type=int, default=4, help="simulator processes")
    p.add_argument(
        "--rate",
        type=float,
        default=None,
        help="summaries/s per node (default 5; soak 0.1: one per 10 s window, as an agent sends)",
    )
    p.add_argument("--warmup", type=float, default=10.0)
    p.add_argument("--ingest-seconds", type=float, default=20.0)
    p.add_argument("--backlog-per-node", type=int, default=30)
    p.add_argument(
        "--restart-drain",
        action="store_true",
        help="queue the backlog while the controller is stopped, then restart it (see the report)",
    )
    p.add_argument("--drain-timeout", type=float, default=420.0)
    p.add_argument("--rollout-rate", type=float, default=0.2, help="summaries/s per node during the rollout")
    p.add_argument("--rollout-timeout", type=float, default=300.0)
    p.add_argument("--model-bytes", type=int, default=1 << 20)
    p.add_argument(
        "--status-interval", type=float, default=5.0, help="controller: per-node status write interval"
    )
    p.add_argument("--status-max-writes", type=float, default=100.0)
    p.add_argument("--node-status-interval", type=float, default=10.0, help="simulated node heartbeat")
    p.add_argument("--minutes", type=float, default=0.0, help="soak mode")
    p.add_argument("--profile", type=int, default=0, help="py-spy the controller for N s during the drain")
    p.add_argument("--quick", action="store_true", help="100 nodes, short phases (smoke test)")
    p.add_argument("--no-write", action="store_true")
    p.add_argument("--json", type=Path, default=None, help="also dump the raw results here")
    p.add_argument(
        "--doc", type=Path, default=None, help="markdown file for the block (default docs/benchmarks.md)"
    )
    args = p.parse_args(argv)
    if args.quick:
        args.nodes, args.workers = min(args.nodes, 100), min(args.workers, 2)
        args.warmup, args.ingest_seconds, args.backlog_per_node = 3.0, 6.0, 20
        args.minutes = min(args.minutes, 0.5) if args.minutes else 0.0
    if args.rate is None:
        args.rate = 0.1 if args.minutes else 5.0
    # nohup ... & starts us with SIGINT ignored: make SIGTERM unwind through the cleanup in run().
    signal.signal(signal.SIGTERM, lambda *_a: sys.exit(143))
    res = run(args)
    body = render(args, res)
    print(body)
    if args.json:
        args.json.write_text(json.dumps(res, indent=1, default=str))
    if not args.no_write:
        name = NAME + ("-soak" if args.minutes else "") + ("-quick" if args.quick else "")
        if args.doc is not None:
            write_block(name, body, args.doc)
        else:
            write_block(name, body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
