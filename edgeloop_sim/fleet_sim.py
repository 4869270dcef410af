"""Light simulated nodes for fleet benchmarks: many real MQTT clients, no agent inside.

Why not full agents: 1,000 agents (SQLite outbox, pipelines, ONNX) would measure
the simulator, not the controller. A simulated node keeps only what the
controller can observe on the wire, with the real payloads and identities:

* its own MQTT 5 client id ``edge-agent-{node}`` (ACLs and sessions are per node),
  a persistent session and an offline last will, like the agent;
* a retained :class:`wire.Status` (one :class:`wire.ModelStatus` per task) every
  ``status_interval_s`` and at once when it applied a desired state;
* :class:`wire.SummaryBatch` payloads (zlib JSON via ``wire.encode_summary``,
  unique ids, increasing ``seq``, QoS 1) at ``rate`` per node per second;
* its ``desired`` topic: a new model release is fetched like a real node does it
  (dedicated short-lived clean-start connection ``{client}-models-{task}``,
  retained manifest, its digest against ``ModelRef.digest``, the Ed25519
  signature against the pinned key, replay check, every chunk's length and
  sha256, then the whole archive and every file). Chunks stay in memory and the
  ONNX model is neither unpacked to disk nor loaded: that is edge cost, not
  controller cost. Then the node reports the new version active.

Scale: one asyncio loop per worker process drives its paho clients through
paho's socket callbacks (no thread per client); the parent spreads the nodes
over ``workers`` processes and talks to them over pipes (``FleetSim``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing as mp
import time
from collections.abc import Callable
from dataclasses import asdict
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho

from edge_agent.protocol import messages as wire
from edge_agent.protocol.manifest import (
    key_id,
    load_public_key,
)
from edgeloop_sim.sim_node import SimConfig, SimNode, WorkerStats

log = logging.getLogger(__name__)

__all__ = ["FleetSim"]


# --------------------------------------------------------------------------- one worker process


def _template(cfg: SimConfig) -> wire.SummaryBatch:
    now = time.time()
    windows = [
        wire.WindowSummary(
            device=f"dev-{i}",
            metric="temperature",
            start=now - 10,
            end=now,
            count=10,
            min=20.0 + i,
            max=22.5 + i,
            mean=21.1 + i,
            std=0.4,
            first=20.2 + i,
            last=21.9 + i,
            slope=0.01,
            anomaly_score=0.05,
        )
        for i in range(cfg.windows_per_summary)
    ]
    return wire.SummaryBatch(id="template0", node="template", seq=0, created=now, windows=windows)


class Worker:
    def __init__(self, names: list[str], cfg: SimConfig, conn: Connection) -> None:
        self.names = names
        self.cfg = cfg
        self.conn = conn
        self.stats = WorkerStats(nodes=len(names))
        self.template = _template(cfg)
        self.public_keys: dict[str, bytes] = {}
        if cfg.public_key_pem:
            raw = load_public_key(cfg.public_key_pem)
            self.public_keys[key_id(raw)] = raw
        self.rate = cfg.rate
        self.stopping = False
        self.transfers: set[paho.Client] = set()
        self.fetch_tasks: set[asyncio.Task[None]] = set()
        self.loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]
        self.nodes: list[SimNode] = []
        self._stop = asyncio.Event()
        self._backlog: int = 0

    async def run(self) -> None:
        self.loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self.loop.add_reader(self.conn.fileno(), self._command)
        self.nodes = [SimNode(n, self.cfg, self) for n in self.names]
        tasks = [
            asyncio.create_task(self._connect_all(), name="sim-connect"),
            asyncio.create_task(self._misc(), name="sim-misc"),
            asyncio.create_task(self._summaries(), name="sim-summaries"),
            asyncio.create_task(self._statuses(), name="sim-statuses"),
        ]
        await self._stop.wait()
        self.stopping = True
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for n in self.nodes:
            with contextlib.suppress(Exception):
                n.client.disconnect()
                n.client.loop_write()
        await asyncio.sleep(0)  # the DISCONNECT packets go out before the process exits
        self.loop.remove_reader(self.conn.fileno())

    def _command(self) -> None:
        try:
            cmd, arg = self.conn.recv()
        except (EOFError, OSError):
            self._stop.set()
            return
        if cmd == "stats":
            self.stats.versions = {}
            for n in self.nodes:
                key = f"{n.model[0]}@{n.model[1]}"
                self.stats.versions[key] = self.stats.versions.get(key, 0) + 1
            self.stats.backlog_done = self._backlog == 0 and all(not n.inflight for n in self.nodes)
            self.conn.send(asdict(self.stats))
        elif cmd == "rate":
            self.rate = float(arg)
            self.conn.send(True)
        elif cmd == "backlog":
            # ``arg`` summaries per node as fast as in-flight bounds allow (queued by the broker).
            self._backlog = int(arg) * len(self.nodes)
            self.conn.send(True)
        elif cmd == "stop":
            self.conn.send(True)
            self._stop.set()

    async def _connect_all(self) -> None:
        delay = self.cfg.connect_spread_s / max(1, len(self.nodes))
        for i, n in enumerate(self.nodes):
            n.connect()
            if delay:
                await asyncio.sleep(delay)
            elif i % 20 == 19:
                await asyncio.sleep(0.01)  # let CONNACKs in: a connect storm the loop can digest

    async def _misc(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            for n in self.nodes:
                n.client.loop_misc()
            for c in list(self.transfers):
                c.loop_misc()

    async def _summaries(self) -> None:
        """Smooth offered load: every tick, credit ``rate x nodes x dt`` publishes, nodes round-robin."""
        tick = 0.02
        credit = 0.0
        i = 0
        last = time.monotonic()
        n_nodes = len(self.nodes)
        while True:
            await asyncio.sleep(tick)
            now = time.monotonic()
            dt, last = now - last, now
            if self._backlog > 0:
                sent = 0
                for _ in range(n_nodes):
                    node = self.nodes[i % n_nodes]
                    i += 1
                    if self._backlog > 0 and node.publish_summary():
                        self._backlog -= 1
                        sent += 1
                continue
            credit = min(credit + self.rate * n_nodes * dt, float(n_nodes))
            k = int(credit)
            credit -= k
            for _ in range(k):
                self.nodes[i % n_nodes].publish_summary()
                i += 1

    async def _statuses(self) -> None:
        """Each node's heartbeat status every ``status_interval_s``, phases spread over the interval."""
        interval = self.cfg.status_interval_s
        n_nodes = len(self.nodes)
        tick = 0.1
        per_tick = n_nodes * tick / interval
        credit = 0.0
        i = 0
        while True:
            await asyncio.sleep(tick)
            credit += per_tick
            k = int(credit)
            credit -= k
            for _ in range(k):
                self.nodes[i % n_nodes].publish_status()
                i += 1


