"""Replay real datasets (SKAB, NAB, SNIPS) as device traffic over MQTT.

Devices are deliberately simple: one raw paho-mqtt 2.x connection (MQTT 5) per
replay process publishes for many device ids, not the edge agent's client. What
matters for the demo and the benchmarks is that every message the replay
reports as sent has really been acknowledged by the broker, so:

* QoS 1 with a bounded window of unacknowledged messages: paho keys them by a
  16-bit packet id, and past 65,535 outstanding ids collide and messages vanish.
* A persistent session (``clean_start=False``) and paho's own retransmission:
  after a broker restart paho re-sends every message still unacknowledged in
  its outbox (with DUP set), so nothing is re-sent by hand. Duplicates on the
  device->agent hop are possible (a PUBACK lost in the restart) and accepted.
* At the end the replay waits for the last PUBACK, with a deadline and an error
  naming how many messages are still open.

:func:`iter_messages` yields the exact payloads without MQTT, so benchmarks and
tests measure the same bytes the replay sends.
"""

from __future__ import annotations

import argparse
import heapq
import json
import math
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from edge_agent.protocol.messages import DEFAULT_MAX_PAYLOAD
from edge_agent.protocol.topics import ID_PATTERN, device_chat_in, device_telemetry

__all__ = [
    "SOURCES",
    "BackgroundReplay",
    "ReplayConfig",
    "ReplayError",
    "ReplayResult",
    "ReplayTimeout",
    "iter_messages",
    "main",
    "parse_shard",
    "raw_reading_bytes",
    "replay",
    "sanitize_id",
    "select_devices",
]

Source = Literal["skab", "nab", "snips"]
SOURCES: tuple[Source, ...] = ("skab", "nab", "snips")
MAX_BATCH = 10_000  # TelemetryBatch.readings max_length
_DEFAULT_PREFIX = {"skab": "skab", "nab": "nab", "snips": "chat"}
_DEFAULT_CHAT_DEVICES = 4


class ReplayError(RuntimeError):
    """The replay could not connect, or the broker refused messages."""


class ReplayTimeout(ReplayError, TimeoutError):
    """Messages were still unacknowledged when the deadline passed."""


@dataclass(frozen=True)
class ReplayConfig:
    broker: str = "127.0.0.1:1883"
    # Data seconds per wall second (600 = 10 min of data per second); 0 = as fast as possible.
    speedup: float = 600.0
    batch: int = 1  # readings per telemetry message; 1 sends single-reading payloads
    limit: int | None = None  # rows (chat: messages) per device
    devices: int | Sequence[str] | None = None  # first N devices, or explicit ids
    device_prefix: str | None = None  # default: skab / nab / chat
    rebase_time: bool = True  # shift event time so each device's first row is "now"
    shard: tuple[int, int] = (0, 1)  # (i, n): publish only devices with index k % n == i
    root: str | Path | None = None  # dataset root (else EDGELOOP_DATA, else ../shared/datasets)
    turns: int = 3  # SNIPS: utterances per chat session
    chat_interval: float = 5.0  # SNIPS: data seconds between two turns of one device
    qos: int = 1
    max_outstanding: int = 1_000  # our window: unacknowledged messages (queued + in flight)
    max_inflight: int = 100  # paho's own in-flight limit (keep <= broker Receive Maximum)
    client_id: str | None = None
    session_expiry: int = 300  # seconds the broker keeps our session across a disconnect
    connect_timeout: float = 10.0
    ack_timeout: float = 60.0  # how long the final drain (and a stalled window) may wait
    progress_every: float | None = None  # seconds between progress lines on stderr; None = quiet
    start_time: float | None = None  # wall time for rebasing; None = time.time() at start

    def __post_init__(self) -> None:
        if not 1 <= self.batch <= MAX_BATCH:
            raise ValueError(f"batch must be in 1..{MAX_BATCH}, got {self.batch}")
        if self.speedup < 0 or not math.isfinite(self.speedup):
            raise ValueError(f"speedup must be a finite number >= 0, got {self.speedup}")
        i, n = self.shard
        if n < 1 or not 0 <= i < n:
            raise ValueError(f"shard must be i/n with 0 <= i < n, got {i}/{n}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit must be >= 1, got {self.limit}")
        if not 1 <= self.max_outstanding <= 60_000:
            raise ValueError("max_outstanding must be in 1..60000 (16-bit packet ids)")
        if self.qos not in (0, 1, 2):
            raise ValueError(f"qos must be 0, 1 or 2, got {self.qos}")
        if self.turns < 1:
            raise ValueError("turns must be >= 1")

    @property
    def host_port(self) -> tuple[str, int]:
        host, sep, port = self.broker.rpartition(":")
        if not sep:
            return self.broker, 1883
        return host.strip("[]") or "127.0.0.1", int(port)


