"""``cloud-controller`` command line: a registry of subcommands.

Each subcommand registers an argument builder and a runner, so adding one is a
new decorated function here (or in its own module) and main() never grows.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import logging
import signal
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from edge_agent.config import MqttConfig


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    configure: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


COMMANDS: dict[str, Command] = {}


def command(
    name: str, help: str, configure: Callable[[argparse.ArgumentParser], None]
) -> Callable[[Callable[[argparse.Namespace], int]], Callable[[argparse.Namespace], int]]:
    def register(run: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
        COMMANDS[name] = Command(name, help, configure, run)
        return run

    return register


def host_port(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}")
    return host, int(port)


# --------------------------------------------------------------------------- receive


def _receive_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--broker", type=host_port, default=("127.0.0.1", 1883), help="HOST:PORT")
    p.add_argument("--db", type=Path, required=True, help="SQLite file for summaries")
    p.add_argument("--client-id", default="cloud-receiver")
    p.add_argument("--shared-group", default=None, help="subscribe via $share/GROUP/ (replicas)")


@command("receive", "store node summaries from MQTT until SIGTERM/SIGINT", _receive_args)
def _receive(args: argparse.Namespace) -> int:
    from cloud_controller.ingest.summaries import Receiver, ReceiverConfig

    host, port = args.broker
    cfg = ReceiverConfig(
        mqtt=MqttConfig(host=host, port=port),
        db_path=args.db,
        client_id=args.client_id,
        shared_group=args.shared_group,
    )

    async def main() -> None:
        task = asyncio.create_task(Receiver(cfg).run(), name="receiver")
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, task.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await task

    asyncio.run(main())
    return 0


# --------------------------------------------------------------------------- totals


def _totals_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--db", type=Path, required=True)
    p.add_argument("--json", action="store_true", help="machine-readable output")


@command("totals", "print per-node totals from a receiver database", _totals_args)
def _totals(args: argparse.Namespace) -> int:
    from cloud_controller.ingest.summaries import SummaryStore

    if not args.db.exists():
        print(f"no such database: {args.db}", file=sys.stderr)
        return 2
    with SummaryStore(args.db) as store:
        totals, rejects = store.totals(), store.rejects()
    if args.json:
        print(json.dumps({"nodes": [dataclasses.asdict(t) for t in totals], "rejects": rejects}, indent=2))
        return 0
    cols = [f.name for f in dataclasses.fields(totals[0])] if totals else ["node"]
    rows = [[str(getattr(t, c)) for c in cols] for t in totals]
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(cols)]
    print("  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True)))
    for r in rows:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)))
    for reason, count in rejects.items():
        print(f"rejected {reason}: {count}")
    return 0


# --------------------------------------------------------------------------- kubectl-like verbs

from cloud_controller.cli import kubectl as _kubectl  # noqa: E402

for _c in _kubectl.COMMANDS:
    command(_c.name, _c.help, _c.configure)(_c.run)

from cloud_controller.releases.release_command import configure_release_command, run_release_command  # noqa: E402
from cloud_controller.releases.signing import configure_keys_command, run_keys_command  # noqa: E402

command("keys", "release signing key: 'keys init --dir DIR', 'keys id PATH'", configure_keys_command)(
    run_keys_command
)
command(
    "release",
    "sign a bundle into the artifact store (--broker HOST:PORT also publishes it)",
    configure_release_command,
)(run_release_command)

from cloud_controller.app import configure_run_args as _run_args  # noqa: E402
from cloud_controller.app import run_command as _run_command  # noqa: E402

command(
    "run", "run the controller: ingest, reconcilers, desired state, /healthz /readyz /metrics", _run_args
)(_run_command)

# --------------------------------------------------------------------------- config-reference


def _config_reference_args(p: argparse.ArgumentParser) -> None:
    """No options: the reference is one document, written to stdout."""


@command(
    "config-reference",
    "print the controller configuration reference (Markdown; docs/controller-configuration.md)",
    _config_reference_args,
)
def _config_reference(args: argparse.Namespace) -> int:
    from cloud_controller.cli.config_reference import render

    print(render(), end="")
    return 0


# --------------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cloud-controller")
    parser.add_argument("--log-level", default="INFO")
    sub = parser.add_subparsers(dest="command", required=True)
    for cmd in COMMANDS.values():
        cmd.configure(sub.add_parser(cmd.name, help=cmd.help))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    return COMMANDS[args.command].run(args)


if __name__ == "__main__":
    sys.exit(main())