def _worker_main(names: list[str], cfg: SimConfig, conn: Connection, log_level: str) -> None:
    logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)s fleet-sim %(message)s")
    asyncio.run(Worker(names, cfg, conn).run())


# --------------------------------------------------------------------------- parent side


class FleetSim:
    """``workers`` processes with ``len(names)/workers`` nodes each; start(), command, stop()."""

    def __init__(
        self, names: list[str], cfg: SimConfig, workers: int = 4, log_level: str = "WARNING"
    ) -> None:
        self.names = names
        self.cfg = cfg
        self.workers = max(1, min(workers, len(names)))
        self.log_level = log_level
        self._procs: list[mp.process.BaseProcess] = []
        self._conns: list[Connection] = []

    def start(self) -> None:
        ctx = mp.get_context("spawn")  # no inherited event loops, sockets or threads
        for k in range(self.workers):
            part = self.names[k :: self.workers]
            parent, child = ctx.Pipe()
            p = ctx.Process(
                target=_worker_main,
                args=(part, self.cfg, child, self.log_level),
                name=f"fleet-sim-{k}",
                daemon=True,
            )
            p.start()
            child.close()
            self._procs.append(p)
            self._conns.append(parent)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self._procs if p.pid is not None]

    def _all(self, cmd: str, arg: Any = None, timeout: float = 30.0) -> list[Any]:
        for c in self._conns:
            c.send((cmd, arg))
        out = []
        for c in self._conns:
            if not c.poll(timeout):
                raise TimeoutError(f"fleet-sim worker did not answer {cmd!r} in {timeout}s")
            out.append(c.recv())
        return out

    def stats(self) -> dict[str, Any]:
        """Sum of the workers' counters (fetch times concatenated, version counts merged)."""
        total: dict[str, Any] = {}
        for s in self._all("stats"):
            for k, v in s.items():
                if isinstance(v, bool):
                    total[k] = total.get(k, True) and v
                elif isinstance(v, int | float):
                    total[k] = total.get(k, 0) + v
                elif isinstance(v, list):
                    total.setdefault(k, []).extend(v)
                elif isinstance(v, dict):
                    d = total.setdefault(k, {})
                    for kk, vv in v.items():
                        d[kk] = d.get(kk, 0) + vv
        return total

    def set_rate(self, rate: float) -> None:
        self._all("rate", rate)

    def backlog(self, per_node: int) -> None:
        self._all("backlog", per_node)

    def wait(
        self, pred: Callable[[dict[str, Any]], bool], timeout: float, poll_s: float = 0.5
    ) -> dict[str, Any]:
        """Poll the workers' counters until ``pred`` holds (a deadline, not a guessed sleep)."""
        deadline = time.monotonic() + timeout
        while True:
            s = self.stats()
            if pred(s):
                return s
            if time.monotonic() > deadline:
                raise TimeoutError(f"fleet-sim: condition not met in {timeout}s; last stats {s}")
            time.sleep(poll_s)

    def stop(self, timeout: float = 10.0) -> None:
        with contextlib.suppress(Exception):
            self._all("stop", timeout=timeout)
        for p in self._procs:
            p.join(timeout)
            if p.is_alive():
                p.kill()
                p.join()
        self._procs.clear()
        self._conns.clear()

    def __enter__(self) -> FleetSim:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def public_key_pem(path: str | Path) -> bytes:
    return Path(path).read_bytes()