@dataclass
class ReplayResult:
    devices: int
    messages: int
    readings: int
    raw_json_bytes: int  # cost of forwarding every reading alone as {"device","metric","ts","value"}
    seconds: float
    payload_bytes: int = 0  # what the replay actually published (payload bytes only)
    rejected: int = 0  # PUBACKs with a failure reason code (e.g. 135 not authorized)
    reconnects: int = 0
    device_ids: list[str] = field(default_factory=list)

    @property
    def messages_per_second(self) -> float:
        return self.messages / self.seconds if self.seconds > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["messages_per_second"] = round(self.messages_per_second, 1)
        out["readings_per_second"] = round(self.readings / self.seconds, 1) if self.seconds > 0 else 0.0
        out["seconds"] = round(self.seconds, 3)
        return out


# --------------------------------------------------------------------------- device selection

_BAD_ID_CHARS = re.compile(r"[^A-Za-z0-9_.\-]+")


def sanitize_id(text: str) -> str:
    """Map any name onto the topic id pattern (no '/', '+', '#', spaces; max 64 chars)."""
    s = _BAD_ID_CHARS.sub("-", text).strip("-_.") or "device"
    if not s[0].isalnum():
        s = "d" + s
    s = s[:64]
    assert ID_PATTERN.match(s), s
    return s


def parse_shard(text: str) -> tuple[int, int]:
    try:
        i, n = (int(p) for p in text.split("/", 1))
    except ValueError:
        raise ValueError(f"shard must look like i/n (e.g. 0/3), got {text!r}") from None
    if n < 1 or not 0 <= i < n:
        raise ValueError(f"shard must satisfy 0 <= i < n, got {text!r}")
    return i, n


@dataclass(frozen=True)
class _Device:
    id: str
    ref: Any  # SkabExperiment | NAB series name | int (chat device index)


def _all_devices(source: Source, cfg: ReplayConfig) -> list[_Device]:
    prefix = cfg.device_prefix if cfg.device_prefix is not None else _DEFAULT_PREFIX[source]

    def name(*parts: str) -> str:
        return sanitize_id("-".join(p for p in (prefix, *parts) if p))

    if source == "skab":
        from cloud_controller.datasets.skab import list_experiments

        return [
            _Device(name(e.group) if e.name == e.group else name(e.group, e.name), e)
            for e in list_experiments(cfg.root)
        ]
    if source == "nab":
        from cloud_controller.datasets.nab import list_series

        return [_Device(name(s), s) for s in list_series(cfg.root)]
    if source == "snips":
        count = cfg.devices if isinstance(cfg.devices, int) else _DEFAULT_CHAT_DEVICES
        if isinstance(cfg.devices, Sequence) and not isinstance(cfg.devices, str):
            count = max(count, len(cfg.devices))
        return [_Device(name(str(k)), k) for k in range(count)]
    raise ValueError(f"unknown source {source!r}; expected one of {SOURCES}")


def select_devices(source: Source, cfg: ReplayConfig) -> list[str]:
    """Device ids this process publishes for: --devices selection first, then --shard."""
    return [d.id for d in _selected(source, cfg)]


def _selected(source: Source, cfg: ReplayConfig) -> list[_Device]:
    devices = _all_devices(source, cfg)
    if isinstance(cfg.devices, int):
        devices = devices[: cfg.devices]
    elif cfg.devices is not None:
        wanted = list(cfg.devices)
        by_id = {d.id: d for d in devices}
        unknown = [w for w in wanted if w not in by_id]
        if unknown:
            raise ValueError(f"unknown {source} devices {unknown}; known: {sorted(by_id)}")
        devices = [by_id[w] for w in wanted]
    i, n = cfg.shard
    return [d for k, d in enumerate(devices) if k % n == i]


# --------------------------------------------------------------------------- payloads

