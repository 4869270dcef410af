"""``cloud-controller call NODE METHOD [--arg k=v ...]``: call a method on one node and print its result.

MQTT settings (broker, TLS certificate) come from the controller's own
``EDGELOOP_MQTT_*`` variables, flags over them, so the command runs with the
controller's identity wherever the controller's environment is set. Exit
status: 0 ok, 2 usage or arguments the node refused, 3 timeout or offline
node, 4 denied or unknown method, 1 anything else; always one line on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from typing import Any

from cloud_controller.calls.node_calls import CONTROLLER_IDENTITY, CallFailed, NodeCalls
from cloud_controller.cli.receive import host_port
from cloud_controller.settings import ControllerSettings
from edge_agent.config import MqttConfig
from edge_agent.ops.cli_kit import UsageError, Verb
from edge_agent.protocol.errors import ConnectRefused, MqttError
from edge_agent.transport.mqtt import MqttClient

EXIT_OFFLINE = 3


def _arg(value: str) -> tuple[str, str]:
    key, sep, val = value.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {value!r}")
    return key, val


def _args(p: argparse.ArgumentParser) -> None:
    p.add_argument("node", help="node id")
    p.add_argument("method", help="e.g. session.state, windows.stats, config.set, outbox.flush, model.info")
    p.add_argument("--arg", dest="call_args", type=_arg, action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("-o", "--output", choices=["json", "text"], default="text")
    p.add_argument("--timeout", type=float, default=5.0, metavar="S", help="seconds to wait for the answer")
    p.add_argument(
        "--broker", type=host_port, default=None, help="HOST:PORT (default: EDGELOOP_MQTT_HOST/_PORT)"
    )
    p.add_argument(
        "--caller", default=CONTROLLER_IDENTITY, help="identity the node checks against its callers"
    )
    p.add_argument("--client-id", default=None, help="MQTT client id (default: edgeloop-call-PID)")


def _mqtt(args: argparse.Namespace) -> MqttConfig:
    try:
        cfg = ControllerSettings.load(environ=os.environ).mqtt
    except ValueError as exc:
        raise UsageError(str(exc).splitlines()[0]) from None
    if args.broker is not None:
        cfg = cfg.model_copy(update={"host": args.broker[0], "port": args.broker[1]})
    # A one-shot caller: no session for the broker to keep after it exits.
    return cfg.model_copy(update={"session_expiry_s": 0, "reconnect_max_s": 1.0})


def _text(value: Any, indent: str = "") -> list[str]:
    if isinstance(value, dict):
        lines: list[str] = []
        for k, v in value.items():
            if isinstance(v, dict | list) and v:
                lines.append(f"{indent}{k}:")
                lines += _text(v, indent + "  ")
            else:
                lines.append(f"{indent}{k}: {json.dumps(v, ensure_ascii=False)}")
        return lines
    if isinstance(value, list):
        out: list[str] = []
        for item in value:
            out += [f"{indent}{'  ' if i else '- '}{ln}" for i, ln in enumerate(_text(item))]
        return out or [f"{indent}[]"]
    return [f"{indent}{json.dumps(value, ensure_ascii=False)}"]


async def _call(args: argparse.Namespace, mqtt: MqttConfig) -> dict[str, Any]:
    client = MqttClient(mqtt, args.client_id or f"edgeloop-call-{os.getpid()}", clean_start=True, name="call")
    calls = NodeCalls(client, args.caller)
    await client.start()
    try:
        await client.wait_connected(timeout=min(args.timeout, mqtt.connect_timeout_s))
        return await calls.call(args.node, args.method, dict(args.call_args), timeout=args.timeout)
    finally:
        await client.stop()


def _run(args: argparse.Namespace) -> int:
    if args.log_level is None:
        # The answer or one error line: connection chatter only when asked for with --log-level.
        logging.getLogger().setLevel(logging.WARNING)
    if not 0 < args.timeout <= 120:
        raise UsageError("--timeout must be in (0, 120] seconds")
    mqtt = _mqtt(args)
    try:
        result = asyncio.run(_call(args, mqtt))
    except CallFailed as exc:
        print(f"cloud-controller call: {exc}", file=sys.stderr)
        return exc.exit_code
    except ConnectRefused as exc:
        print(f"cloud-controller call: the broker refused the connection: {exc}", file=sys.stderr)
        return 4
    except MqttError as exc:
        print(f"cloud-controller call: broker unreachable: {exc}", file=sys.stderr)
        return EXIT_OFFLINE
    if args.output == "json":
        print(json.dumps(result, indent=2, ensure_ascii=False))
    else:
        print("\n".join(_text(result)))
    return 0


VERBS = (
    Verb(
        "call", "call a method on a node (session.state, config.set, ...) and print the result", _run, _args
    ),
)
