"""paho-mqtt 2.x (MQTT 5) driven by the asyncio event loop.

Design (measured, see the report in docs): paho's non-blocking socket is
registered with ``loop.add_reader``/``add_writer`` and a small task calls
``loop_misc`` for keepalive, the way aiomqtt does it. Every paho callback then
runs on the event loop thread, so futures are resolved directly and no message
crosses a thread. On loopback this received 15-18k msg/s of 16-byte QoS 0
messages against 8-16k msg/s for paho's ``loop_start`` thread bridged with
``call_soon_threadsafe`` (GIL ping-pong and one self-pipe write per message).
Only the blocking TCP/TLS connect runs in a worker thread. That socket glue, and
the state of one connection attempt, live in :mod:`edge_agent.transport.connection`;
the paho client is a :class:`~edge_agent.transport.fast_client.FastClient`, which
reads the socket in chunks and hands a plain PUBLISH straight to :meth:`MqttClient._dispatch`
(half the agent's CPU per single-reading message went to paho's generic receive path).

One fresh paho client per connection attempt: nothing paho queued or kept in
flight on a dead connection is silently replayed later. The caller's outbox is
the source of truth; a publish whose ack was lost raises MqttError and is
retried from there (the cloud deduplicates by batch id).

MQTT 5 request/response lives beside this in :mod:`edge_agent.transport.rpc`; it
plugs in through :meth:`MqttClient.add_router` (take a message before it reaches
:meth:`MqttClient.receive`), :meth:`MqttClient.add_on_connection_lost` (fail what
waits on a dead connection) and :meth:`MqttClient.spawn` (tasks ``stop()`` cancels).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from edge_agent.config import MqttConfig
from edge_agent.protocol.errors import ConnectRefused, MqttError, PublishDenied
from edge_agent.transport.backoff import Backoff
from edge_agent.transport.connection import Connection, close_socket
from edge_agent.transport.fast_client import FastClient

log = logging.getLogger(__name__)

# CONNACK reason codes that retrying with the same settings cannot fix.
PERMANENT_CONNACK = {
    0x84: "unsupported protocol version",
    0x85: "client identifier not valid",
    0x86: "bad user name or password",
    0x87: "not authorized",
    0x8C: "bad authentication method",
}
_MISC_INTERVAL_S = 1.0
# Attributes every paho Properties object has before any property is set on it.
_BARE_PROPERTY_ATTRS = len(vars(Properties(PacketTypes.PUBLISH)))


def _set_properties(props: Properties | None) -> Properties | None:
    """The PUBLISH properties when at least one is set; paho builds a large object even for none."""
    if props is None or len(vars(props)) <= _BARE_PROPERTY_ATTRS:
        return None
    return props


@dataclass(frozen=True, slots=True)
class Message:
    """One inbound PUBLISH as the agent keeps it until it is acknowledged.

    Slotted and without paho's per-message objects: a resumed session's backlog
    queues up to ``max_incoming`` of these, and every container they hold is
    scanned by each full garbage collection (measured: most of the agent's time
    under a backlog went there before).
    """

    topic: str
    payload: bytes
    qos: int
    retain: bool
    mid: int
    properties: object | None  # paho Properties, None when the PUBLISH carried none
    dup: bool = False
    # Connection the message arrived on: a packet id is only meaningful on that connection.
    generation: int = 0


@dataclass(frozen=True)
class Will:
    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = True


@dataclass
class MqttStats:
    connects: int = 0
    connect_failures: int = 0
    disconnects: int = 0
    received: int = 0
    published: int = 0
    denied: int = 0
    acks: int = 0
    stale_acks: int = 0
    paused: int = 0


# Takes a message before the receive() queue (True: taken, e.g. an RPC response); runs on the loop thread.
Router = Callable[[Message], bool]
# Told when a connection ends (or the client stops), with the error what waited on it should fail with.
LostCallback = Callable[[MqttError], None]


class MqttClient:
    def __init__(
        self,
        cfg: MqttConfig,
        client_id: str,
        *,
        subscriptions: Sequence[tuple[str, int]] = (),
        will: Will | None = None,
        manual_ack: bool = False,
        clean_start: bool = False,
        max_incoming: int = 10_000,
        name: str = "mqtt",
        max_inflight: int = 1000,
    ) -> None:
        self.cfg = cfg
        self.client_id = client_id
        self.subscriptions: list[tuple[str, int]] = list(subscriptions)
        self.will = will
        self.manual_ack = manual_ack
        self.clean_start = clean_start
        self.max_incoming = max_incoming
        self.name = name
        # Outbound QoS 1 window in paho; clamped to the broker's Receive Maximum once known.
        self.max_inflight = max_inflight
        self._server_receive_max = 65535
        self.stats = MqttStats()
        self.last_error: BaseException | None = None
        self._refused: ConnectRefused | None = None
        self._on_connect: list[Callable[[], Awaitable[None]]] = []
        self._incoming: asyncio.Queue[Message] = asyncio.Queue()
        self._connected = asyncio.Event()
        self._disconnected = asyncio.Event()
        self._disconnected.set()
        self._conn: Connection | None = None
        self._generation = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._misc_task: asyncio.Task[None] | None = None
        self._stopping = False
        self._stopped = False
        self._routers: list[Router] = []
        self._on_lost: list[LostCallback] = []
        self._spawned: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------------ public API

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def add_on_connect(self, cb: Callable[[], Awaitable[None]]) -> None:
        self._on_connect.append(cb)

    def add_router(self, route: Router) -> None:
        """``route(msg)`` sees every message first; when it returns True the message is its own."""
        self._routers.append(route)

    def add_on_connection_lost(self, cb: LostCallback) -> None:
        self._on_lost.append(cb)

    def spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        """Run work on behalf of this client's messages; :meth:`stop` cancels what is still running."""
        task = asyncio.create_task(coro, name=f"{self.name}-{name}")
        self._spawned.add(task)
        task.add_done_callback(self._spawned.discard)
        return task

    async def subscribe(self, topic: str, qos: int) -> None:
        """Subscribe now if connected, and again on every reconnect."""
        self.subscriptions.append((topic, qos))
        conn = self._conn
        if conn is not None and self._connected.is_set():
            await self._subscribe(conn, [(topic, qos)])

    async def start(self) -> None:
        if self._task is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.create_task(self._supervise(), name=f"{self.name}-supervisor")

    async def wait_connected(self, timeout: float | None = None) -> None:
        waiter = asyncio.ensure_future(self._connected.wait())
        try:
            await asyncio.wait_for(asyncio.shield(waiter), timeout)
        except TimeoutError:
            if self._refused is not None:
                raise self._refused from None
            raise MqttError(
                f"{self.name}: not connected to {self.cfg.host}:{self.cfg.port} within {timeout}s"
                + (f" (last error: {self.last_error})" if self.last_error else "")
            ) from None
        finally:
            waiter.cancel()

    async def wait_disconnected(self, timeout: float | None = None) -> None:
        """Wait until the connection is down (tests, and callers that pause work while offline)."""
        try:
            await asyncio.wait_for(self._disconnected.wait(), timeout)
        except TimeoutError:
            raise MqttError(f"{self.name}: still connected after {timeout}s") from None

    async def publish(
        self,
        topic: str,
        payload: bytes,
        qos: int = 1,
        retain: bool = False,
        properties: object | None = None,
        timeout: float | None = None,
    ) -> None:
        conn = self._conn
        if conn is None or not self._connected.is_set():
            raise MqttError(f"{self.name}: not connected")
        if properties is not None and not isinstance(properties, Properties):
            raise TypeError("properties must be a paho Properties object")
        info = conn.client.publish(topic, payload, qos=qos, retain=retain, properties=properties)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise MqttError(f"{self.name}: publish to {topic!r} failed: {paho.error_string(info.rc)}")
        if qos == 0:
            self.stats.published += 1
            return
        assert self._loop is not None
        fut: asyncio.Future[ReasonCode] = self._loop.create_future()
        conn.pending[info.mid] = fut
        try:
            rc = await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            raise MqttError(f"{self.name}: no PUBACK for {topic!r} within {timeout}s") from None
        finally:
            conn.pending.pop(info.mid, None)
        if rc.value >= 0x80:
            self.stats.denied += 1
            raise PublishDenied(topic, rc.value, str(rc))
        self.stats.published += 1

    async def messages(self) -> AsyncIterator[Message]:
        """Yield messages in arrival order until the client is stopped.

        A message is taken off the queue only when the consumer asks for the next
        one (what it has not taken stays for a restarted consumer); while the queue
        holds messages, no ``wait_for`` wrapper per message.
        """
        incoming = self._incoming
        while True:
            msg = incoming.get_nowait() if incoming.qsize() else await incoming.get()
            self._maybe_resume()
            yield msg

    async def receive(self, timeout: float | None = None) -> Message:
        try:
            msg = await asyncio.wait_for(self._incoming.get(), timeout)
        except TimeoutError:
            raise MqttError(f"{self.name}: no message within {timeout}s") from None
        self._maybe_resume()
        return msg

    def ack(self, msg: Message) -> None:
        """Send the PUBACK of a QoS 1 message received with manual_ack=True.

        A message from an earlier connection is not acked: its packet id may now
        name a different message, and the broker redelivers it anyway.
        """
        if not self.manual_ack or msg.qos != 1:
            return
        conn = self._conn
        # Not _connected: a resumed session's backlog arrives between CONNACK and SUBACK, and its
        # acks must go out on this very connection or the broker's window stays full.
        if conn is None or msg.generation != conn.generation or conn.closed.done():
            self.stats.stale_acks += 1
            return
        conn.client.ack(msg.mid, msg.qos)
        self.stats.acks += 1

    async def stop(self, timeout: float = 5.0) -> None:
        if self._stopped:
            return
        self._stopping = True
        conn = self._conn
        if conn is not None and self._connected.is_set() and not conn.closed.done():
            conn.client.disconnect()  # reason 0: the broker discards the will
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(conn.closed), timeout)
        tasks = [t for t in (self._task, self._misc_task, *self._spawned) if t is not None]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if conn is not None:
            self._teardown(conn, MqttError(f"{self.name}: client stopped"))
        self._lost(MqttError(f"{self.name}: client stopped"))
        self._stopped = True

    # ------------------------------------------------------------------ supervisor

    async def _supervise(self) -> None:
        # Full jitter: a fleet reconnecting after a broker restart spreads out as widely as it can.
        backoff = Backoff(self.cfg.reconnect_min_s, self.cfg.reconnect_max_s, jitter="full")
        while not self._stopping:
            conn = self._new_conn()
            try:
                await self._establish(conn)
                backoff.reset()
                await conn.closed
                self.stats.disconnects += 1
                if not self._stopping:
                    log.warning("%s: connection to %s:%s lost", self.name, self.cfg.host, self.cfg.port)
            except asyncio.CancelledError:
                raise
            except ConnectRefused as exc:
                self.last_error = self._refused = exc
                self.stats.connect_failures += 1
                log.error("%s: %s; retrying slowly (fix credentials/ACL)", self.name, exc)
            except Exception as exc:
                self.last_error = exc
                self._refused = None
                self.stats.connect_failures += 1
                log.warning("%s: connect to %s:%s failed: %s", self.name, self.cfg.host, self.cfg.port, exc)
            finally:
                self._teardown(conn, MqttError(f"{self.name}: connection lost"))
            if self._stopping:
                break
            delay = backoff.next(slow=self._refused is not None)  # a permanent refusal never spins fast
            log.info("%s: reconnect attempt %d in %.2fs", self.name, backoff.attempt, delay)
            await asyncio.sleep(delay)

    def _new_conn(self) -> Connection:
        assert self._loop is not None
        self._generation += 1
        loop = self._loop
        conn = Connection(
            self._make_client(), self._generation, loop, loop.create_future(), loop.create_future()
        )
        self._conn = conn
        self._bind_callbacks(conn)
        return conn

    async def _establish(self, conn: Connection) -> None:
        assert self._loop is not None
        loop = self._loop
        client = conn.client
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = self.cfg.session_expiry_s
        # Bounds unacked broker->client QoS 1 messages: the broker's backpressure.
        props.ReceiveMaximum = max(1, min(self.max_incoming, 65535))
        cfg = self.cfg
        fut = loop.run_in_executor(
            None,
            lambda: client.connect(
                cfg.host, cfg.port, cfg.keepalive_s, clean_start=self.clean_start, properties=props
            ),
        )
        try:
            await asyncio.shield(fut)
        except asyncio.CancelledError:
            # The worker thread cannot be interrupted: close its socket when it is done.
            fut.add_done_callback(lambda _f: close_socket(client))
            raise
        except (OSError, ssl.SSLError, ValueError) as exc:
            raise MqttError(f"cannot connect to {cfg.host}:{cfg.port}: {exc}") from exc
        conn.attach_socket()
        try:
            rc, cprops, session_present = await asyncio.wait_for(
                asyncio.shield(conn.connack), cfg.connect_timeout_s
            )
        except TimeoutError:
            raise MqttError(f"no CONNACK within {cfg.connect_timeout_s}s") from None
        if rc.value >= 0x80:
            if rc.value in PERMANENT_CONNACK:
                raise ConnectRefused(rc.value, str(rc))
            raise MqttError(f"broker refused connection: {rc.value} {rc}")
        receive_max = int(getattr(cprops, "ReceiveMaximum", 65535)) if cprops is not None else 65535
        if receive_max < min(self.max_inflight, self._server_receive_max):
            log.info("%s: broker Receive Maximum %d, used from the next connection", self.name, receive_max)
        # paho ignores the broker's Receive Maximum and can only set its window before connecting.
        self._server_receive_max = receive_max
        self._refused = None
        self.last_error = None
        log.info(
            "%s: connected to %s:%s as %s (session present: %s)",
            self.name, cfg.host, cfg.port, self.client_id, session_present,
        )
        self._misc_task = asyncio.create_task(self._misc_loop(conn), name=f"{self.name}-keepalive")
        if self.subscriptions:
            await self._subscribe(conn, self.subscriptions)
            log.info("%s: subscribed to %d topic filter(s)", self.name, len(self.subscriptions))
        self.stats.connects += 1
        self._disconnected.clear()
        self._connected.set()
        for cb in list(self._on_connect):
            try:
                await cb()
            except Exception:
                log.exception("%s: on_connect callback failed", self.name)

    def _make_client(self) -> paho.Client:
        client = FastClient(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=paho.MQTTv5,
            manual_ack=self.manual_ack,
        )
        client.connect_timeout = self.cfg.connect_timeout_s
        client.max_inflight_messages_set(max(1, min(self.max_inflight, self._server_receive_max, 65535)))
        client.max_queued_messages_set(0)
        if self.cfg.username is not None:
            pw = self.cfg.password.get_secret_value() if self.cfg.password is not None else None
            client.username_pw_set(self.cfg.username, pw)
        if self.cfg.tls is not None:
            tls = self.cfg.tls
            client.tls_set(
                ca_certs=str(tls.ca_file),
                certfile=str(tls.cert_file) if tls.cert_file else None,
                keyfile=str(tls.key_file) if tls.key_file else None,
            )
            if tls.insecure_skip_hostname:
                client.tls_insecure_set(True)
        if self.will is not None:
            client.will_set(self.will.topic, self.will.payload, self.will.qos, self.will.retain)
        return client

    async def _subscribe(self, conn: Connection, subs: Sequence[tuple[str, int]]) -> None:
        assert self._loop is not None
        rc, mid = conn.client.subscribe([(t, SubscribeOptions(qos=q)) for t, q in subs])
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or mid is None:
            raise MqttError(f"subscribe failed: {paho.error_string(rc)}")
        fut: asyncio.Future[list[ReasonCode]] = self._loop.create_future()
        conn.subacks[mid] = fut
        try:
            # A resumed session's backlog is delivered ahead of the SUBACK: on a busy client that takes
            # longer than a connect. A dead connection fails this future at once (teardown), so wait long.
            codes = await asyncio.wait_for(asyncio.shield(fut), max(120.0, self.cfg.connect_timeout_s))
        except TimeoutError:
            raise MqttError("no SUBACK") from None
        finally:
            conn.subacks.pop(mid, None)
        for (topic, qos), code in zip(subs, codes, strict=False):
            if code.value >= 0x80:
                log.error("%s: subscription to %r refused: %s %s", self.name, topic, code.value, code)
            elif code.value < qos:
                log.warning("%s: subscription to %r granted QoS %s < %s", self.name, topic, code.value, qos)

    async def _misc_loop(self, conn: Connection) -> None:
        while not conn.closed.done():
            await asyncio.sleep(_MISC_INTERVAL_S)
            conn.client.loop_misc()

    def _maybe_resume(self) -> None:
        conn = self._conn
        if conn is not None and not conn.reading and self._incoming.qsize() <= self.max_incoming // 2:
            if not conn.closed.done():
                conn.resume_reading()

    def _teardown(self, conn: Connection, exc: BaseException) -> None:
        if self._conn is conn:
            self._connected.clear()
            self._disconnected.set()
        if self._misc_task is not None:
            self._misc_task.cancel()
            self._misc_task = None
        futs: list[asyncio.Future[Any]] = [*conn.pending.values(), *conn.subacks.values()]
        for fut in futs:
            if not fut.done():
                fut.set_exception(exc)
        conn.pending.clear()
        conn.subacks.clear()
        # A response that would come on the dead connection will not come: fail its waiter now.
        self._lost(MqttError(f"{self.name}: connection lost while waiting for a response"))
        conn.connack.cancel()
        if not conn.closed.done():
            conn.closed.set_result(None)
        conn.close_socket()

    def _lost(self, exc: MqttError) -> None:
        for cb in list(self._on_lost):
            try:
                cb(exc)
            except Exception:
                log.exception("%s: connection-lost callback failed", self.name)

    # ------------------------------------------------------------------ paho callbacks (event loop thread)

    def _bind_callbacks(self, conn: Connection) -> None:
        def on_connect(_c: paho.Client, _u: Any, flags: Any, rc: ReasonCode, props: Any) -> None:
            if not conn.connack.done():
                conn.connack.set_result((rc, props, bool(getattr(flags, "session_present", False))))

        def on_disconnect(_c: paho.Client, _u: Any, _f: Any, rc: ReasonCode, _p: Any) -> None:
            if not conn.closed.done():
                conn.closed.set_result(rc)
            if self._conn is conn:
                self._connected.clear()
                self._disconnected.set()

        def on_publish(_c: paho.Client, _u: Any, mid: int, rc: ReasonCode, _p: Any) -> None:
            fut = conn.pending.get(mid)
            if fut is not None and not fut.done():
                fut.set_result(rc)

        def on_subscribe(_c: paho.Client, _u: Any, mid: int, codes: list[ReasonCode], _p: Any) -> None:
            fut = conn.subacks.get(mid)
            if fut is not None and not fut.done():
                fut.set_result(codes)

        def on_message(_c: paho.Client, _u: Any, m: paho.MQTTMessage) -> None:
            # paho's own path: QoS 2, or a topic that is not UTF-8 (then m.topic raises: dropped).
            try:
                self._dispatch_paho(conn, m)
            except Exception:  # an exception escaping into paho would corrupt its read state
                log.exception("%s: dropping undeliverable message on %r", self.name, m._topic)

        def on_publish_in(
            topic: str, payload: bytes, qos: int, retain: bool, mid: int, dup: bool, props: Any
        ) -> None:
            # FastClient's direct path (every MQTT 5 QoS 0/1 PUBLISH with a UTF-8 topic).
            try:
                self._dispatch(conn, topic, payload, qos, retain, mid, dup, props)
            except Exception:  # an exception escaping into paho would corrupt its read state
                log.exception("%s: dropping undeliverable message on %r", self.name, topic)

        conn.client.on_connect = on_connect
        conn.client.on_disconnect = on_disconnect
        conn.client.on_publish = on_publish
        conn.client.on_subscribe = on_subscribe
        conn.client.on_message = on_message
        if isinstance(conn.client, FastClient):
            conn.client.on_publish_in = on_publish_in

    def _dispatch_paho(self, conn: Connection, m: paho.MQTTMessage) -> None:
        props = _set_properties(getattr(m, "properties", None))
        self._dispatch(conn, m.topic, bytes(m.payload), m.qos, bool(m.retain), m.mid, bool(m.dup), props)

    def _dispatch(
        self,
        conn: Connection,
        topic: str,
        payload: bytes,
        qos: int,
        retain: bool,
        mid: int,
        dup: bool,
        properties: Properties | None,
    ) -> None:
        msg = Message(topic, payload, qos, retain, mid, properties, dup, conn.generation)
        self.stats.received += 1
        for route in self._routers:
            if route(msg):
                return
        incoming = self._incoming
        incoming.put_nowait(msg)
        if incoming.qsize() >= self.max_incoming and conn.pause_reading():
            self.stats.paused += 1