# len('{"device":"","metric":"","ts":,"value":}'): json.dumps(compact) of one bare reading.
_RAW_OVERHEAD = len(json.dumps({"device": "", "metric": "", "ts": 0, "value": 0}, separators=(",", ":"))) - 2


def raw_reading_bytes(device: str, metric: str, ts: float, value: float) -> int:
    """Size of ``{"device":..,"metric":..,"ts":..,"value":..}`` (compact JSON) without building it."""
    return _RAW_OVERHEAD + len(device) + len(metric) + len(repr(ts)) + len(repr(value))


@dataclass
class _Msg:
    offset: float  # data seconds since the device's first row: drives pacing
    topic: str
    payload: bytes
    readings: int
    raw_bytes: int


def _rows_skab(ref: Any) -> tuple[list[str], Iterator[tuple[float, list[float]]]]:
    from cloud_controller.datasets.skab import load_experiment

    data = load_experiment(ref)
    return data.columns, zip(data.timestamps.tolist(), data.values.tolist(), strict=True)


def _rows_nab(ref: Any, root: str | Path | None) -> tuple[list[str], Iterator[tuple[float, list[float]]]]:
    from cloud_controller.datasets.nab import load_series

    series = load_series(ref, root)
    return ["value"], zip(series.timestamps.tolist(), ([v] for v in series.values.tolist()), strict=True)


def _telemetry_stream(device: _Device, source: Source, cfg: ReplayConfig, start: float) -> Iterator[_Msg]:
    columns, rows = _rows_skab(device.ref) if source == "skab" else _rows_nab(device.ref, cfg.root)
    topic = device_telemetry(device.id)
    dev_len = len(device.id)
    metric_len = [len(c) for c in columns]
    t0: float | None = None
    pending: list[dict[str, Any]] = []
    pending_readings = pending_raw = 0
    last_offset = 0.0
    for n, (ts, values) in enumerate(rows):
        if cfg.limit is not None and n >= cfg.limit:
            break
        if t0 is None:
            t0 = ts
        offset = ts - t0
        event_ts = round(start + offset if cfg.rebase_time else ts, 3)
        if event_ts < 0:
            continue
        vals: dict[str, float] = {}
        raw = 0
        ts_len = len(repr(event_ts))
        for col, mlen, v in zip(columns, metric_len, values, strict=True):
            if math.isfinite(v):  # the edge rejects NaN/Inf at the door; do not send junk
                vals[col] = v
                raw += _RAW_OVERHEAD + dev_len + mlen + ts_len + len(repr(v))
        if not vals:
            continue
        pending.append({"ts": event_ts, "values": vals})
        pending_readings += len(vals)
        pending_raw += raw
        last_offset = max(last_offset, offset)
        if len(pending) >= cfg.batch:
            yield _encode(topic, pending, pending_readings, pending_raw, last_offset, cfg.batch)
            pending, pending_readings, pending_raw = [], 0, 0
    if pending:
        yield _encode(topic, pending, pending_readings, pending_raw, last_offset, cfg.batch)


def _encode(
    topic: str, rows: list[dict[str, Any]], readings: int, raw: int, offset: float, batch: int
) -> _Msg:
    body = rows[0] if batch == 1 else {"readings": rows}
    payload = json.dumps(body, separators=(",", ":")).encode()
    if len(payload) > DEFAULT_MAX_PAYLOAD:
        raise ValueError(
            f"a batch of {len(rows)} readings is {len(payload)} bytes, over the edge limit of "
            f"{DEFAULT_MAX_PAYLOAD}; use a smaller --batch"
        )
    return _Msg(offset, topic, payload, readings, raw)


