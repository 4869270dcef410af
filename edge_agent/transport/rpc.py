"""MQTT 5 request/response over one :class:`~edge_agent.transport.mqtt.MqttClient`.

A request carries a ResponseTopic and CorrelationData; the responder publishes
its answer to that topic with the same correlation data. This is how the edge
asks the cloud teacher (``edge_agent.escalation.escalator``) and how the teacher
answers (``cloud_controller.teachers.chat_service``); both use this one module,
so correlation, the reply subscription and the failure on a lost connection are
written once.

Why a separate object and not methods on the client: connection handling (connect,
backoff, manual ack, backpressure) does not need to know RPC exists. An
:class:`Rpc` plugs into the client's router, connection-lost and spawn hooks.

The reply topic should lie in a subtree the responder may write and this client
may read under the broker ACL: :func:`edge_agent.protocol.topics.rpc_response`
(``nodes/{node}/rpc/response/{client_id}``) for a node.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import uuid
from collections.abc import Awaitable, Callable, Sequence

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge_agent.protocol import topics
from edge_agent.protocol.errors import MqttError
from edge_agent.transport.mqtt import Message, MqttClient

__all__ = ["Handler", "Rpc", "topic_filter_matcher"]

log = logging.getLogger(__name__)

# A handler returns the response body, or None to send no response (e.g. a misdirected reply topic).
Handler = Callable[[Message], Awaitable[bytes | None]]


def topic_filter_matcher(topic_filter: str) -> Callable[[str], bool]:
    """A test ``topic -> bool`` for one MQTT topic filter, compiled once.

    Every inbound message passes each served filter (device telemetry included),
    and ``paho.topic_matches_sub`` builds a matcher trie per call: it was 10 % of the
    agent's single-reading profile. Same rules: ``+`` is one level, a trailing ``#``
    also matches its parent level, and a filter starting with a wildcard never
    matches a ``$`` topic (``tests/edge/test_rpc_matcher.py`` checks it against paho).
    """
    levels = topic_filter.split("/")
    parts: list[str] = []
    for i, level in enumerate(levels):
        if level == "#" and i == len(levels) - 1:
            pattern = ".*" if i == 0 else "/".join(parts) + "(?:/.*)?"
            break
        parts.append("[^/]*" if level == "+" else re.escape(level))
    else:
        pattern = "/".join(parts)
    fullmatch = re.compile(pattern, re.DOTALL).fullmatch
    if levels[0] in ("+", "#"):
        return lambda topic: not topic.startswith("$") and fullmatch(topic) is not None
    return lambda topic: fullmatch(topic) is not None


class Rpc:
    """Requests out and answers in (:meth:`request`), or requests in and answers out (:meth:`serve`)."""

    def __init__(self, client: MqttClient) -> None:
        self.client = client
        self._response_topics: set[str] = set()
        self._requests: dict[bytes, asyncio.Future[Message]] = {}
        self._handlers: dict[str, Handler] = {}
        self._matchers: list[tuple[Callable[[str], bool], Handler]] = []
        # Responses nobody waits for any more: a duplicate, or one that came after its timeout.
        self.unmatched_responses = 0
        client.add_router(self._route)
        client.add_on_connection_lost(self._fail_waiting)

    async def request(
        self, topic: str, payload: bytes, timeout: float = 5.0, qos: int = 1,
        response_topic: str | None = None,
        expiry_s: float | None = None,
        user_properties: Sequence[tuple[str, str]] = (),
    ) -> Message:
        """Publish a request and return its response message (correlated by id); MqttError on timeout.

        ``expiry_s`` sets the MQTT 5 Message Expiry Interval: a broker holding the request for an
        offline responder's session drops it then, so a late comer never acts on a call long given up.
        ``user_properties`` travel with the request (the trace context of :mod:`edge_agent.ops.tracing`).
        """
        client = self.client
        reply_to = response_topic or topics.rpc_inbox(client.client_id)
        if reply_to not in self._response_topics:
            self._response_topics.add(reply_to)
            await client.subscribe(reply_to, 1)
        corr = uuid.uuid4().bytes
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic = reply_to
        props.CorrelationData = corr
        if expiry_s is not None:
            props.MessageExpiryInterval = max(1, math.ceil(expiry_s))
        if user_properties:
            props.UserProperty = list(user_properties)
        fut: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._requests[corr] = fut
        try:
            async with asyncio.timeout(timeout):
                await client.publish(topic, payload, qos=qos, properties=props)
                return await fut
        except TimeoutError:
            raise MqttError(f"{client.name}: no response on {topic!r} within {timeout}s") from None
        finally:
            self._requests.pop(corr, None)

    async def serve(self, topic_filter: str, handler: Handler, qos: int = 1) -> None:
        """Answer requests on ``topic_filter``: ``handler(msg)`` returns the response payload."""
        self._handlers[topic_filter] = handler
        self._matchers = [(topic_filter_matcher(topics.unshared(f)), h) for f, h in self._handlers.items()]
        await self.client.subscribe(topic_filter, qos)

    # ------------------------------------------------------------------ client hooks

    def _fail_waiting(self, exc: MqttError) -> None:
        for fut in self._requests.values():
            if not fut.done():
                fut.set_exception(exc)
        self._requests.clear()

    def _route(self, msg: Message) -> bool:
        if msg.topic in self._response_topics:
            corr = getattr(msg.properties, "CorrelationData", None)
            fut = self._requests.get(corr) if corr is not None else None
            if fut is not None and not fut.done():
                fut.set_result(msg)
            else:
                self.unmatched_responses += 1
            self.client.ack(msg)
            return True
        topic = msg.topic
        for matches, handler in self._matchers:
            if matches(topic):
                self.client.spawn(self._answer(msg, handler), "rpc")
                return True
        return False

    async def _answer(self, msg: Message, handler: Handler) -> None:
        try:
            reply_to = getattr(msg.properties, "ResponseTopic", None)
            body = await handler(msg)
            if reply_to and body is not None:
                props = Properties(PacketTypes.PUBLISH)
                corr = getattr(msg.properties, "CorrelationData", None)
                if corr is not None:
                    props.CorrelationData = corr
                await self.client.publish(reply_to, body, qos=1, properties=props)
        except Exception:
            log.exception("%s: request handler for %r failed", self.client.name, msg.topic)
        finally:
            self.client.ack(msg)
