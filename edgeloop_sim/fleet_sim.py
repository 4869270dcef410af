"""Light simulated nodes for fleet benchmarks: many real MQTT clients, no agent inside.

Why not full agents: 1,000 agents (SQLite outbox, pipelines, ONNX) would measure
the simulator, not the controller. A simulated node keeps only what the
controller can observe on the wire, with the real payloads and identities:

* its own MQTT 5 client id ``edge-agent-{node}`` (ACLs and sessions are per node),
  a persistent session and an offline last will, like the agent;
* a retained :class:`wire.Status` (one :class:`wire.ModelStatus` per task) every
  ``status_interval_s`` and at once when it applied a desired state;
* :class:`wire.SummaryBatch` payloads (zlib JSON via ``wire.encode_summary``,
  unique ids, increasing ``seq``, QoS 1) at ``rate`` per node per second;
* its ``desired`` topic: a new model release is fetched like a real node does it
  (dedicated short-lived clean-start connection ``{client}-models-{task}``,
  retained manifest, its digest against ``ModelRef.digest``, the Ed25519
  signature against the pinned key, replay check, every chunk's length and
  sha256, then the whole archive and every file). Chunks stay in memory and the
  ONNX model is neither unpacked to disk nor loaded: that is edge cost, not
  controller cost. Then the node reports the new version active.

Scale: one asyncio loop per worker process drives its paho clients through
paho's socket callbacks (no thread per client); the parent spreads the nodes
over ``workers`` processes and talks to them over pipes (``FleetSim``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import multiprocessing as mp
import random
import socket
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from edge_agent.protocol import messages as wire
from edge_agent.protocol import topics
from edge_agent.protocol.errors import ModelRejected
from edge_agent.protocol.manifest import check_newer, key_id, load_public_key, verify_manifest

log = logging.getLogger(__name__)

__all__ = ["FleetSim", "SimConfig", "WorkerStats", "node_names"]


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


class SimNode:
    def __init__(self, name: str, cfg: SimConfig, worker: Worker) -> None:
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


# --------------------------------------------------------------------------- one worker process


def _template(cfg: SimConfig) -> wire.SummaryBatch:
    now = time.time()
    windows = [
        wire.WindowSummary(
            device=f"dev-{i}",
            metric="temperature",
            start=now - 10,
            end=now,
            count=10,
            min=20.0 + i,
            max=22.5 + i,
            mean=21.1 + i,
            std=0.4,
            first=20.2 + i,
            last=21.9 + i,
            slope=0.01,
            anomaly_score=0.05,
        )
        for i in range(cfg.windows_per_summary)
    ]
    return wire.SummaryBatch(id="template0", node="template", seq=0, created=now, windows=windows)


class Worker:
    def __init__(self, names: list[str], cfg: SimConfig, conn: Connection) -> None:
        self.names = names
        self.cfg = cfg
        self.conn = conn
        self.stats = WorkerStats(nodes=len(names))
        self.template = _template(cfg)
        self.public_keys: dict[str, bytes] = {}
        if cfg.public_key_pem:
            raw = load_public_key(cfg.public_key_pem)
            self.public_keys[key_id(raw)] = raw
        self.rate = cfg.rate
        self.stopping = False
        self.transfers: set[paho.Client] = set()
        self.fetch_tasks: set[asyncio.Task[None]] = set()
        self.loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]
        self.nodes: list[SimNode] = []
        self._stop = asyncio.Event()
        self._backlog: int = 0

    async def run(self) -> None:
        self.loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self.loop.add_reader(self.conn.fileno(), self._command)
        self.nodes = [SimNode(n, self.cfg, self) for n in self.names]
        tasks = [
            asyncio.create_task(self._connect_all(), name="sim-connect"),
            asyncio.create_task(self._misc(), name="sim-misc"),
            asyncio.create_task(self._summaries(), name="sim-summaries"),
            asyncio.create_task(self._statuses(), name="sim-statuses"),
        ]
        await self._stop.wait()
        self.stopping = True
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for n in self.nodes:
            with contextlib.suppress(Exception):
                n.client.disconnect()
                n.client.loop_write()
        await asyncio.sleep(0)  # the DISCONNECT packets go out before the process exits
        self.loop.remove_reader(self.conn.fileno())

    def _command(self) -> None:
        try:
            cmd, arg = self.conn.recv()
        except (EOFError, OSError):
            self._stop.set()
            return
        if cmd == "stats":
            self.stats.versions = {}
            for n in self.nodes:
                key = f"{n.model[0]}@{n.model[1]}"
                self.stats.versions[key] = self.stats.versions.get(key, 0) + 1
            self.stats.backlog_done = self._backlog == 0 and all(not n.inflight for n in self.nodes)
            self.conn.send(asdict(self.stats))
        elif cmd == "rate":
            self.rate = float(arg)
            self.conn.send(True)
        elif cmd == "backlog":
            # ``arg`` summaries per node as fast as in-flight bounds allow (queued by the broker).
            self._backlog = int(arg) * len(self.nodes)
            self.conn.send(True)
        elif cmd == "stop":
            self.conn.send(True)
            self._stop.set()

    async def _connect_all(self) -> None:
        delay = self.cfg.connect_spread_s / max(1, len(self.nodes))
        for i, n in enumerate(self.nodes):
            n.connect()
            if delay:
                await asyncio.sleep(delay)
            elif i % 20 == 19:
                await asyncio.sleep(0.01)  # let CONNACKs in: a connect storm the loop can digest

    async def _misc(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            for n in self.nodes:
                n.client.loop_misc()
            for c in list(self.transfers):
                c.loop_misc()

    async def _summaries(self) -> None:
        """Smooth offered load: every tick, credit ``rate x nodes x dt`` publishes, nodes round-robin."""
        tick = 0.02
        credit = 0.0
        i = 0
        last = time.monotonic()
        n_nodes = len(self.nodes)
        while True:
            await asyncio.sleep(tick)
            now = time.monotonic()
            dt, last = now - last, now
            if self._backlog > 0:
                sent = 0
                for _ in range(n_nodes):
                    node = self.nodes[i % n_nodes]
                    i += 1
                    if self._backlog > 0 and node.publish_summary():
                        self._backlog -= 1
                        sent += 1
                continue
            credit = min(credit + self.rate * n_nodes * dt, float(n_nodes))
            k = int(credit)
            credit -= k
            for _ in range(k):
                self.nodes[i % n_nodes].publish_summary()
                i += 1

    async def _statuses(self) -> None:
        """Each node's heartbeat status every ``status_interval_s``, phases spread over the interval."""
        interval = self.cfg.status_interval_s
        n_nodes = len(self.nodes)
        tick = 0.1
        per_tick = n_nodes * tick / interval
        credit = 0.0
        i = 0
        while True:
            await asyncio.sleep(tick)
            credit += per_tick
            k = int(credit)
            credit -= k
            for _ in range(k):
                self.nodes[i % n_nodes].publish_status()
                i += 1


