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
import json
import math
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from edgeloop_sim.replay_config import SOURCES, ReplayConfig, ReplayError, ReplayResult, ReplayTimeout, Source
from edgeloop_sim.replay_streams import parse_shard, scheduled_messages, select_devices

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
    device_ids, msgs = scheduled_messages(source, cfg, start_wall)
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
