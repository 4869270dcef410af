"""One ingest replica: a real ``cloud-controller run`` process, for the replica test and bench.

Embedded resource store (each replica its own SQLite file: what is under test
is ingest, not reconciling), the summaries on the shared subscription
``$share/{group}/...`` and, with ``dsn``, every ingest row in that shared
PostgreSQL. ``identity`` names the MQTT session: a replica restarted under the
same identity resumes it, as a pod recreated by its StatefulSet would, and gets
what the broker kept for it while it was down.
"""

from __future__ import annotations

from pathlib import Path

from edgeloop_sim.harness.controller_run import ControllerRun

__all__ = ["ReplicaProcess"]


class ReplicaProcess(ControllerRun):
    role = "replica"
    ready_timeout_s = 60.0

    def __init__(self, workdir: Path, *, broker: tuple[str, int], identity: str, dsn: str | None,
                 shared_group: str | None = "ingest", extra_env: dict[str, str] | None = None) -> None:
        super().__init__(workdir, identity)
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
        self.env = {**self.clean_environ(), **env}

    @property
    def summaries_db(self) -> Path:
        """Where the summaries live without a DSN (the SQLite baseline)."""
        return self.dir / "cache" / "summaries.db"

    def metric(self, name: str) -> float:
        """One ``edgeloop_controller_*`` gauge or counter from /metrics (0 when absent or unreachable)."""
        _code, body = self.http("/metrics")
        for line in body.splitlines():
            if line.startswith((f"edgeloop_controller_{name} ", f"edgeloop_controller_{name}_total ")):
                return float(line.split()[1])
        return 0.0
