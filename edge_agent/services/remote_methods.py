"""The methods the cloud may call on this node, and the one place that answers calls.

Two gates, on purpose. The broker ACL is the first: only the controller
identity may write ``nodes/{node}/rpc/call/#`` and a node may write no
``rpc/call/`` at all, so a node can never call another node. The agent is the
second: it answers only callers its ``calls.callers`` names, with a role each
method allows (read-only methods for ``viewer`` and ``operator``, mutating ones
for ``operator``), and only to a result topic under its own subtree. The second
gate is what holds on a shared development broker without ACLs, or when an ACL
is edited wrong.

Every call runs in its own task (:class:`~edge_agent.transport.rpc.Rpc` spawns
it), bounded by ``calls.max_inflight`` and by the caller's own timeout, so a
slow method never holds up telemetry, chat or another call.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from edge_agent.config import CallsConfig
from edge_agent.protocol import topics
from edge_agent.protocol.calls import (
    CallRequest,
    CallResult,
    ErrorCode,
    Role,
    encode_result,
    error_result,
    parse_request,
)
from edge_agent.protocol.errors import RejectedMessage
from edge_agent.transport.mqtt import Message, MqttClient
from edge_agent.transport.rpc import Rpc

__all__ = ["READ", "WRITE", "BadRequest", "Method", "RemoteMethods"]

log = logging.getLogger(__name__)

READ: frozenset[Role] = frozenset({"viewer", "operator"})
WRITE: frozenset[Role] = frozenset({"operator"})

Handler = Callable[[CallRequest], Awaitable[dict[str, Any]]]


class BadRequest(Exception):
    """A method's arguments are wrong: the caller gets ``bad_request`` with this text."""


@dataclass(frozen=True)
class Method:
    name: str
    help: str
    roles: frozenset[Role]
    handler: Handler

    @property
    def mutating(self) -> bool:
        return "viewer" not in self.roles


class RemoteMethods:
    def __init__(
        self,
        node: str,
        client: MqttClient,
        cfg: Callable[[], CallsConfig],
        methods: Iterable[Method],
    ) -> None:
        self._node = topics.validate_id(node, "node")
        self._client = client
        self._cfg = cfg
        self.methods: dict[str, Method] = {}
        for m in methods:
            if m.name in self.methods:
                raise ValueError(f"method {m.name!r} registered twice")
            self.methods[topics.validate_id(m.name, "method")] = m
        self.inflight = 0
        # outcome ("ok" or an error code, "dropped" for no answer at all) -> calls
        self.outcomes: Counter[str] = Counter()
        self._rpc: Rpc | None = None

    async def start(self) -> None:
        """Subscribe to this node's call topic (and again on every reconnect)."""
        if self._rpc is None:
            self._rpc = Rpc(self._client)
            await self._rpc.serve(topics.calls_filter(self._node), self._answer)

    def describe(self) -> list[dict[str, object]]:
        return [
            {"name": m.name, "help": m.help, "roles": sorted(m.roles), "mutating": m.mutating}
            for m in self.methods.values()
        ]

    async def _answer(self, msg: Message) -> bytes | None:
        reply_to = getattr(msg.properties, "ResponseTopic", None)
        if not self._reply_allowed(reply_to):
            # Answering elsewhere would let a caller route this node's data to a topic it can read.
            self.outcomes["dropped"] += 1
            log.warning("call refused: result topic outside this node's inbox", extra={"topic": msg.topic})
            return None
        result = await self._call(msg)
        self.outcomes["ok" if result.ok else result.error.code if result.error else "failed"] += 1
        return encode_result(result)

    def _reply_allowed(self, reply_to: object) -> bool:
        prefix = topics.call_result_prefix(self._node)
        if not isinstance(reply_to, str) or not reply_to.startswith(prefix):
            return False
        return topics.ID_PATTERN.match(reply_to[len(prefix) :]) is not None

    async def _call(self, msg: Message) -> CallResult:
        try:
            node, name = topics.parse_call(msg.topic)
            req = parse_request(msg.payload)
        except RejectedMessage as exc:
            return self._error(msg.topic.rsplit("/", 1)[-1], "bad_request", f"{exc.reason}: {exc.detail}")
        if node != self._node or req.method != name:
            return self._error(name, "bad_request", "method in the payload differs from the topic")
        cfg = self._cfg()
        role = cfg.callers.get(req.caller)
        if role is None:
            return self._error(name, "denied", f"caller {req.caller!r} may not call node {self._node!r}")
        method = self.methods.get(name)
        if method is None:
            known = ", ".join(sorted(self.methods))
            return self._error(name, "unknown_method", f"unknown method {name!r}; methods: {known}")
        if role not in method.roles:
            return self._error(
                name,
                "denied",
                f"{name} needs role {'/'.join(sorted(method.roles))}, caller {req.caller!r} is {role}",
            )
        if self.inflight >= cfg.max_inflight:
            return self._error(name, "busy", f"{self.inflight} calls in flight; try again")
        self.inflight += 1
        try:
            async with asyncio.timeout(req.timeout_s):
                body = await method.handler(req)
        except BadRequest as exc:
            return self._error(name, "bad_request", str(exc))
        except TimeoutError:
            return self._error(name, "failed", f"{name} did not finish within {req.timeout_s}s")
        except Exception as exc:
            log.exception("call failed", extra={"method": name})
            return self._error(name, "failed", f"{type(exc).__name__}: {exc}")
        finally:
            self.inflight -= 1
        log.info("call answered", extra={"method": name, "caller": req.caller})
        return CallResult(node=self._node, method=name, ok=True, result=body)

    def _error(self, method: str, code: ErrorCode, message: str) -> CallResult:
        if code != "unknown_method":
            log.warning("call refused", extra={"method": method[:64], "code": code, "detail": message})
        return error_result(self._node, method, code, message)