def _worker_main(names: list[str], cfg: SimConfig, conn: Connection, log_level: str) -> None:
    logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)s fleet-sim %(message)s")
    asyncio.run(Worker(names, cfg, conn).run())


# --------------------------------------------------------------------------- parent side


class FleetSim:
    """``workers`` processes with ``len(names)/workers`` nodes each; start(), command, stop()."""

    def __init__(
        self, names: list[str], cfg: SimConfig, workers: int = 4, log_level: str = "WARNING"
    ) -> None:
        self.names = names
        self.cfg = cfg
        self.workers = max(1, min(workers, len(names)))
        self.log_level = log_level
        self._procs: list[mp.process.BaseProcess] = []
        self._conns: list[Connection] = []

    def start(self) -> None:
        ctx = mp.get_context("spawn")  # no inherited event loops, sockets or threads
        for k in range(self.workers):
            part = self.names[k :: self.workers]
            parent, child = ctx.Pipe()
            p = ctx.Process(
                target=_worker_main,
                args=(part, self.cfg, child, self.log_level),
                name=f"fleet-sim-{k}",
                daemon=True,
            )
            p.start()
            child.close()
            self._procs.append(p)
            self._conns.append(parent)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self._procs if p.pid is not None]

    def _all(self, cmd: str, arg: Any = None, timeout: float = 30.0) -> list[Any]:
        for c in self._conns:
            c.send((cmd, arg))
        out = []
        for c in self._conns:
            if not c.poll(timeout):
                raise TimeoutError(f"fleet-sim worker did not answer {cmd!r} in {timeout}s")
            out.append(c.recv())
        return out

    def stats(self) -> dict[str, Any]:
        """Sum of the workers' counters (fetch times concatenated, version counts merged)."""
        total: dict[str, Any] = {}
        for s in self._all("stats"):
            for k, v in s.items():
                if isinstance(v, bool):
                    total[k] = total.get(k, True) and v
                elif isinstance(v, int | float):
                    total[k] = total.get(k, 0) + v
                elif isinstance(v, list):
                    total.setdefault(k, []).extend(v)
                elif isinstance(v, dict):
                    d = total.setdefault(k, {})
                    for kk, vv in v.items():
                        d[kk] = d.get(kk, 0) + vv
        return total

    def set_rate(self, rate: float) -> None:
        self._all("rate", rate)

    def backlog(self, per_node: int) -> None:
        self._all("backlog", per_node)

    def wait(
        self, pred: Callable[[dict[str, Any]], bool], timeout: float, poll_s: float = 0.5
    ) -> dict[str, Any]:
        """Poll the workers' counters until ``pred`` holds (a deadline, not a guessed sleep)."""
        deadline = time.monotonic() + timeout
        while True:
            s = self.stats()
            if pred(s):
                return s
            if time.monotonic() > deadline:
                raise TimeoutError(f"fleet-sim: condition not met in {timeout}s; last stats {s}")
            time.sleep(poll_s)

    def stop(self, timeout: float = 10.0) -> None:
        with contextlib.suppress(Exception):
            self._all("stop", timeout=timeout)
        for p in self._procs:
            p.join(timeout)
            if p.is_alive():
                p.kill()
                p.join()
        self._procs.clear()
        self._conns.clear()

    def __enter__(self) -> FleetSim:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def public_key_pem(path: str | Path) -> bytes:
    return Path(path).read_bytes()
