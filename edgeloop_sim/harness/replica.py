"""One ingest replica: a real ``cloud-controller run`` process, for the replica test and bench.

Embedded resource store (each replica its own SQLite file: what is under test
is ingest, not reconciling), the summaries on the shared subscription
``$share/{group}/...`` and, with ``dsn``, every ingest row in that shared
PostgreSQL. ``identity`` names the MQTT session: a replica restarted under the
same identity resumes it, as a pod recreated by its StatefulSet would, and gets
what the broker kept for it while it was down.
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
from typing import IO

from edgeloop_sim.harness.agent import wait_until
from edgeloop_sim.supervisor import die_with_parent

__all__ = ["ReplicaProcess"]

REPO = Path(__file__).resolve().parents[2]
_HTTP_PORT = re.compile(r"controller \S+ running \(store: .*, http :(\d+),")


class ReplicaProcess:
    def __init__(self, workdir: Path, *, broker: tuple[str, int], identity: str, dsn: str | None,
                 shared_group: str | None = "ingest", extra_env: dict[str, str] | None = None) -> None:
        self.identity = identity
        self.dir = workdir / identity
        self.dir.mkdir(parents=True, exist_ok=True)
        env = {
            "EDGELOOP_STORE": str(self.dir / "resources.db"),
            "EDGELOOP_CACHE": str(self.dir / "cache"),
            "EDGELOOP_POD_NAME": identity,
            "EDGELOOP_MQTT_HOST": broker[0],
            "EDGELOOP_MQTT_PORT": str(broker[1]),
            "EDGELOOP_HTTP_PORT": "0",
            "EDGELOOP_LOG_FORMAT": "text",
            **({"EDGELOOP_STORE_DSN": dsn} if dsn else {}),
            **({"EDGELOOP_MQTT_SHARED_GROUP": shared_group} if shared_group else {}),
            **(extra_env or {}),
        }
        self.env = {**{k: v for k, v in os.environ.items() if not k.startswith("EDGELOOP_")}, **env}
        self.log_path = self.dir / "controller.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self.http_port: int | None = None
        self._log_from = 0

    @property
    def summaries_db(self) -> Path:
        """Where the summaries live without a DSN (the SQLite baseline)."""
        return self.dir / "cache" / "summaries.db"

    def start(self) -> ReplicaProcess:
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

    def metric(self, name: str) -> float:
        """One ``edgeloop_controller_*`` gauge or counter from /metrics (0 when absent or unreachable)."""
        _code, body = self.http("/metrics")
        for line in body.splitlines():
            if line.startswith((f"edgeloop_controller_{name} ", f"edgeloop_controller_{name}_total ")):
                return float(line.split()[1])
        return 0.0

    def wait_ready(self, timeout: float = 60.0) -> None:
        def ready() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"replica {self.identity} exited {self.proc.returncode}:\n"
                                     f"{self.log_text()[-3000:]}")
            return self.http("/readyz")[0] == 200
        wait_until(ready, timeout, f"replica {self.identity} /readyz", interval=0.1)

    def kill(self) -> None:
        """SIGKILL: nothing flushed, nothing acked that was not committed (a crashed pod)."""
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
