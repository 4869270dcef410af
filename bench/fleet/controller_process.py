"""``cloud-controller run`` as the benchmarked process, and the thread that samples it during a run."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

from bench.fleet.probes import cpu_s, metric, proc_kb, scrape, wait_for
from edgeloop_sim.broker import Broker, free_port

REPO = Path(__file__).resolve().parents[2]


class ControllerProcess:
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

    def __init__(self, ctl: ControllerProcess, period: float = 1.0) -> None:
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
