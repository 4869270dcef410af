"""Topic names: the MQTT contract between devices, agents and the cloud.

Every topic string and subscription filter of EdgeLoop is built here and only
here, so the wire layout can be read (and changed) in one place; the broker ACL
(``deploy/``) is its mirror. Every id that becomes a topic level is validated
once, so a device, node, client or model id can never inject a level separator,
a wildcard or a NUL into a topic.

Layout::

    devices/{device}/telemetry | chat/in | chat/out          device <-> agent (local broker)
    devices/{device}/errors                                  agent -> device: why a message was refused
    edgeloop/v1/nodes/{node}/summaries | hard-examples | status | desired
    edgeloop/v1/nodes/{node}/rpc/request/escalate             node -> teacher
    edgeloop/v1/nodes/{node}/rpc/response/{client_id}         teacher -> node (its own inbox)
    edgeloop/v1/nodes/{node}/rpc/call/{method}                controller -> node (a call)
    edgeloop/v1/nodes/{node}/rpc/result/{client_id}           node -> caller (the caller's inbox)
    edgeloop/v1/models/{name}/{version}/manifest | chunks/{i} signed release, retained
    $share/{group}/{filter}                                   replicas splitting one filter

Why the escalation pair lives under ``nodes/{node}/``: a node may write only
under its own subtree (broker ACL), so the teacher can trust the node named in
the request topic; the response subtree is one the node may read and the
controller may write, so MQTT 5 request/response works under per-node ACLs.
Calls from the cloud to a node are the same pair turned around, for the same
reason: a node reads only its own ``rpc/call/`` and writes only its own
``rpc/result/``, so a result on ``nodes/{node}/`` really comes from that node,
and a node can never call another node (it may not write any ``rpc/call/``).
The method is a topic level so the ACL can grant an identity some methods only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from edge_agent.protocol.errors import ModelRejected, RejectedMessage

API = "edgeloop/v1"
ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")
# Node ids: stricter than other ids, because a node id is also the name of its EdgeNode resource
# (an RFC 1123 subdomain: lower case) and its certificate's CN. 63 characters at most, so it is
# also a safe topic level (ID_PATTERN) and fits ``edge-agent-{node}`` client ids and CNs (64).
# deploy/pki/issue-node-cert.sh checks the same rule.
NODE_ID_PATTERN = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*$")
NODE_ID_MAX = 63
NODE_ID_RULE = (
    "1-63 lower-case letters, digits, '-' and '.', starting and ending with a letter or digit, "
    "no empty part between dots (an RFC 1123 name: the node id is its EdgeNode's name)"
)

DEVICE_TELEMETRY_SUB = "devices/+/telemetry"
DEVICE_CHAT_IN_SUB = "devices/+/chat/in"
DEVICE_CHAT_OUT_SUB = "devices/+/chat/out"
ALL_DEVICES = "devices/#"

# Leaves under ``edgeloop/v1/nodes/{node}/``.
SUMMARIES = "summaries"
HARD_EXAMPLES = "hard-examples"
STATUS = "status"
DESIRED = "desired"
ESCALATION_REQUEST_LEAF = "rpc/request/escalate"
RPC_RESPONSE_LEAF = "rpc/response/"
CALL_LEAF = "rpc/call/"
CALL_RESULT_LEAF = "rpc/result/"

_SHARE = "$share/"
_NODES = f"{API}/nodes/"


def validate_id(value: str, kind: str = "id") -> str:
    """Return ``value`` if it is a safe single topic level, else raise RejectedMessage('bad_id')."""
    if not isinstance(value, str) or not ID_PATTERN.match(value):
        raise RejectedMessage("bad_id", f"{kind} {value!r} must match {ID_PATTERN.pattern}")
    return value


def is_node_id(value: object) -> bool:
    """True if ``value`` is a valid node id (NODE_ID_RULE)."""
    return isinstance(value, str) and len(value) <= NODE_ID_MAX and NODE_ID_PATTERN.match(value) is not None


def validate_node_id(value: str) -> str:
    """Return ``value`` if it is a valid node id, else raise RejectedMessage('bad_node_id')."""
    if not is_node_id(value):
        raise RejectedMessage("bad_node_id", f"node id {str(value)[:80]!r} must be {NODE_ID_RULE}")
    return value


def shared(group: str | None, topic_filter: str) -> str:
    """``$share/{group}/{filter}`` so replicas split the messages; the plain filter when ``group`` is unset.

    ``group`` comes from trusted config here; callers that take it from elsewhere validate it first.
    """
    return f"{_SHARE}{group}/{topic_filter}" if group else topic_filter


def unshared(topic_filter: str) -> str:
    """The filter a shared subscription matches topics against (``$share/g/a/+`` -> ``a/+``)."""
    return topic_filter.split("/", 2)[2] if topic_filter.startswith(_SHARE) else topic_filter


# --------------------------------------------------------------------------- devices


def device_telemetry(device: str) -> str:
    return f"devices/{validate_id(device, 'device')}/telemetry"


def device_chat_in(device: str) -> str:
    return f"devices/{validate_id(device, 'device')}/chat/in"


def device_chat_out(device: str) -> str:
    return f"devices/{validate_id(device, 'device')}/chat/out"


def device_errors(device: str) -> str:
    """Where the agent answers a refused message (rate-limited per device; see protocol.device_errors)."""
    return f"devices/{validate_id(device, 'device')}/errors"


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


# --------------------------------------------------------------------------- nodes


def node_prefix(node: str) -> str:
    return f"{_NODES}{validate_node_id(node)}"


def node_topic(node: str, leaf: str) -> str:
    """``edgeloop/v1/nodes/{node}/{leaf}`` for leaf in summaries, hard-examples, status, desired, ..."""
    return f"{node_prefix(node)}/{leaf}"


def summaries(node: str) -> str:
    return node_topic(node, SUMMARIES)


def hard_examples(node: str) -> str:
    return node_topic(node, HARD_EXAMPLES)


def status(node: str) -> str:
    return node_topic(node, STATUS)


def desired(node: str) -> str:
    return node_topic(node, DESIRED)


def all_nodes(leaf: str) -> str:
    """Subscription filter for one leaf across every node, for the cloud side."""
    return f"{_NODES}+/{leaf}"


def is_node_topic(topic: str) -> bool:
    """True for anything under ``edgeloop/v1/`` (the cloud link), as opposed to a device topic."""
    return topic.startswith(API)


def parse_node_topic(topic: str) -> tuple[str, str]:
    """Return ``(node, leaf)`` for ``edgeloop/v1/nodes/{node}/{leaf...}``."""
    if not topic.startswith(_NODES):
        raise RejectedMessage("bad_topic", f"not a node topic: {topic!r}")
    node, _, leaf = topic[len(_NODES) :].partition("/")
    validate_node_id(node)
    if not leaf:
        raise RejectedMessage("bad_topic", f"node topic without leaf: {topic!r}")
    return node, leaf


# --------------------------------------------------------------------------- RPC (escalation)


def escalation_request(node: str) -> str:
    """``edgeloop/v1/nodes/{node}/rpc/request/escalate``."""
    return node_topic(node, ESCALATION_REQUEST_LEAF)


def escalation_requests(share_group: str | None = "teachers") -> str:
    """Teacher subscription for every node; a shared subscription splits the load across replicas."""
    group = validate_id(share_group, "share group") if share_group else None
    return shared(group, all_nodes(ESCALATION_REQUEST_LEAF))


def parse_escalation_request(topic: str) -> str:
    """Return the node of an escalation request topic; RejectedMessage('bad_topic') otherwise."""
    suffix = "/" + ESCALATION_REQUEST_LEAF
    if not (topic.startswith(_NODES) and topic.endswith(suffix)):
        raise RejectedMessage("bad_topic", f"not an escalation request topic: {topic[:200]!r}")
    return validate_node_id(topic[len(_NODES) : -len(suffix)])


def rpc_response_prefix(node: str) -> str:
    """Every response topic of ``node`` starts with this; the teacher refuses to answer elsewhere."""
    return node_topic(node, RPC_RESPONSE_LEAF)


def rpc_response(node: str, client_id: str) -> str:
    """``edgeloop/v1/nodes/{node}/rpc/response/{client_id}``: one reply inbox per MQTT client."""
    return rpc_response_prefix(node) + validate_id(client_id, "client id")


def rpc_inbox(client_id: str) -> str:
    """Default reply topic of a client that names none (only where no per-node ACL applies)."""
    return f"{API}/rpc/{client_id}/responses"


# --------------------------------------------------------------------------- RPC (calls into a node)


def call(node: str, method: str) -> str:
    """``edgeloop/v1/nodes/{node}/rpc/call/{method}``: the cloud calls ``method`` on ``node``."""
    return node_topic(node, CALL_LEAF + validate_id(method, "method"))


def calls_filter(node: str) -> str:
    """What a node subscribes to: every method called on it, and nothing of another node."""
    return node_topic(node, CALL_LEAF + "+")


def parse_call(topic: str) -> tuple[str, str]:
    """Return ``(node, method)`` of a call topic; RejectedMessage('bad_topic') otherwise."""
    node, leaf = parse_node_topic(topic)
    if not leaf.startswith(CALL_LEAF):
        raise RejectedMessage("bad_topic", f"not a call topic: {topic[:200]!r}")
    return node, validate_id(leaf[len(CALL_LEAF) :], "method")


def call_result_prefix(node: str) -> str:
    """Every result topic of ``node`` starts with this; the node answers nowhere else."""
    return node_topic(node, CALL_RESULT_LEAF)


def call_result(node: str, client_id: str) -> str:
    """``edgeloop/v1/nodes/{node}/rpc/result/{client_id}``: the caller's inbox for ``node``'s results."""
    return call_result_prefix(node) + validate_id(client_id, "client id")


# --------------------------------------------------------------------------- model releases


def release_prefix(name: str, version: str) -> str:
    """``edgeloop/v1/models/{name}/{version}``; both must be safe levels (they are also path names)."""
    for kind, value in (("model name", name), ("model version", version)):
        if not ID_PATTERN.match(value):
            raise ModelRejected("malformed", f"{kind} {value!r} is not a safe topic level")
    return f"{API}/models/{name}/{version}"


def manifest_topic(name: str, version: str) -> str:
    return f"{release_prefix(name, version)}/manifest"


def chunk_prefix(name: str, version: str) -> str:
    """Every chunk topic of a release is this plus the decimal chunk index."""
    return f"{release_prefix(name, version)}/chunks/"


def chunk_topic(name: str, version: str, index: int) -> str:
    return f"{chunk_prefix(name, version)}{index}"


def chunks_filter(name: str, version: str) -> str:
    return f"{chunk_prefix(name, version)}+"
