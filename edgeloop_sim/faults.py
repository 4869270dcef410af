"""Crash-safety scenario: replay real SKAB data through real agents and the real controller while
processes are SIGKILLed, the broker restarts and the cloud is unreachable, then count.

Shared by ``tests/reliability/test_crash_safety.py`` (short, CI) and
``bench/bench_crash_soak.py`` (long, with the full outage): both run exactly this
code, only the :class:`CrashScenario` parameters differ.

Faults are triggered by progress, never by the clock: each one fires once the
cloud has counted a given share of the stream (thresholds spread over the
stream with seeded jitter, so kill points land at different moments of the
agents' commit cycle) and only after the previous fault has recovered. The one
exception is the outage, whose *length* is the fault's definition.

Two brokers (``split_uplink``, the default): devices and agents meet on the
edge broker; the agents' uplink connection (``uplink.mqtt``) and the controller
use the cloud broker. The cloud outage stops the cloud broker and kills the
controller while devices keep publishing and agents keep ingesting, so the
summaries pile up in the agents' outboxes (one agent is SIGKILLed in the middle
of it, with a non-empty outbox). With one broker the outage can only be
"controller down": summaries then wait in the broker, not in the outbox.

What counts is the controller's own summary database (``summaries.db`` in its
data dir, batches keyed by id, duplicates counted in their own table).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from cloud_controller.ingest.contracts import NodeTotals
from cloud_controller.ingest.summaries import SummaryStore
from edge_agent.config import OutboxConfig
from edge_agent.outbox.agent_store import AgentStore
from edgeloop_sim.broker import Broker
from edgeloop_sim.harness.agent import wait_until
from edgeloop_sim.replay import BackgroundReplay
from edgeloop_sim.replay_config import ReplayConfig
from edgeloop_sim.replay_streams import iter_messages, select_devices

__all__ = [
    "AgentProc",
    "ControllerProc",
    "CrashReport",
    "CrashScenario",
    "FaultRecord",
    "run_crash_scenario",
    "wait_for",
]

FaultKind = Literal["agent_kill", "controller_kill", "broker_restart", "cloud_outage"]


def wait_for(pred: Callable[[], Any], timeout: float, what: str, interval: float = 0.02) -> Any:
    """Poll a condition with a deadline; raise ``TimeoutError`` naming ``what``."""
    return wait_until(pred, timeout, what, interval, error=TimeoutError)


class _LoggedProc:
    """A subprocess whose log is one file; readiness is a line appearing after the last start."""

    ready_marker = ""

    def __init__(self, name: str, log_path: Path) -> None:
        self.name = name
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def argv(self) -> list[str]:
        raise NotImplementedError

    def start(self, timeout: float = 30.0) -> float:
        """Start and wait until ready; returns the seconds it took."""
        t0 = time.monotonic()
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(self.argv(), stdout=log, stderr=subprocess.STDOUT)
        self.starts += 1

        def ready() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.tail()}")
            with self.log_path.open("rb") as f:
                f.seek(offset)
                return self.ready_marker.encode() in f.read()

        wait_for(ready, timeout, f"{self.name} to be ready")
        return time.monotonic() - t0

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait for the exit code (SIGKILL if it does not exit in time)."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return -9

    def tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


class AgentProc(_LoggedProc):
    """``edge-agent run``; ready once its edge connection has its subscriptions (SUBACK)."""

    ready_marker = "edge: subscribed to"

    def __init__(self, workdir: Path, cfg: dict[str, Any]) -> None:
        super().__init__(cfg["node_id"], workdir / f"agent-{cfg['node_id']}.log")
        self.cfg = cfg
        self.config_path = workdir / f"agent-{cfg['node_id']}.yaml"
        self.config_path.write_text(yaml.safe_dump(cfg))

    def argv(self) -> list[str]:
        return [sys.executable, "-m", "edge_agent.cli", "run", "--config", str(self.config_path)]

    @property
    def db_path(self) -> Path:
        return Path(self.cfg["state_dir"]) / "agent.db"

    def outbox_rows(self) -> int:
        """Rows left in the outbox, read with the agent's own store (call when the agent is stopped)."""

        async def rows() -> int:
            async with AgentStore(self.db_path, OutboxConfig()) as store:
                return (await store.stats()).rows

        return asyncio.run(rows())


