"""``cloud-controller run``: settings from flags, environment and file, then ``ControllerApp`` until SIGTERM.

Each flag's ``dest`` is the dotted settings field it sets, so turning the
parsed flags into settings is one loop (and the configuration reference reads
the same parser): only ``--broker`` (two fields) and ``--config`` (the settings
file itself) are special.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from cloud_controller.app import ControllerApp
from cloud_controller.ingest.contracts import StoreConnectError
from cloud_controller.resources.crd_check import CrdsMissing
from cloud_controller.settings import ControllerSettings
from edge_agent.ops.cli_kit import UsageError, Verb
from edge_agent.ops.logs import JsonFormatter

# Flags whose dest is not a settings field.
BROKER, CONFIG = "broker", "config"


def _field_help(dest: str) -> str:
    return ControllerSettings.model_fields[dest].description or ""


def configure_run_args(p: argparse.ArgumentParser) -> None:
    def flag(name: str, dest: str, **kw: Any) -> None:
        kw.setdefault("help", _field_help(dest))
        p.add_argument(name, dest=dest, default=None, **kw)

    p.add_argument(
        "--config",
        dest=CONFIG,
        type=Path,
        default=None,
        metavar="FILE",
        help="settings file (YAML or TOML, keys as the settings fields); flags and EDGELOOP_* override it",
    )
    p.add_argument(
        "--broker",
        dest=BROKER,
        default=None,
        help="HOST:PORT (default: EDGELOOP_MQTT_HOST/_PORT or 127.0.0.1:1883)",
    )
    flag("--store", "store_path", type=Path, help="embedded SQLite resource store")
    flag("--kube", "kube", action="store_true", help="resources in the Kubernetes API server")
    flag(
        "--enrollment",
        "enrollment",
        choices=["auto", "manual"],
        help="auto: new nodes are approved; manual: they stay Pending until approved",
    )
    flag("--namespace", "namespace")
    flag("--data-dir", "data_dir", type=Path, help="summaries + fleet databases (EDGELOOP_CACHE)")
    flag("--http-port", "http_port", type=int, help="/healthz /readyz /metrics (0: any free port)")
    flag("--client-id", "client_id")
    flag("--shared-group", "shared_group", help="split summaries between replicas ($share/GROUP/)")
    flag("--heartbeat-timeout", "heartbeat_timeout_s", type=float)
    flag(
        "--status-interval",
        "status_min_interval_s",
        type=float,
        help="minimum seconds between two status writes of one EdgeNode",
    )
    flag(
        "--status-max-writes",
        "status_max_writes_per_s",
        type=float,
        help="EdgeNode status writes per second, total",
    )
    flag("--teacher", "teacher", help="KIND:PATH of a teacher that answers escalations")
    flag(
        "--sensor-teacher",
        "sensor_teacher",
        type=Path,
        metavar="BUNDLE_DIR",
        help="sensor bundle that labels sensor hard examples on ingest (EDGELOOP_SENSOR_TEACHER)",
    )
    flag(
        "--signing-key",
        "signing_key",
        type=Path,
        help="Ed25519 private key (PEM) for releases; enables DistillationJobs",
    )
    flag("--artifacts", "artifacts_dir", type=Path, help="artifact store (default DATA_DIR/artifacts)")
    flag(
        "--distillation-config",
        "distillation_config",
        choices=["tiny", "full"],
        help="training recipe of the re-distillation runner",
    )


def settings_from_args(
    args: argparse.Namespace, environ: Mapping[str, str] = os.environ
) -> ControllerSettings:
    """Flags over ``environ`` over the ``--config`` file over defaults (``ControllerSettings.load``)."""
    flags: dict[str, Any] = {
        k: v for k, v in vars(args).items() if k in ControllerSettings.model_fields and v is not None
    }
    broker = getattr(args, BROKER, None)
    if broker:
        host, _, port = str(broker).rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"--broker: expected HOST:PORT, got {broker!r}")
        flags["mqtt"] = {"host": host, "port": int(port)}
    return ControllerSettings.load(environ=environ, file=getattr(args, CONFIG, None), **flags)


def _invalid(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(str(x) for x in e['loc']) or 'settings'}: {e['msg']}" for e in exc.errors())


def run_command(args: argparse.Namespace) -> int:
    try:
        settings = settings_from_args(args)
    except ValidationError as exc:  # a bad flag, EDGELOOP_* value or file entry: say which, no traceback
        raise UsageError(f"invalid settings: {_invalid(exc)}") from exc
    except ValueError as exc:  # --broker without a port, an unreadable settings file
        raise UsageError(f"invalid settings: {exc}") from exc
    if settings.log_format == "json":
        for h in logging.getLogger().handlers:
            h.setFormatter(JsonFormatter(settings.identity))
    try:
        app = ControllerApp(settings)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, app.stop)
        await app.run()

    try:
        asyncio.run(main())
    except StoreConnectError as exc:  # store_dsn does not connect: host and reason, no traceback
        print(f"cloud-controller: {exc}", file=sys.stderr)
        return 2 if exc.permanent else 1
    except CrdsMissing as exc:  # --kube against a cluster without (some of) crds/: which ones, and the fix
        print(f"cloud-controller: {exc}", file=sys.stderr)
        return 2
    return 0


VERBS = (
    Verb(
        "run",
        "run the controller: ingest, reconcilers, desired state, /healthz /readyz /metrics",
        run_command,
        configure_run_args,
    ),
)