def _chat_streams(
    devices: list[_Device], all_count: int, cfg: ReplayConfig, start: float
) -> list[Iterator[_Msg]]:
    """SNIPS test utterances, cut into sessions of ``turns`` turns, dealt round-robin over all devices.

    Sessions are dealt over the full device list (before sharding) so that a
    session always belongs to the same device whatever the shard count.
    """
    from cloud_controller.datasets.snips import load_snips

    texts = [ex.text for ex in load_snips("test", cfg.root)]
    sessions = [texts[i : i + cfg.turns] for i in range(0, len(texts), cfg.turns)]
    per_device: dict[int, list[tuple[int, list[str]]]] = {d.ref: [] for d in devices}
    for s_idx, turns in enumerate(sessions):
        owner = s_idx % all_count
        if owner in per_device:
            per_device[owner].append((s_idx, turns))

    def stream(device: _Device) -> Iterator[_Msg]:
        topic = device_chat_in(device.id)
        k = 0
        for s_idx, turns in per_device[device.ref]:
            session_id = sanitize_id(f"{device.id}-s{s_idx:04d}")
            for seq, text in enumerate(turns):
                if cfg.limit is not None and k >= cfg.limit:
                    return
                offset = k * cfg.chat_interval
                body = {
                    "session_id": session_id,
                    "msg_id": f"{session_id}-{seq}",
                    "text": text,
                    "ts": round(start + offset, 3),
                    "seq": seq,
                }
                yield _Msg(offset, topic, json.dumps(body, separators=(",", ":")).encode(), 1, 0)
                k += 1

    return [stream(d) for d in devices]


def _scheduled(source: Source, cfg: ReplayConfig, start: float) -> tuple[list[str], Iterator[_Msg]]:
    devices = _selected(source, cfg)
    if source == "snips":
        streams = _chat_streams(devices, len(_all_devices(source, cfg)), cfg, start)
    else:
        streams = [_telemetry_stream(d, source, cfg, start) for d in devices]
    # Interleave devices by data time, as concurrent devices would produce it.
    return [d.id for d in devices], heapq.merge(*streams, key=lambda m: m.offset)


def iter_messages(source: Source, cfg: ReplayConfig | None = None) -> Iterator[tuple[str, bytes, int]]:
    """Yield ``(topic, payload, readings_count)`` in replay order, without any MQTT."""
    cfg = cfg or ReplayConfig()
    start = cfg.start_time if cfg.start_time is not None else time.time()
    _, msgs = _scheduled(source, cfg, start)
    for m in msgs:
        yield m.topic, m.payload, m.readings


# --------------------------------------------------------------------------- MQTT publisher


class _Publisher:
    """One paho connection with a bounded window of unacknowledged QoS 1 messages."""

    def __init__(self, cfg: ReplayConfig, client_id: str) -> None:
        self.cfg = cfg
        self.client_id = client_id
        self.cond = threading.Condition()
        self.sent = 0
        self.acked = 0
        self.rejected = 0
        self.reject_reasons: dict[str, int] = {}
        self.connects = 0
        self.connected = False
        self.connect_error: str | None = None
        self.client: mqtt.Client | None = None

    # callbacks run on paho's network thread
    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, rc: ReasonCode, props: Any) -> None:
        with self.cond:
            if rc.is_failure:
                self.connect_error = f"broker refused connection: {rc}"
            else:
                self.connects += 1
                self.connected = True
            self.cond.notify_all()

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, rc: ReasonCode, props: Any
    ) -> None:
        with self.cond:
            self.connected = False
            self.cond.notify_all()

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, rc: ReasonCode, props: Any) -> None:
        if self.cfg.qos == 0:
            return  # counted when handed to paho: a QoS 0 message is never acknowledged
        with self.cond:
            self.acked += 1
            if rc.is_failure:
                self.rejected += 1
                self.reject_reasons[str(rc)] = self.reject_reasons.get(str(rc), 0) + 1
            self.cond.notify_all()

    def start(self) -> None:
        host, port = self.cfg.host_port
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=mqtt.MQTTv5)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.max_inflight_messages_set(self.cfg.max_inflight)
        # Our own window bounds the outbox; paho's queue limit must not drop anything below it.
        client.max_queued_messages_set(0)
        client.reconnect_delay_set(min_delay=1, max_delay=2)
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = self.cfg.session_expiry
        self.client = client
        client.connect_async(host, port, keepalive=30, clean_start=False, properties=props)
        client.loop_start()
        deadline = time.monotonic() + self.cfg.connect_timeout
        with self.cond:
            while not self.connected and self.connect_error is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    self.stop()
                    raise ReplayError(
                        f"could not connect to MQTT broker {host}:{port} in {self.cfg.connect_timeout}s"
                    )
                self.cond.wait(left)
            if self.connect_error:
                err = self.connect_error
                self.stop()
                raise ReplayError(f"{host}:{port}: {err}")

    def publish(self, topic: str, payload: bytes) -> None:
        assert self.client is not None
        with self.cond:
            self._wait_until(lambda: self.sent - self.acked < self.cfg.max_outstanding, "window to open")
            self.sent += 1
        info = self.client.publish(topic, payload, qos=self.cfg.qos)
        # While disconnected paho keeps QoS>0 messages queued (rc NO_CONN) and sends them
        # after the reconnect; anything else is a real error.
        if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
            raise ReplayError(f"publish to {topic} failed: {mqtt.error_string(info.rc)}")
        if self.cfg.qos == 0:
            with self.cond:
                self.acked += 1

    def _wait_until(self, predicate: Callable[[], bool], what: str) -> None:
        """Wait on the condition (held by the caller); the deadline restarts whenever an ack arrives."""
        last_acked, deadline = self.acked, time.monotonic() + self.cfg.ack_timeout
        while not predicate():
            if self.acked != last_acked:
                last_acked, deadline = self.acked, time.monotonic() + self.cfg.ack_timeout
            left = deadline - time.monotonic()
            if left <= 0:
                raise ReplayTimeout(
                    f"waited {self.cfg.ack_timeout}s for the {what}: {self.sent - self.acked} of "
                    f"{self.sent} messages unacknowledged by {self.cfg.broker} "
                    f"({'connected' if self.connected else 'disconnected'})"
                )
            self.cond.wait(min(left, 1.0))

    def drain(self) -> None:
        with self.cond:
            self._wait_until(lambda: self.acked >= self.sent, "last PUBACK")

    def stop(self) -> None:
        if self.client is not None:
            self.client.disconnect()
            self.client.loop_stop()