class ControllerProc(_LoggedProc):
    """``cloud-controller run`` with the embedded store; ready once ingest has subscribed."""

    ready_marker = "ingest: subscribed to"

    def __init__(self, workdir: Path, broker_port: int, client_id: str = "edgeloop-controller-crash") -> None:
        super().__init__("controller", workdir / "controller.log")
        self.data_dir = workdir / "controller"
        self.broker_port = broker_port
        self.client_id = client_id

    def argv(self) -> list[str]:
        return [
            sys.executable, "-m", "cloud_controller.cli.main", "run",
            "--broker", f"127.0.0.1:{self.broker_port}",
            "--store", str(self.data_dir / "resources.db"),
            "--data-dir", str(self.data_dir),
            "--http-port", "0",
            "--client-id", self.client_id,
        ]  # fmt: skip

    @property
    def summaries_db(self) -> Path:
        return self.data_dir / "summaries.db"

    def totals(self) -> dict[str, NodeTotals]:
        if not self.summaries_db.exists():
            return {}
        try:
            with SummaryStore(self.summaries_db) as s:
                return {t.node: t for t in s.totals()}
        except sqlite3.OperationalError:  # created but schema not yet committed by the controller
            return {}

    def readings(self) -> int:
        return sum(t.readings for t in self.totals().values())

    def batches_created_between(self, t0: float, t1: float) -> tuple[int, int, float | None]:
        """(batches, readings, last received) for summaries the agents created in [t0, t1]."""
        with contextlib.closing(sqlite3.connect(self.summaries_db)) as db:
            row = db.execute(
                "SELECT COUNT(*), COALESCE(SUM(readings), 0), MAX(received) FROM batches "
                "WHERE created BETWEEN ? AND ?",
                (t0, t1),
            ).fetchone()
        return int(row[0]), int(row[1]), row[2]


@dataclass(frozen=True)
class CrashScenario:
    """Parameters; the defaults are the CI run (≈ 52,000 SKAB readings in well under 90 s)."""

    agents: int = 2
    devices: int = 6
    rows_per_device: int = 1100  # SKAB rows; 8 readings each
    batch: int = 5  # rows per device message
    speedup: float = 25.0  # data seconds per wall second
    agent_kills: int = 10  # one of them inside the outage (when there is one and the uplink is split)
    controller_kills: int = 2
    broker_restarts: int = 3  # alternating edge and cloud broker when split
    outage_s: float = 10.0
    outage_at: float = 0.55  # share of the stream counted by the cloud when the outage starts
    # Two brokers: devices and agents on the edge broker, the agents' uplink (uplink.mqtt) and the
    # controller on the cloud broker; the outage stops the cloud broker. False: one broker, and the
    # outage is "controller down" (summaries queue in the broker, the outbox is not exercised).
    split_uplink: bool = True
    seed: int = 20240605
    settle_timeout_s: float = 90.0


@dataclass
class FaultRecord:
    kind: FaultKind
    target: str
    at_readings: int  # counted by the cloud when the fault was injected
    streaming: bool  # the devices were still publishing
    recovery_s: float  # fault until the process/broker was up again (outage: its length + restart)
    progress_s: float  # fault until the cloud counted more readings again


@dataclass
class CrashReport:
    scenario: CrashScenario
    readings_sent: int = 0
    messages_sent: int = 0
    readings_counted: int = 0
    per_node_sent: dict[str, int] = field(default_factory=dict)
    per_node_counted: dict[str, int] = field(default_factory=dict)
    batches: int = 0
    duplicates: int = 0
    seq_gaps: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    outbox_rows: dict[str, int] = field(default_factory=dict)
    agent_exit_codes: dict[str, int] = field(default_factory=dict)
    faults: list[FaultRecord] = field(default_factory=list)
    outage_batches: int = 0  # summaries the agents created while the cloud was unreachable
    outage_readings: int = 0
    outage_outbox_peak: dict[str, int] = field(default_factory=dict)  # rows held per agent
    outage_drain_s: float | None = None  # cloud back -> every outbox empty (split) / backlog stored
    replay_reconnects: int = 0
    settle_s: float = 0.0  # stream end -> cloud count == sent
    wall_s: float = 0.0

    def faults_of(self, kind: FaultKind) -> list[FaultRecord]:
        return [f for f in self.faults if f.kind == kind]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _plan(sc: CrashScenario, nodes: list[str], brokers: list[str]) -> list[tuple[float, FaultKind, str]]:
    """Fault thresholds (share of the stream counted by the cloud), in order, with seeded jitter."""
    rng = random.Random(sc.seed)
    outage_kill = 1 if sc.outage_s > 0 and sc.split_uplink and sc.agent_kills > 0 else 0
    kinds: list[tuple[FaultKind, str]] = []
    kinds += [("agent_kill", nodes[i % len(nodes)]) for i in range(outage_kill, sc.agent_kills)]
    kinds += [("controller_kill", "controller")] * sc.controller_kills
    kinds += [("broker_restart", brokers[i % len(brokers)]) for i in range(sc.broker_restarts)]
    rng.shuffle(kinds)
    k = len(kinds)
    lo, hi = 0.04, 0.92
    step = (hi - lo) / max(1, k)
    plan = [(lo + (i + rng.random()) * step, kind, target) for i, (kind, target) in enumerate(kinds)]
    if sc.outage_s > 0:
        plan.append((sc.outage_at, "cloud_outage", "cloud-broker" if sc.split_uplink else "controller"))
    plan.sort(key=lambda p: p[0])
    return plan


