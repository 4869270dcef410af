"""One simulated edge node on paho (status, summaries, model downloads, desired state), driven from an
asyncio loop, and the settings and counters a fleet of them shares."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import random
import socket
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from edge_agent.protocol import messages as wire
from edge_agent.protocol import topics
from edge_agent.protocol.errors import ModelRejected
from edge_agent.protocol.manifest import check_newer, verify_manifest

log = logging.getLogger(__name__)

__all__ = ["NodeHost", "SimConfig", "SimNode", "WorkerStats", "node_names"]


def node_names(n: int, prefix: str = "sim") -> list[str]:
    return [f"{prefix}-{i:05d}" for i in range(n)]


@dataclass
class SimConfig:
    host: str = "127.0.0.1"
    port: int = 1883
    rate: float = 1.0  # summaries per node per second (0: none)
    status_interval_s: float = 10.0
    windows_per_summary: int = 4
    task: str = "sensor"
    initial_model: str = "sim-model"
    initial_version: str = "1"
    public_key_pem: bytes | None = None  # pinned release key
    keepalive_s: int = 60
    session_expiry_s: int = 3600
    max_inflight_per_node: int = 20  # QoS 1 summaries awaiting PUBACK before a node skips a tick
    connect_spread_s: float = 0.0  # spread connects (0: as fast as the worker can)
    seed: int = 0


@dataclass
class WorkerStats:
    nodes: int = 0
    connected: int = 0
    connects: int = 0
    disconnects: int = 0
    summaries_published: int = 0
    summaries_acked: int = 0
    summaries_skipped: int = 0  # ticks a node was still at its in-flight bound (offered load not met)
    publish_errors: int = 0  # PUBACK reason code >= 0x80
    statuses_published: int = 0
    desired_received: int = 0
    fetches_started: int = 0
    fetches_done: int = 0
    fetch_failures: int = 0
    fetch_bytes: int = 0
    fetch_seconds: list[float] = field(default_factory=list)
    verify_errors: dict[str, int] = field(default_factory=dict)
    versions: dict[str, int] = field(default_factory=dict)  # "name@version" -> nodes running it
    backlog_done: bool = True


# --------------------------------------------------------------------------- asyncio <-> paho


def _attach(client: paho.Client, loop: asyncio.AbstractEventLoop) -> None:
    """paho's documented external-loop hooks: the event loop watches the socket, paho does the I/O."""

    def on_open(c: paho.Client, _u: Any, sock: Any) -> None:
        fd = sock.fileno()
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        loop.add_reader(fd, c.loop_read)

    def on_close(c: paho.Client, _u: Any, sock: Any) -> None:
        fd = sock.fileno()
        loop.remove_reader(fd)
        loop.remove_writer(fd)

    def reg_write(c: paho.Client, _u: Any, sock: Any) -> None:
        loop.add_writer(sock.fileno(), c.loop_write)

    def unreg_write(c: paho.Client, _u: Any, sock: Any) -> None:
        loop.remove_writer(sock.fileno())

    client.on_socket_open = on_open
    client.on_socket_close = on_close
    client.on_socket_register_write = reg_write
    client.on_socket_unregister_write = unreg_write


def _props(**kw: Any) -> Properties:
    p = Properties(PacketTypes.CONNECT)
    for k, v in kw.items():
        setattr(p, k, v)
    return p


# --------------------------------------------------------------------------- one node


class NodeHost(Protocol):
    """What a node needs from the worker that drives it (the worker process's shared loop and counters)."""

    loop: asyncio.AbstractEventLoop
    stats: WorkerStats
    template: wire.SummaryBatch
    public_keys: dict[str, bytes]
    stopping: bool
    transfers: set[paho.Client]
    fetch_tasks: set[asyncio.Task[None]]


