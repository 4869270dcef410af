"""Topic names: the MQTT contract between devices, agents and the cloud.

Every id that becomes a topic level is validated here, once, so that a device
or node id can never inject a level separator, a wildcard or a NUL into a topic.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from edge_agent.protocol.errors import RejectedMessage

API = "edgeloop/v1"
ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")

DEVICE_TELEMETRY_SUB = "devices/+/telemetry"
DEVICE_CHAT_IN_SUB = "devices/+/chat/in"


def validate_id(value: str, kind: str = "id") -> str:
    """Return ``value`` if it is a safe single topic level, else raise RejectedMessage('bad_id')."""
    if not isinstance(value, str) or not ID_PATTERN.match(value):
        raise RejectedMessage("bad_id", f"{kind} {value!r} must match {ID_PATTERN.pattern}")
    return value


def device_telemetry(device: str) -> str:
    return f"devices/{validate_id(device, 'device')}/telemetry"


def device_chat_in(device: str) -> str:
    return f"devices/{validate_id(device, 'device')}/chat/in"


def device_chat_out(device: str) -> str:
    return f"devices/{validate_id(device, 'device')}/chat/out"


def node_prefix(node: str) -> str:
    return f"{API}/nodes/{validate_id(node, 'node')}"


def node_topic(node: str, leaf: str) -> str:
    """``edgeloop/v1/nodes/{node}/{leaf}`` for leaf in summaries, hard-examples, status, desired, ..."""
    return f"{node_prefix(node)}/{leaf}"


def summaries(node: str) -> str:
    return node_topic(node, "summaries")


def hard_examples(node: str) -> str:
    return node_topic(node, "hard-examples")


def status(node: str) -> str:
    return node_topic(node, "status")


def desired(node: str) -> str:
    return node_topic(node, "desired")


def all_nodes(leaf: str) -> str:
    """Subscription filter for one leaf across every node, for the cloud side."""
    return f"{API}/nodes/+/{leaf}"


@dataclass(frozen=True)
class DeviceTopic:
    device: str
    kind: str  # "telemetry" | "chat/in"


def parse_device_topic(topic: str) -> DeviceTopic:
    """Split an inbound device topic; raise RejectedMessage for anything else."""
    parts = topic.split("/")
    if len(parts) >= 3 and parts[0] == "devices":
        device = validate_id(parts[1], "device")
        kind = "/".join(parts[2:])
        if kind in ("telemetry", "chat/in"):
            return DeviceTopic(device, kind)
    raise RejectedMessage("bad_topic", f"unexpected device topic {topic!r}")


def parse_node_topic(topic: str) -> tuple[str, str]:
    """Return ``(node, leaf)`` for ``edgeloop/v1/nodes/{node}/{leaf...}``."""
    prefix = f"{API}/nodes/"
    if not topic.startswith(prefix):
        raise RejectedMessage("bad_topic", f"not a node topic: {topic!r}")
    node, _, leaf = topic[len(prefix) :].partition("/")
    validate_id(node, "node")
    if not leaf:
        raise RejectedMessage("bad_topic", f"node topic without leaf: {topic!r}")
    return node, leaf