def _mqtt(port: int) -> dict[str, Any]:
    return {"host": "127.0.0.1", "port": port, "reconnect_min_s": 0.05, "reconnect_max_s": 0.5}


def _agent_cfg(
    workdir: Path, node: str, port: int, cloud_port: int | None, devices: list[str]
) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "node_id": node,
        "state_dir": str(workdir / f"state-{node}"),
        "mqtt": _mqtt(port),
        # Several agents on one broker: each subscribes to its own devices only.
        "devices": {"allowed": devices, "allow_unknown": False, "subscribe_enrolled_only": True},
        "windows": {"length_s": 10.0, "idle_close_s": 1.0},
        "outbox": {"batch_max_delay_s": 0.1},
        "chat": {"enabled": False},
        "metrics": {"enabled": False},
        "log": {"level": "INFO", "format": "json"},
        "shutdown_timeout_s": 20.0,
    }
    if cloud_port is not None:
        cfg["uplink"] = {"mqtt": _mqtt(cloud_port)}
    return cfg


def _outbox_rows_live(db: Path, created_before: float | None = None) -> int:
    """Rows in a running agent's outbox: a read-only look at its WAL database (changes nothing)."""
    if not db.exists():
        return 0
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)) as c:
        if created_before is None:
            return int(c.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])
        return int(
            c.execute("SELECT COUNT(*) FROM outbox WHERE created <= ?", (created_before,)).fetchone()[0]
        )