class SimNode:
    def __init__(self, name: str, cfg: SimConfig, worker: NodeHost) -> None:
        self.name = name
        self.cfg = cfg
        self.w = worker
        self.client_id = f"edge-agent-{name}"
        self.seq = 0
        self.inflight: set[int] = set()
        self.connected = False
        self.model = (cfg.initial_model, cfg.initial_version)
        self.highest: dict[str, str] = {cfg.initial_model: cfg.initial_version}
        self.samples = 0
        self.applied_generation = 0
        self.fetching: str | None = None  # digest being fetched
        self.refused: set[str] = set()
        self.readings = 0
        self.bytes_sent = 0
        self.client = self._make_client()

    def _make_client(self) -> paho.Client:
        c = paho.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=paho.MQTTv5)
        c.max_inflight_messages_set(self.cfg.max_inflight_per_node + 5)
        c.max_queued_messages_set(0)
        offline = wire.Status(node=self.name, online=False, ts=time.time())
        c.will_set(topics.status(self.name), wire.dumps(offline), qos=1, retain=True)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_publish = self._on_publish
        c.on_message = self._on_message
        _attach(c, self.w.loop)
        return c

    def connect(self) -> None:
        self.w.stats.connects += 1
        try:
            self.client.connect(
                self.cfg.host,
                self.cfg.port,
                keepalive=self.cfg.keepalive_s,
                clean_start=False,
                properties=_props(SessionExpiryInterval=self.cfg.session_expiry_s),
            )
        except OSError as exc:
            log.warning("%s: connect failed: %s", self.name, exc)
            self.w.loop.call_later(1.0 + random.random(), self.connect)

    # ---------------------------------------------------------------- callbacks

    def _on_connect(self, c: paho.Client, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        if rc.is_failure:
            log.warning("%s: CONNACK %s", self.name, rc)
            return
        self.connected = True
        self.w.stats.connected += 1
        c.subscribe([(topics.desired(self.name), SubscribeOptions(qos=1))])
        self.publish_status()

    def _on_disconnect(self, c: paho.Client, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        if self.connected:
            self.w.stats.connected -= 1
        self.connected = False
        self.inflight.clear()
        if self.w.stopping:
            return
        self.w.stats.disconnects += 1
        log.warning("%s: disconnected (%s); reconnecting", self.name, rc)
        self.w.loop.call_later(0.5 + random.random(), self._reconnect)

    def _reconnect(self) -> None:
        with contextlib.suppress(OSError):
            self.client.reconnect()
            return
        self.w.loop.call_later(1.0 + random.random(), self._reconnect)

    def _on_publish(self, _c: paho.Client, _u: Any, mid: int, rc: Any, _p: Any) -> None:
        if mid in self.inflight:
            self.inflight.discard(mid)
            self.w.stats.summaries_acked += 1
        if rc.is_failure:
            self.w.stats.publish_errors += 1

    def _on_message(self, _c: paho.Client, _u: Any, m: paho.MQTTMessage) -> None:
        if not m.payload:
            return
        self.w.stats.desired_received += 1
        try:
            desired = wire.parse_json(wire.DesiredState, bytes(m.payload))
        except Exception as exc:  # a bad desired state is reported, never fatal
            self.w.stats.verify_errors["bad_desired"] = self.w.stats.verify_errors.get("bad_desired", 0) + 1
            log.warning("%s: bad desired state: %s", self.name, exc)
            return
        ref = desired.models.get(self.cfg.task)
        if ref is None or (ref.name, ref.version) == self.model or ref.digest in self.refused:
            self._applied(desired.generation)
            return
        if self.fetching == ref.digest:
            return
        self.fetching = ref.digest
        self.w.stats.fetches_started += 1
        t = self.w.loop.create_task(self._fetch(ref, desired.generation), name=f"fetch-{self.name}")
        self.w.fetch_tasks.add(t)
        t.add_done_callback(self.w.fetch_tasks.discard)

    def _applied(self, generation: int) -> None:
        if generation != self.applied_generation:
            self.applied_generation = generation
            self.publish_status()

    # ---------------------------------------------------------------- uplink

    def publish_status(self) -> None:
        if not self.connected:
            return
        ms = wire.ModelStatus(
            name=self.model[0],
            version=self.model[1],
            state="active",
            samples=self.samples,
            escalated=self.samples // 100,
            errors=0,
            confidence_sum=0.9 * self.samples,
        )
        st = wire.Status(
            node=self.name,
            online=True,
            ts=time.time(),
            agent_version="fleet-sim",
            models={self.cfg.task: ms},
            counters={
                "readings_in": float(self.readings),
                "bytes_sent": float(self.bytes_sent),
                "raw_equivalent_bytes": float(self.readings * 40),
            },
            applied_generation=self.applied_generation,
        )
        self.client.publish(topics.status(self.name), wire.dumps(st), qos=1, retain=True)
        self.w.stats.statuses_published += 1

    def publish_summary(self) -> bool:
        if not self.connected:
            return False
        if len(self.inflight) >= self.cfg.max_inflight_per_node:
            self.w.stats.summaries_skipped += 1
            return False
        now = time.time()
        batch = self.w.template.model_copy(
            update={"id": wire.new_id(), "node": self.name, "seq": self.seq, "created": now}
        )
        payload = wire.encode_summary(batch)
        info = self.client.publish(topics.summaries(self.name), payload, qos=1)
        if info.rc != paho.MQTT_ERR_SUCCESS:
            self.w.stats.publish_errors += 1
            return False
        self.inflight.add(info.mid)
        self.seq += 1
        n = self.cfg.windows_per_summary
        self.samples += n
        self.readings += n * 10
        self.bytes_sent += len(payload)
        self.w.stats.summaries_published += 1
        return True

    # ---------------------------------------------------------------- model fetch

    async def _fetch(self, ref: wire.ModelRef, generation: int) -> None:
        t0 = time.monotonic()
        try:
            archive = await self._transfer(ref)
            self.highest[ref.name] = ref.version
            self.model = (ref.name, ref.version)
            self.samples = 100  # since activation (the rollout analysis reads these)
            self.w.stats.fetches_done += 1
            self.w.stats.fetch_bytes += len(archive)
            self.w.stats.fetch_seconds.append(time.monotonic() - t0)
            self.fetching = None
            self._applied(generation)
            self.publish_status()
        except ModelRejected as exc:
            self.refused.add(ref.digest)
            self.fetching = None
            self.w.stats.fetch_failures += 1
            self.w.stats.verify_errors[exc.reason] = self.w.stats.verify_errors.get(exc.reason, 0) + 1
            log.error("%s: refused %s@%s: %s", self.name, ref.name, ref.version, exc)
        except Exception as exc:
            self.fetching = None
            self.w.stats.fetch_failures += 1
            log.error("%s: fetching %s@%s failed: %s", self.name, ref.name, ref.version, exc)

    async def _transfer(self, ref: wire.ModelRef, timeout_s: float = 120.0) -> bytes:
        """One clean-start connection: manifest (verified) first, then every chunk (verified on arrival)."""
        loop = self.w.loop
        done: asyncio.Future[bytes] = loop.create_future()
        state: dict[str, Any] = {"manifest": None, "chunks": {}}
        prefix = topics.chunk_prefix(ref.name, ref.version)
        mtopic = topics.manifest_topic(ref.name, ref.version)
        c = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=f"{self.client_id}-models-{ref.task}", protocol=paho.MQTTv5
        )
        c.max_queued_messages_set(0)
        _attach(c, loop)

        def fail(exc: BaseException) -> None:
            if not done.done():
                done.set_exception(exc)

        def on_connect(cl: paho.Client, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
            if rc.is_failure:
                fail(ConnectionError(f"transfer CONNACK {rc}"))
                return
            cl.subscribe([(mtopic, SubscribeOptions(qos=1))])

        def on_message(cl: paho.Client, _u: Any, msg: paho.MQTTMessage) -> None:
            if done.done() or not msg.payload:
                return
            try:
                if msg.topic == mtopic:
                    if state["manifest"] is not None:
                        return
                    m = verify_manifest(bytes(msg.payload), self.w.public_keys, ref.digest)
                    if (m.name, m.version, m.task) != (ref.name, ref.version, ref.task):
                        raise ModelRejected("malformed", "manifest names another release")
                    check_newer(m.version, self.highest.get(m.name))
                    state["manifest"] = m
                    cl.subscribe([(topics.chunks_filter(ref.name, ref.version), SubscribeOptions(qos=1))])
                    return
                m = state["manifest"]
                idx_s = msg.topic.removeprefix(prefix)
                if m is None or not msg.topic.startswith(prefix) or not idx_s.isdigit():
                    return
                idx = int(idx_s)
                if idx >= len(m.archive.chunks) or idx in state["chunks"]:
                    return
                if (
                    len(msg.payload) != m.archive.chunk_length(idx)
                    or hashlib.sha256(msg.payload).hexdigest() != m.archive.chunks[idx]
                ):
                    raise ModelRejected("file_hash_mismatch", f"chunk {idx} does not match its signed sha256")
                state["chunks"][idx] = msg.payload
                if len(state["chunks"]) == len(m.archive.chunks):
                    archive = b"".join(state["chunks"][i] for i in range(len(m.archive.chunks)))
                    if hashlib.sha256(archive).hexdigest() != m.archive.sha256:
                        raise ModelRejected("file_hash_mismatch", "archive does not match its signed sha256")
                    off = 0
                    for f in m.files:  # concat-v1: each file's bytes in manifest order
                        if hashlib.sha256(archive[off : off + f.size]).hexdigest() != f.sha256:
                            raise ModelRejected("file_hash_mismatch", f"{f.name} does not match its sha256")
                        off += f.size
                    done.set_result(archive)
            except ModelRejected as exc:
                fail(exc)

        c.on_connect = on_connect
        c.on_message = on_message
        c.on_disconnect = lambda *_a: fail(ConnectionError("transfer connection lost"))
        try:
            c.connect(
                self.cfg.host,
                self.cfg.port,
                keepalive=30,
                clean_start=True,
                properties=_props(SessionExpiryInterval=0),
            )
            self.w.transfers.add(c)
            async with asyncio.timeout(timeout_s):
                return await done
        finally:
            self.w.transfers.discard(c)
            c.on_disconnect = None
            with contextlib.suppress(Exception):
                c.disconnect()
                c.loop_write()
            sock = c.socket()
            if sock is not None:
                with contextlib.suppress(Exception):
                    loop.remove_reader(sock.fileno())
                    loop.remove_writer(sock.fileno())
                    sock.close()


