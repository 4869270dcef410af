"""A real ``cloud-controller run`` process: start, reach its HTTP port, stop, for tests and benches.

The cluster-mode replica (:mod:`edgeloop_sim.harness.kube_controller`) and the
ingest replica (:mod:`edgeloop_sim.harness.replica`) differ only in the
environment they give the process; how it is started, found on its port, killed
and stopped is this one class, so both tests drive the process the same way.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import IO, Self

from edgeloop_sim.harness.agent import wait_until
from edgeloop_sim.harness.apiserver import REPO
from edgeloop_sim.supervisor import die_with_parent

__all__ = ["ControllerRun"]

_HTTP_PORT = re.compile(r"controller \S+ running \(store: .*, http :(\d+),")


class ControllerRun:
    """One process in ``workdir/identity``, logging to ``controller.log`` there (appended across restarts)."""

    role = "controller"  # how failures name it
    ready_timeout_s = 30.0

    def __init__(self, workdir: Path, identity: str) -> None:
        self.identity = identity
        self.dir = workdir / identity
        self.dir.mkdir(parents=True, exist_ok=True)
        self.env: dict[str, str] = {}
        self.log_path = self.dir / "controller.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        # Port 0: the process binds a free one and logs it (a port picked here could be taken meanwhile).
        self.http_port: int | None = None
        self._log_from = 0

    @staticmethod
    def clean_environ() -> dict[str, str]:
        """This process's environment without any EDGELOOP_ variable (the run's own settings only)."""
        return {k: v for k, v in os.environ.items() if not k.startswith("EDGELOOP_")}

    def start(self) -> Self:
        self.http_port = None
        self._log = self.log_path.open("ab")
        self._log_from = self._log.tell()  # this start's lines only (the port changes)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cloud_controller.cli.main", "--log-level", "INFO", "run"],
            env=self.env, stdout=self._log, stderr=subprocess.STDOUT, cwd=REPO,
            preexec_fn=die_with_parent,
        )
        return self

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def http(self, path: str) -> tuple[int, str]:
        """``(status, body)`` of a GET; ``(0, "")`` while the port is not logged yet or nobody answers."""
        if self.http_port is None:
            text = self.log_path.read_bytes()[self._log_from :].decode(errors="replace")
            found = _HTTP_PORT.search(text)
            if found is None:
                return 0, ""
            self.http_port = int(found.group(1))
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}", timeout=2) as r:
                return int(r.status), r.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, ""
        except OSError:
            return 0, ""

    def wait_ready(self, timeout: float | None = None) -> None:
        def ready() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"{self.role} {self.identity} exited {self.proc.returncode}:\n"
                                     f"{self.log_text()[-3000:]}")
            return self.http("/readyz")[0] == 200
        wait_until(ready, timeout if timeout is not None else self.ready_timeout_s,
                   f"{self.role} {self.identity} /readyz", interval=0.1)

    def kill(self) -> None:
        """SIGKILL: no lease release, nothing flushed, nothing acked past the commit (a crashed pod)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        self._close_log()

    def terminate(self, timeout: float = 30.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._close_log()
        return self.proc.returncode

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None
