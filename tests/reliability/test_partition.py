"""Partition: an edge host cut from its broker by a real network fault, then reconnected.

The agent runs in its own network namespace, joined to the host by a veth pair
(a private /30, 10.200.X.0/30); the broker listens on the host end. The link is
taken down while devices keep publishing, held down until the agent has seen
its connection die and failed to reconnect, then brought back. Nothing may be
lost or counted twice, and no packet may leave the machine: the namespace has
no default route, nothing is NATed and forwarding is never touched (checked).

Needs root and ``ip`` (iproute2); skipped otherwise, with the reason.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from edge_agent.config import OutboxConfig
from edge_agent.outbox.agent_store import AgentStore
from edgeloop_sim.broker import Broker, free_port
from edgeloop_sim.harness.agent import AgentProcess, agent_config, wait_until
from edgeloop_sim.harness.receiver import ReceiverProcess
from edgeloop_sim.replay import BackgroundReplay
from edgeloop_sim.replay_config import ReplayConfig

IP = shutil.which("ip") or "/usr/sbin/ip"


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run([IP, *args], capture_output=True, text=True, check=check, timeout=10)


@dataclass(frozen=True)
class Netns:
    name: str
    host_if: str
    ns_if: str
    host_ip: str
    ns_ip: str


def _free_subnet() -> ipaddress.IPv4Network:
    """A 10.200.X.0/30 that no interface or route on this machine already uses."""
    used = _ip("-4", "route", "show", "table", "all").stdout + _ip("-4", "addr").stdout
    for i in range(os.getpid() % 200, os.getpid() % 200 + 250):
        net = ipaddress.IPv4Network(f"10.200.{i % 250}.0/30")
        if f"10.200.{i % 250}." not in used:
            return net
    pytest.skip("no free 10.200.X.0/30 for the test's veth pair")


@pytest.fixture
def netns() -> Iterator[Netns]:
    if os.geteuid() != 0:
        pytest.skip("partition test needs root (network namespaces)")
    if not os.access(IP, os.X_OK):
        pytest.skip("`ip` (iproute2) is not installed")
    tag = f"{os.getpid() % 100000}"
    net = _free_subnet()
    host_ip, ns_ip = (str(h) for h in net.hosts())
    ns = Netns(f"edgeloop-part-{tag}", f"elh{tag}", f"eln{tag}", host_ip, ns_ip)
    steps = [
        ("netns", "add", ns.name),
        ("link", "add", ns.host_if, "type", "veth", "peer", "name", ns.ns_if),
        ("link", "set", ns.ns_if, "netns", ns.name),
        ("addr", "add", f"{host_ip}/30", "dev", ns.host_if),
        ("link", "set", ns.host_if, "up"),
        ("-n", ns.name, "addr", "add", f"{ns_ip}/30", "dev", ns.ns_if),
        ("-n", ns.name, "link", "set", ns.ns_if, "up"),
        ("-n", ns.name, "link", "set", "lo", "up"),
    ]
    try:
        for step in steps:
            r = _ip(*step, check=False)
            if r.returncode != 0:
                pytest.skip(f"`ip {' '.join(step)}` failed (no netns support here?): {r.stderr.strip()}")
        yield ns
    finally:
        # Deleting the namespace destroys its veth end, and with it the host end.
        _ip("netns", "del", ns.name, check=False)
        _ip("link", "del", ns.host_if, check=False)


class NetnsAgent(AgentProcess):
    """``edge-agent run`` inside a network namespace (``ip netns exec`` execs it: same pid)."""

    def __init__(self, tmp: Path, cfg: dict[str, Any], netns: str) -> None:
        super().__init__(tmp, cfg)
        self.netns = netns

    def start(self, wait_ready: bool = True, extra_env: dict[str, str] | None = None) -> None:
        env = {**os.environ, "NOTIFY_SOCKET": str(self.notify.path), **(extra_env or {})}
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [IP, "netns", "exec", self.netns, sys.executable, "-m", "edge_agent.cli", "run",
                 "--config", str(self.config_path)],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )  # fmt: skip
        if wait_ready:
            self.notify.wait_for("READY=1", timeout=20)
            self.notify.wait_for("STATUS=connected*", timeout=20)

    def log_since(self, offset: int) -> str:
        return self.log_text()[offset:]


def _unreachable_from_netns(ns: str) -> int:
    """errno of a TCP connect from inside the namespace to a documentation address (192.0.2.1)."""
    code = "import socket,sys\ns=socket.socket()\ns.settimeout(3)\nsys.exit(s.connect_ex(('192.0.2.1', 9)))\n"
    return subprocess.run([IP, "netns", "exec", ns, sys.executable, "-c", code], timeout=20).returncode


def test_agent_rides_through_a_network_partition(tmp_path: Path, netns: Netns) -> None:
    forwarding = Path("/proc/sys/net/ipv4/ip_forward").read_text().strip()
    # Nothing can leave the machine: no default route in the namespace, so a packet to anything but
    # the host's end of the /30 fails at once with ENETUNREACH (no packet is even sent).
    routes = _ip("-n", netns.name, "route", "show").stdout
    assert "default" not in routes, routes
    assert _unreachable_from_netns(netns.name) == errno.ENETUNREACH

    loop_port = free_port()
    broker = Broker(
        tmp_path / "mosquitto", host=netns.host_ip, extra_config=[f"listener {loop_port} 127.0.0.1"]
    )
    broker.start()
    receiver = ReceiverProcess(tmp_path, loop_port)
    cfg = agent_config(
        tmp_path,
        "p1",
        broker.port,
        mqtt={"host": netns.host_ip, "keepalive_s": 5, "connect_timeout_s": 2.0},
        windows={"length_s": 10.0, "idle_close_s": 1.0},
        outbox={"batch_max_delay_s": 0.1},
        chat={"enabled": False},
        metrics={"enabled": False},
    )
    agent = NetnsAgent(tmp_path, cfg, netns.name)
    bg = BackgroundReplay(
        "skab",
        ReplayConfig(
            broker=f"127.0.0.1:{loop_port}",
            speedup=40,
            batch=5,
            limit=800,
            devices=2,
            ack_timeout=60,
            progress_every=None,
        ),
    )
    try:
        receiver.start()
        agent.start()
        bg.start()
        wait_until(lambda: receiver.readings() > 1_500, 30, "first summaries through the veth")

        offset = len(agent.log_text())
        at_cut = receiver.readings()
        t_cut = time.monotonic()
        _ip("link", "set", netns.host_if, "down")
        # Held down until the agent has seen the connection die and a reconnect fail (progress of
        # the fault itself, not a duration); devices go on publishing to the broker meanwhile.
        wait_until(
            lambda: "edge: connection to" in agent.log_since(offset), 30, "the agent to see the link die"
        )
        t_detected = time.monotonic()
        wait_until(lambda: "edge: connect to" in agent.log_since(offset), 30, "a failed reconnect")
        frozen = receiver.readings()
        streaming = bg.alive
        t_up = time.monotonic()
        _ip("link", "set", netns.host_if, "up")
        wait_until(lambda: "session present: True" in agent.log_since(offset), 30, "the agent to reconnect")
        t_back = time.monotonic()
        wait_until(lambda: receiver.readings() > frozen, 30, "the cloud counting again")
        t_counting = time.monotonic()

        sent = bg.result(90).readings
        wait_until(lambda: receiver.readings() >= sent, 60, f"cloud readings == {sent}")
        totals = receiver.totals()["p1"]
        assert totals.readings == sent  # nothing lost, nothing counted twice
        assert totals.seq_gaps == 0
        assert agent.terminate() == 0
        print(
            f"partition: sent {sent} readings, counted {totals.readings}, duplicates {totals.duplicates}; "
            f"cut at {at_cut} counted (devices still publishing: {streaming}); agent saw the loss after "
            f"{t_detected - t_cut:.1f}s; link down {t_up - t_cut:.1f}s; reconnected {t_back - t_up:.2f}s "
            f"after link up; cloud counting again {t_counting - t_up:.2f}s after link up"
        )
    finally:
        if bg.alive:
            bg.join(5)
        agent.close()
        receiver.stop()
        broker.stop()

    assert Path("/proc/sys/net/ipv4/ip_forward").read_text().strip() == forwarding
    assert streaming, "the link came back after the devices stopped: the stream is too short"

    async def outbox_rows() -> int:
        async with AgentStore(Path(cfg["state_dir"]) / "agent.db", OutboxConfig()) as store:
            return (await store.stats()).rows

    assert asyncio.run(outbox_rows()) == 0
