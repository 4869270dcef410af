"""What the fleet benchmark samples: the controller's metrics, /proc figures, and ingest latency and
rates read back from the controller's own database."""

from __future__ import annotations

import os
import resource
import sqlite3
import statistics
import urllib.request
from pathlib import Path
from typing import Any

from edgeloop_sim.harness.agent import wait_until

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
    """The harness's poller, at a pace that does not load the controller being measured."""
    wait_until(pred, timeout, what, poll_s, error=TimeoutError)




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