def replay(
    source: Source, cfg: ReplayConfig | None = None, *, stop: threading.Event | None = None
) -> ReplayResult:
    """Publish ``source`` as device traffic and return once the broker acknowledged every message.

    ``stop`` ends the replay early (still draining what was sent). Raises
    :class:`ReplayTimeout` if acknowledgements stall for ``ack_timeout`` seconds.
    """
    cfg = cfg or ReplayConfig()
    if source not in SOURCES:
        raise ValueError(f"unknown source {source!r}; expected one of {SOURCES}")
    start_wall = cfg.start_time if cfg.start_time is not None else time.time()
    device_ids, msgs = _scheduled(source, cfg, start_wall)
    i, n = cfg.shard
    client_id = cfg.client_id or f"replay-{source}-{i}of{n}-{os.getpid()}"
    pub = _Publisher(cfg, client_id)
    result = ReplayResult(
        devices=len(device_ids), messages=0, readings=0, raw_json_bytes=0, seconds=0.0, device_ids=device_ids
    )
    pub.start()
    t0 = time.monotonic()
    next_progress = t0 + cfg.progress_every if cfg.progress_every else math.inf
    try:
        for m in msgs:
            if stop is not None and stop.is_set():
                break
            if cfg.speedup > 0:
                delay = t0 + m.offset / cfg.speedup - time.monotonic()
                if delay > 0:
                    # Pacing to the data's own clock; a stop request cuts the wait short.
                    if stop is not None:
                        stop.wait(delay)
                    else:
                        time.sleep(delay)
            pub.publish(m.topic, m.payload)
            result.messages += 1
            result.readings += m.readings
            result.raw_json_bytes += m.raw_bytes
            result.payload_bytes += len(m.payload)
            now = time.monotonic()
            if now >= next_progress:
                _progress(result, pub, now - t0)
                next_progress = now + (cfg.progress_every or math.inf)
        pub.drain()
    finally:
        pub.stop()
    result.seconds = time.monotonic() - t0
    result.rejected = pub.rejected
    result.reconnects = max(0, pub.connects - 1)
    if pub.rejected:
        reasons = ", ".join(f"{k}: {v}" for k, v in sorted(pub.reject_reasons.items()))
        print(f"replay: broker rejected {pub.rejected} messages ({reasons})", file=sys.stderr)
    return result