def run_crash_scenario(
    workdir: Path, sc: CrashScenario, log: Callable[[str], None] = lambda _m: None
) -> CrashReport:
    """Run the whole scenario in ``workdir`` and return what was measured; raises if a step stalls."""
    workdir.mkdir(parents=True, exist_ok=True)
    report = CrashReport(sc)
    t_start = time.monotonic()
    rcfg_base = ReplayConfig(batch=sc.batch, limit=sc.rows_per_device, devices=sc.devices)
    device_ids = select_devices("skab", rcfg_base)
    nodes = [f"crash-{i}" for i in range(sc.agents)]
    owner = {d: nodes[i % len(nodes)] for i, d in enumerate(device_ids)}
    expected = 0
    for topic, _payload, count in iter_messages("skab", rcfg_base):
        node = owner[topic.split("/")[1]]
        report.per_node_sent[node] = report.per_node_sent.get(node, 0) + count
        expected += count

    edge_broker = Broker(workdir / "broker-edge")
    cloud_broker = Broker(workdir / "broker-cloud") if sc.split_uplink else edge_broker
    brokers = {"edge-broker": edge_broker, "cloud-broker": cloud_broker}
    edge_broker.start()
    cloud_broker.start()
    controller = ControllerProc(workdir, cloud_broker.port)
    cloud_port = cloud_broker.port if sc.split_uplink else None
    agents = {
        n: AgentProc(
            workdir,
            _agent_cfg(workdir, n, edge_broker.port, cloud_port, [d for d in device_ids if owner[d] == n]),
        )
        for n in nodes
    }
    bg = BackgroundReplay(
        "skab",
        ReplayConfig(
            broker=f"127.0.0.1:{edge_broker.port}",
            speedup=sc.speedup,
            batch=sc.batch,
            limit=sc.rows_per_device,
            devices=sc.devices,
            ack_timeout=120,
            client_id="crash-devices",
            progress_every=None,
        ),
        name="replay",
    )

    def counted() -> int:
        bg.check()
        return controller.readings()

    def outage() -> tuple[float, float]:
        """The cloud is unreachable for ``outage_s``; agents keep ingesting and hold summaries.

        Returns the outage's wall-clock window (the agents stamp summaries with wall time).
        """
        wall0 = time.time()
        t0 = time.monotonic()
        if not sc.split_uplink:
            controller.kill()
            time.sleep(sc.outage_s)  # the outage's length is what this fault is
            wall1 = time.time()
            back = time.monotonic()
            controller.start()
            wait_for(lambda: counted() > 0, sc.settle_timeout_s, "the backlog after the outage")
            report.outage_drain_s = time.monotonic() - back
        else:
            # The whole cloud side goes: its broker (sessions saved) and the controller (killed).
            # Restarting the controller with the broker keeps the controller's own reconnect
            # backoff (up to 30 s, not configurable) out of what is measured here.
            controller.kill()
            cloud_broker.stop()
            peak = dict.fromkeys(nodes, 0)

            def held(min_rows: int) -> bool:
                for n, a in agents.items():
                    peak[n] = max(peak[n], _outbox_rows_live(a.db_path))
                return all(v >= min_rows for v in peak.values())

            # Progress inside the outage: every agent holds summaries; then one is SIGKILLed with a
            # non-empty outbox and must come back without the cloud.
            wait_for(lambda: held(3), sc.outage_s + 30, "summaries held in every outbox")
            if sc.agent_kills > 0:
                victim = nodes[-1]
                k0 = time.monotonic()
                agents[victim].kill()
                agents[victim].start()
                report.faults.append(
                    FaultRecord(
                        "agent_kill",
                        victim,
                        counted(),
                        bg.alive,
                        time.monotonic() - k0,
                        float("nan"),
                    )
                )
                log(f"agent_kill       {victim:12s} inside the outage, outbox rows {peak[victim]}")
            while time.monotonic() - t0 < sc.outage_s:
                held(0)
                time.sleep(min(0.2, max(0.0, sc.outage_s - (time.monotonic() - t0))))
            wall1 = time.time()
            held(0)
            report.outage_outbox_peak = peak
            cloud_broker.start()
            back = time.monotonic()
            controller.start()
            # Drained: no summary made during the outage is still waiting in any outbox.
            wait_for(
                lambda: all(_outbox_rows_live(a.db_path, wall1) == 0 for a in agents.values()),
                sc.settle_timeout_s,
                "outboxes to drain after the outage",
            )
            report.outage_drain_s = time.monotonic() - back
        return wall0, wall1

    outage_wall = (0.0, 0.0)
    try:
        controller.start()
        for a in agents.values():
            a.start()
        bg.start()
        last_at = 0
        n_faults = sc.agent_kills + sc.controller_kills + sc.broker_restarts + 2
        min_step = max(1, expected // (4 * n_faults))
        plan = _plan(sc, nodes, list(brokers) if sc.split_uplink else ["edge-broker"])
        for share, kind, target in plan:
            threshold = min(max(int(share * expected), last_at + min_step), expected - 1)
            wait_for(
                lambda th=threshold: counted() >= th,  # type: ignore[misc]
                sc.settle_timeout_s,
                f"{kind} of {target}: cloud count >= {threshold}",
                interval=0.01,
            )
            at = counted()
            streaming = bg.alive
            t0 = time.monotonic()
            if kind == "agent_kill":
                agents[target].kill()
                agents[target].start()
            elif kind == "controller_kill":
                controller.kill()
                controller.start()
            elif kind == "broker_restart":
                brokers[target].restart()
            else:
                outage_wall = outage()
            recovered = time.monotonic() - t0
            wait_for(
                lambda a=at: counted() > a or counted() >= expected,  # type: ignore[misc]
                sc.settle_timeout_s,
                f"progress after {kind} of {target}",
            )
            rec = FaultRecord(kind, target, at, streaming, recovered, time.monotonic() - t0)
            report.faults.append(rec)
            last_at = counted()
            log(
                f"{kind:16s} {target:12s} at {at:6d}/{expected} readings: up in {rec.recovery_s:.2f}s, "
                f"counting again after {rec.progress_s:.2f}s"
            )

        rr = bg.result(sc.settle_timeout_s + 120)
        report.readings_sent = rr.readings
        report.messages_sent = rr.messages
        report.replay_reconnects = rr.reconnects
        t_end = time.monotonic()
        try:
            wait_for(lambda: counted() >= rr.readings, sc.settle_timeout_s, "cloud count == sent")
        finally:
            report.settle_s = time.monotonic() - t_end
            for n, a in agents.items():
                report.agent_exit_codes[n] = a.terminate()
        for n, a in agents.items():
            report.outbox_rows[n] = a.outbox_rows()
        if outage_wall[1] > 0:
            b, r, _last = controller.batches_created_between(*outage_wall)
            report.outage_batches, report.outage_readings = b, r
    finally:
        bg.stop()
        if bg.alive:
            bg.join(10)
        for a in agents.values():
            a.kill()
        controller.terminate()
        edge_broker.stop()
        cloud_broker.stop()

    totals = controller.totals()
    report.per_node_counted = {n: t.readings for n, t in totals.items()}
    report.readings_counted = sum(report.per_node_counted.values())
    report.batches = sum(t.batches for t in totals.values())
    report.duplicates = sum(t.duplicates for t in totals.values())
    report.seq_gaps = sum(t.seq_gaps for t in totals.values())
    with SummaryStore(controller.summaries_db) as s:
        report.rejected = s.rejects()
    report.wall_s = time.monotonic() - t_start
    return report
