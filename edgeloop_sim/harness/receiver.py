"""A real cloud receiver process for end-to-end tests, and reads of its database."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from cloud_controller.ingest.contracts import NodeTotals
from cloud_controller.ingest.summaries import SummaryStore
from edgeloop_sim.harness.agent import wait_until


class ReceiverProcess:
    def __init__(self, tmp: Path, broker_port: int, name: str = "receiver") -> None:
        self.db = tmp / f"{name}.db"
        self.log = tmp / f"{name}.log"
        self.port = broker_port
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        offset = self.log.stat().st_size if self.log.exists() else 0
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "cloud_controller.cli.main",
                    "receive",
                    "--broker",
                    f"127.0.0.1:{self.port}",
                    "--db",
                    str(self.db),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        # Subscribed (SUBACK received): from here on the broker keeps what is published for it.
        wait_until(
            lambda: "subscribed to" in self.log.read_text(errors="replace")[offset:],
            15,
            "receiver subscription",
        )

    def totals(self) -> dict[str, NodeTotals]:
        if not self.db.exists():
            return {}
        with SummaryStore(self.db) as s:
            return {t.node: t for t in s.totals()}

    def readings(self) -> int:
        return sum(t.readings for t in self.totals().values())

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()