class BackgroundReplay:
    """:func:`replay` in a thread, its result and its failure handed to the caller's thread.

    Tests, the fault soak and the demo drive faults or chat while devices
    publish; each used to wrap the same thread, result list and error list.
    ``result`` joins and re-raises what the replay raised; ``check`` re-raises
    early (e.g. inside a polling loop); ``stop`` ends it early, still draining.
    """

    def __init__(self, source: Source, cfg: ReplayConfig, *, name: str | None = None) -> None:
        self.source, self.cfg = source, cfg
        self._stop = threading.Event()
        self._result: ReplayResult | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=name or f"replay-{source}", daemon=True)

    def _run(self) -> None:
        try:
            self._result = replay(self.source, self.cfg, stop=self._stop)
        except BaseException as exc:  # surfaced in the caller's thread
            self._error = exc

    def start(self) -> BackgroundReplay:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def check(self) -> None:
        """Raise what the replay raised, if it has failed already."""
        if self._error is not None:
            raise self._error

    def result(self, timeout: float | None = None) -> ReplayResult:
        """Wait up to ``timeout``; the replay's result, its exception, or :class:`TimeoutError`."""
        self._thread.join(timeout)
        self.check()
        if self._result is None:
            raise TimeoutError(f"the {self.source} replay did not finish in {timeout} s")
        return self._result


def _progress(result: ReplayResult, pub: _Publisher, elapsed: float) -> None:
    rate = result.messages / elapsed if elapsed > 0 else 0.0
    print(
        f"replay: {elapsed:7.1f}s {result.messages} msgs {result.readings} readings "
        f"{rate:.0f} msg/s unacked={pub.sent - pub.acked} reconnects={max(0, pub.connects - 1)}",
        file=sys.stderr,
        flush=True,
    )


# --------------------------------------------------------------------------- CLI


def _parse_devices(text: str | None) -> int | list[str] | None:
    if text is None:
        return None
    if text.isdigit():
        return int(text)
    return [d.strip() for d in text.split(",") if d.strip()]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="edgeloop-replay",
        description="Replay SKAB / NAB / SNIPS as MQTT device traffic; prints a JSON summary on stdout.",
    )
    p.add_argument("source", choices=SOURCES)
    p.add_argument("--broker", default="127.0.0.1:1883", help="host:port (default %(default)s)")
    p.add_argument(
        "--speedup",
        type=float,
        default=600.0,
        help="data seconds per wall second; 0 = as fast as possible (default %(default)s)",
    )
    p.add_argument("--batch", type=int, default=1, help="readings per message (default 1: single readings)")
    p.add_argument("--limit", type=int, default=None, help="rows (chat: messages) per device")
    p.add_argument("--devices", default=None, help="a count (first N devices) or comma-separated device ids")
    p.add_argument("--device-prefix", default=None, help="device id prefix (default: skab / nab / chat)")
    p.add_argument(
        "--rebase-time",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="shift event time so the replay starts now (default on)",
    )
    p.add_argument("--shard", default="0/1", help="i/n: publish only devices k with k %% n == i")
    p.add_argument("--turns", type=int, default=3, help="SNIPS: turns per chat session")
    p.add_argument("--qos", type=int, default=1, choices=(0, 1, 2))
    p.add_argument("--max-outstanding", type=int, default=1000, help="unacknowledged message window")
    p.add_argument("--client-id", default=None)
    p.add_argument("--ack-timeout", type=float, default=60.0)
    p.add_argument("--progress", type=float, default=2.0, help="seconds between progress lines (0 = off)")
    p.add_argument("--list-devices", action="store_true", help="print the selected device ids and exit")
    return p


def config_from_args(args: argparse.Namespace) -> ReplayConfig:
    return ReplayConfig(
        broker=args.broker,
        speedup=args.speedup,
        batch=args.batch,
        limit=args.limit,
        devices=_parse_devices(args.devices),
        device_prefix=args.device_prefix,
        rebase_time=args.rebase_time,
        shard=parse_shard(args.shard),
        turns=args.turns,
        qos=args.qos,
        max_outstanding=args.max_outstanding,
        client_id=args.client_id,
        ack_timeout=args.ack_timeout,
        progress_every=args.progress or None,
    )


def main(argv: Iterable[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(list(argv) if argv is not None else None)
    try:
        cfg = config_from_args(args)
        if args.list_devices:
            print(json.dumps(select_devices(args.source, cfg)))
            return 0
        result = replay(args.source, cfg)
    except (ValueError, FileNotFoundError) as exc:
        print(f"edgeloop-replay: {exc}", file=sys.stderr)
        return 2
    except ReplayError as exc:
        print(f"edgeloop-replay: {exc}", file=sys.stderr)
        return 1
    print(json.dumps({"source": args.source, "shard": args.shard, **result.to_json()}))
    return 1 if result.rejected else 0


if __name__ == "__main__":
    sys.exit(main())
