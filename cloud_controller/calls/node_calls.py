"""Call a method on a node and get its result, or one error that says what went wrong.

The same object backs ``cloud-controller call`` and Python callers (a
notebook, the demo, a reconciler): one MQTT client, any number of calls in
flight, each with its own timeout. Errors are classes a caller branches on
and the command line turns into exit codes: :class:`CallTimeout` (no answer:
the node is offline or unreachable), :class:`CallDenied` (the broker or the
node refused the caller, or the method is unknown), :class:`CallBadRequest`
(the node refused the arguments), :class:`CallFailed` (anything else).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Mapping
from typing import Any, ClassVar

from edge_agent.protocol import messages as wire
from edge_agent.protocol import topics
from edge_agent.protocol.calls import CallRequest, dumps_request, parse_result
from edge_agent.protocol.errors import MqttError, PublishDenied, RejectedMessage
from edge_agent.transport.mqtt import Message, MqttClient
from edge_agent.transport.rpc import Rpc

__all__ = [
    "CONTROLLER_IDENTITY",
    "CallBadRequest",
    "CallDenied",
    "CallFailed",
    "CallTimeout",
    "NodeCalls",
]

# The certificate name the shipped broker ACL lets call nodes; what a node's ``calls.callers`` expects.
CONTROLLER_IDENTITY = "edgeloop-controller"


class CallFailed(Exception):
    """A call did not produce a result; ``code`` is the node's error code (or ``timeout``)."""

    exit_code: ClassVar[int] = 1

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        super().__init__(message)


class CallTimeout(CallFailed):
    exit_code = 3


class CallDenied(CallFailed):
    """Refused by the broker ACL or the node, or an unknown method."""

    exit_code = 4


class CallBadRequest(CallFailed):
    exit_code = 2


_BY_CODE: dict[str, type[CallFailed]] = {
    "denied": CallDenied,
    "unknown_method": CallDenied,
    "bad_request": CallBadRequest,
}


class NodeCalls:
    _instances = itertools.count()

    def __init__(self, client: MqttClient, caller: str = CONTROLLER_IDENTITY) -> None:
        self._client = client
        self._caller = topics.validate_id(caller, "caller")
        self._rpc = Rpc(client)
        # Its own inbox level: several NodeCalls may share one client, and each must see its own results.
        self._inbox = f"{client.client_id[:52]}.{next(self._instances)}"
        # node -> its last retained status (online flag, time): turns "no answer" into "offline since".
        self._status: dict[str, tuple[bool, float]] = {}
        self._watched: set[str] = set()
        client.add_router(self._route_status)

    async def call(
        self, node: str, method: str, args: Mapping[str, str] | None = None, *, timeout: float = 5.0
    ) -> dict[str, Any]:
        """The method's result (a JSON object), or a :class:`CallFailed` subclass within ``timeout``."""
        try:
            topic = topics.call(node, method)
            reply_to = topics.call_result(node, self._inbox)
            payload = dumps_request(
                CallRequest(caller=self._caller, method=method, args=dict(args or {}), timeout_s=timeout)
            )
        except (RejectedMessage, ValueError) as exc:
            raise CallBadRequest("bad_request", str(exc).splitlines()[0][:300]) from None
        await self._watch(node)
        started = time.monotonic()
        try:
            msg = await self._rpc.request(
                topic, payload, timeout=timeout, response_topic=reply_to, expiry_s=timeout
            )
        except PublishDenied as exc:
            raise CallDenied(
                "denied",
                f"the broker refused the call ({exc.reason_code}): "
                f"{self._caller!r} may not call {method} on {node!r}",
            ) from None
        except MqttError:
            raise CallTimeout("timeout", self._no_answer(node, method, time.monotonic() - started)) from None
        try:
            result = parse_result(msg.payload)
        except RejectedMessage as exc:
            raise CallFailed("failed", f"malformed result from {node!r}: {exc}") from None
        if result.node != node:
            raise CallFailed("failed", f"result names node {result.node!r}, expected {node!r}")
        if result.error is not None:
            cls = _BY_CODE.get(result.error.code, CallFailed)
            raise cls(result.error.code, f"{node}: {result.error.code}: {result.error.message}")
        return result.result or {}

    def _no_answer(self, node: str, method: str, waited: float) -> str:
        seen = self._status.get(node)
        if seen is None:
            why = "the node is offline or unknown (no status from it)"
        elif not seen[0]:
            since = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(seen[1]))
            why = f"the node is offline (last status {since})"
        else:
            why = "the node reports online but did not answer (calls disabled, or its link is down)"
        return f"no answer from node {node!r} to {method} within {waited:.1f}s: {why}"

    async def _watch(self, node: str) -> None:
        if node not in self._watched and self._client.connected:
            self._watched.add(node)
            await self._client.subscribe(topics.status(node), 1)

    def _route_status(self, msg: Message) -> bool:
        try:
            node, leaf = topics.parse_node_topic(msg.topic)
        except RejectedMessage:
            return False
        if leaf != topics.STATUS or node not in self._watched:
            return False
        try:
            status = wire.parse_json(wire.Status, msg.payload)
            self._status[node] = (status.online, status.ts)
        except RejectedMessage:
            pass
        self._client.ack(msg)
        return True
