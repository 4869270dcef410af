"""``cloud-controller receive``: store node summaries from MQTT until SIGTERM, without the controller.

For a cloud side that only counts (the quickstart, benchmarks): the ingest loop
with no resource store (``summary_receiver``), so nodes are counted exactly as
the controller counts them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
from pathlib import Path

from cloud_controller.ingest.loop import IngestConfig, summary_receiver
from edge_agent.config import MqttConfig
from edge_agent.ops.cli_kit import Verb


def host_port(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}")
    return host, int(port)


def _args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--broker", type=host_port, default=("127.0.0.1", 1883), help="HOST:PORT")
    p.add_argument("--db", type=Path, required=True, help="SQLite file for summaries")
    p.add_argument("--client-id", default="cloud-receiver")
    p.add_argument("--shared-group", default=None, help="subscribe via $share/GROUP/ (replicas)")


def _receive(args: argparse.Namespace) -> int:
    host, port = args.broker
    cfg = IngestConfig(
        mqtt=MqttConfig(host=host, port=port),
        db_path=args.db,
        client_id=args.client_id,
        shared_group=args.shared_group,
    )

    async def main() -> None:
        task = asyncio.create_task(summary_receiver(cfg).run(), name="receiver")
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, task.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await task

    asyncio.run(main())
    return 0


VERBS = (Verb("receive", "store node summaries from MQTT until SIGTERM/SIGINT", _receive, _args),)
