"""Test support: real agent processes, the sd_notify socket, waiting on conditions.

Nothing here fakes a component: agents are real processes started from the
installed package, the notify socket is a real AF_UNIX datagram socket.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml


def wait_until(
    pred: Callable[[], Any],
    timeout: float,
    what: str,
    interval: float = 0.02,
    *,
    error: type[Exception] = AssertionError,
) -> Any:
    """Poll a condition until it holds; raise ``error`` naming ``what`` on timeout.

    A test's wait fails as an assertion; code that bench runs too (the crash
    scenario) passes ``TimeoutError``, since a wait that ran out is not a test there.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise error(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


class NotifySocket:
    """A datagram socket standing in for systemd's $NOTIFY_SOCKET."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.messages: list[str] = []

    def wait_for(self, field: str, timeout: float = 15.0) -> list[str]:
        """Read datagrams until one contains ``field`` (e.g. 'READY=1'); return all read so far."""
        deadline = time.monotonic() + timeout
        while True:
            for m in self.messages:
                if any(
                    line == field or (field.endswith("*") and line.startswith(field[:-1]))
                    for line in m.split("\n")
                ):
                    self.messages.remove(m)
                    return [m]
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(
                    f"no {field} on the notify socket within {timeout}s; got {self.messages}"
                )
            self.sock.settimeout(remaining)
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            self.messages.append(data.decode())

    def close(self) -> None:
        self.sock.close()


def agent_config(tmp: Path, node: str, broker_port: int, **overrides: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "node_id": node,
        "state_dir": str(tmp / f"state-{node}"),
        "mqtt": {"host": "127.0.0.1", "port": broker_port, "reconnect_min_s": 0.05, "reconnect_max_s": 0.5},
        "windows": {"length_s": 10.0, "idle_close_s": 2.0},
        "outbox": {"batch_max_delay_s": 0.2},
        "metrics": {"enabled": True, "port": 0},
        "log": {"level": "INFO", "format": "json"},
        "shutdown_timeout_s": 10.0,
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(cfg.get(key), dict):
            cfg[key] = {**cfg[key], **value}
        else:
            cfg[key] = value
    return cfg


class AgentProcess:
    """An ``edge-agent run`` subprocess with its own notify socket and log file."""

    def __init__(self, tmp: Path, cfg: dict[str, Any], name: str | None = None) -> None:
        self.name = name or cfg["node_id"]
        self.tmp = tmp
        self.cfg = cfg
        self.config_path = tmp / f"{self.name}.yaml"
        self.log_path = tmp / f"{self.name}.log"
        self.notify = NotifySocket(tmp / f"{self.name}.notify")
        self.proc: subprocess.Popen[bytes] | None = None
        self.write_config(cfg)

    def write_config(self, cfg: dict[str, Any]) -> None:
        self.cfg = cfg
        self.config_path.write_text(yaml.safe_dump(cfg))

    def start(self, wait_ready: bool = True, extra_env: dict[str, str] | None = None) -> None:
        env = {**os.environ, "NOTIFY_SOCKET": str(self.notify.path), **(extra_env or {})}
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "edge_agent.cli", "run", "--config", str(self.config_path)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        if wait_ready:
            self.notify.wait_for("READY=1", timeout=20)
            # Subscribed to the device topics: what devices publish from now on reaches this agent.
            self.notify.wait_for("STATUS=connected*", timeout=20)

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def terminate(self, timeout: float = 30) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def close(self) -> None:
        self.kill()
        self.notify.close()


def scrape(agent: AgentProcess) -> str:
    """The agent's /metrics text, from the port its latest run logged (the log spans restarts)."""
    ports = re.findall(r'"metrics_port": (\d+)', agent.log_text())
    assert ports, agent.log_text()
    with urllib.request.urlopen(f"http://127.0.0.1:{ports[-1]}/metrics", timeout=5) as r:
        return str(r.read().decode())


def metric(text: str, name: str, **labels: str) -> float:
    """One sample of a Prometheus text page (0.0 when absent): ``name`` with exactly ``labels``, or bare."""
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pattern = (
        rf"^{re.escape(name)}(\{{{re.escape(want)}\}})? (\S+)$" if want else rf"^{re.escape(name)} (\S+)$"
    )
    for line in text.splitlines():
        m = re.match(pattern, line)
        if m:
            return float(m.groups()[-1])
    return 0.0
