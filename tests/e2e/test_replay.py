"""Replay: payloads against the wire contract, and real publishing through a real mosquitto."""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from cloud_controller.datasets import data_root
from edge_agent.protocol.messages import parse_chat_in, parse_telemetry
from edge_agent.protocol.topics import ID_PATTERN, parse_device_topic
from edgeloop_sim.broker import Broker, free_port
from edgeloop_sim.replay import main, replay
from edgeloop_sim.replay_config import ReplayConfig, ReplayError
from edgeloop_sim.replay_streams import iter_messages, raw_reading_bytes, sanitize_id, select_devices

START = 1_800_000_000.0  # fixed replay start: payloads are then deterministic


# --------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def replay_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    broker = Broker(tmp_path_factory.mktemp("replay-broker"))
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


class Subscriber:
    """A raw paho subscriber with a persistent session that records every delivery."""

    def __init__(self, host: str, port: int, client_id: str, topic: str = "devices/#") -> None:
        self.messages: list[tuple[str, bytes]] = []
        self.cond = threading.Condition()
        self.subscribed = threading.Event()
        self.topic = topic
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *a: self.subscribed.set()
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(1, 2)
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 300
        self.client.connect(host, port, clean_start=False, properties=props)
        self.client.loop_start()
        assert self.subscribed.wait(5), "subscription not acknowledged"

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        if not flags.session_present:
            client.subscribe(self.topic, qos=1)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        with self.cond:
            self.messages.append((msg.topic, bytes(msg.payload)))
            self.cond.notify_all()

    def wait_distinct(self, expected: Counter[tuple[str, bytes]], timeout: float = 10.0) -> None:
        with self.cond:
            self.cond.wait_for(lambda: set(self.messages) >= set(expected), timeout)

    def wait_count(self, n: int, timeout: float = 10.0) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: len(self.messages) >= n, timeout)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


# --------------------------------------------------------------------------- payloads without MQTT


@pytest.mark.parametrize("batch", [1, 50])
def test_iter_messages_skab_valid_payloads(batch: int) -> None:
    cfg = ReplayConfig(batch=batch, limit=120, start_time=START)
    msgs = list(iter_messages("skab", cfg))
    devices = select_devices("skab", cfg)
    assert len(devices) == 35
    assert devices[:2] == ["skab-anomaly-free", "skab-valve1-0"]
    per_device_rows: Counter[str] = Counter()
    readings = 0
    for topic, payload, count in msgs:
        dt = parse_device_topic(topic)
        assert dt.kind == "telemetry"
        parsed = parse_telemetry(payload)
        assert sum(len(r.values) for r in parsed) == count
        assert all(len(r.values) == 8 for r in parsed)
        assert ("readings" in json.loads(payload)) == (batch > 1)
        per_device_rows[dt.device] += len(parsed)
        readings += count
    assert set(per_device_rows) == set(devices)
    assert all(n == 120 for n in per_device_rows.values())
    assert readings == 35 * 120 * 8
    expected_messages = 35 * (120 if batch == 1 else -(-120 // batch))
    assert len(msgs) == expected_messages
    # rebased: every device starts at START, spaced by the data's own 1 s step
    first = parse_telemetry(msgs[0][1])[0]
    assert first.ts == START


def test_iter_messages_nab_and_event_time() -> None:
    cfg = ReplayConfig(batch=1, start_time=START)
    total = 0
    per_device: Counter[str] = Counter()
    for topic, payload, count in iter_messages("nab", cfg):
        (reading,) = parse_telemetry(payload)
        assert list(reading.values) == ["value"] and count == 1
        per_device[parse_device_topic(topic).device] += 1
        total += 1
    assert total == 69_561
    assert len(per_device) == 7 and per_device["nab-nyc_taxi"] == 10_320
    assert all(ID_PATTERN.match(d) for d in per_device)
    # without rebasing the original event time is kept (nyc_taxi starts 2014-07-01 00:00 UTC)
    raw = ReplayConfig(rebase_time=False, devices=["nab-nyc_taxi"], limit=2)
    (t0, p0, _), _ = list(iter_messages("nab", raw))
    assert t0 == "devices/nab-nyc_taxi/telemetry"
    assert parse_telemetry(p0)[0].ts == 1_404_172_800.0
    assert parse_telemetry(p0)[0].values["value"] == 10_844.0


def test_iter_messages_snips_sessions() -> None:
    cfg = ReplayConfig(devices=3, turns=3, start_time=START)
    msgs = list(iter_messages("snips", cfg))
    assert len(msgs) == 700
    seqs: dict[str, list[int]] = {}
    owner: dict[str, str] = {}
    for topic, payload, count in msgs:
        dt = parse_device_topic(topic)
        assert dt.kind == "chat/in" and count == 1
        chat = parse_chat_in(payload)
        assert chat.seq is not None and chat.text.strip() == chat.text
        seqs.setdefault(chat.session_id, []).append(chat.seq)
        assert owner.setdefault(chat.session_id, dt.device) == dt.device  # a session stays on one device
    assert all(s == list(range(len(s))) for s in seqs.values())  # per-session increasing seq, in order
    assert len(seqs) == -(-700 // 3)
    first_line = (data_root() / "snips/test/seq.in").read_text(encoding="utf-8").split("\n")[0]
    assert any(parse_chat_in(p).text == " ".join(first_line.split()) for _, p, _ in msgs)


def test_shards_partition_devices() -> None:
    full = select_devices("skab", ReplayConfig(devices=10))
    shards = [select_devices("skab", ReplayConfig(devices=10, shard=(i, 3))) for i in range(3)]
    assert sorted(d for shard in shards for d in shard) == sorted(full)
    assert shards[1] == [full[k] for k in range(10) if k % 3 == 1]
    snips_all = Counter(t for t, _, _ in iter_messages("snips", ReplayConfig(devices=4)))
    snips_shards = Counter[str]()
    for i in range(2):
        snips_shards.update(t for t, _, _ in iter_messages("snips", ReplayConfig(devices=4, shard=(i, 2))))
    assert snips_shards == snips_all


def test_raw_json_bytes_and_sanitize() -> None:
    raw = json.dumps({"device": "d-1", "metric": "value", "ts": 1.5, "value": 2.25}, separators=(",", ":"))
    assert raw_reading_bytes("d-1", "value", 1.5, 2.25) == len(raw)
    assert sanitize_id("realKnownCause/nyc taxi#1") == "realKnownCause-nyc-taxi-1"
    assert ID_PATTERN.match(sanitize_id("_" * 100))
    with pytest.raises(ValueError, match="batch"):
        ReplayConfig(batch=0)
    with pytest.raises(ValueError, match="shard"):
        ReplayConfig(shard=(3, 3))
    with pytest.raises(ValueError, match="unknown skab devices"):
        select_devices("skab", ReplayConfig(devices=["nope"]))


# --------------------------------------------------------------------------- real MQTT


def _expected(source: str, cfg: ReplayConfig) -> Counter[tuple[str, bytes]]:
    return Counter((t, p) for t, p, _ in iter_messages(source, cfg))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("source", "cfg"),
    [
        ("skab", ReplayConfig(speedup=0, batch=1, limit=60, start_time=START)),
        ("nab", ReplayConfig(speedup=0, batch=100, limit=1_000, start_time=START)),
        ("snips", ReplayConfig(speedup=0, devices=3, limit=40, start_time=START)),
    ],
)
def test_replay_delivers_every_message(replay_broker: Broker, source: str, cfg: ReplayConfig) -> None:
    cfg = dataclasses.replace(cfg, broker=f"{replay_broker.host}:{replay_broker.port}")
    expected = _expected(source, cfg)
    sub = Subscriber(replay_broker.host, replay_broker.port, f"sub-{source}-{time.monotonic_ns()}")
    try:
        result = replay(source, cfg)  # type: ignore[arg-type]
        assert result.messages == sum(expected.values())
        assert result.rejected == 0
        sub.wait_distinct(expected)
        got = Counter(sub.messages)
        assert got == expected  # no loss, and without a restart no duplicates either
        if source == "snips":
            readings = len(sub.messages)
        else:
            readings = sum(sum(len(r.values) for r in parse_telemetry(p)) for _, p in sub.messages)
        assert readings == result.readings
        if source != "snips":
            assert result.raw_json_bytes > result.payload_bytes
    finally:
        sub.close()


def test_replay_survives_broker_restart(tmp_path: Path) -> None:
    broker = Broker(tmp_path / "broker")
    broker.start()
    addr = f"{broker.host}:{broker.port}"
    # ~2 s of paced traffic: 8 devices x 240 rows at 1 row/s, 120x
    cfg = ReplayConfig(broker=addr, speedup=120, devices=8, limit=240, start_time=START, ack_timeout=20)
    expected = _expected("skab", cfg)
    sub = Subscriber(broker.host, broker.port, "sub-restart")
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["result"] = replay("skab", cfg)
        except BaseException as exc:  # reported to the test thread
            outcome["error"] = exc

    worker = threading.Thread(target=run, name="replay-under-restart")
    worker.start()
    try:
        assert sub.wait_count(300, timeout=10), "replay did not start"
        broker.restart()  # SIGTERM (session + queues persisted), then start on the same port
        worker.join(30)
        assert not worker.is_alive()
        assert "error" not in outcome, outcome.get("error")
        result = outcome["result"]
        assert result.reconnects >= 1
        assert result.messages == sum(expected.values())
        sub.wait_distinct(expected, timeout=15)
        got = Counter(sub.messages)
        assert set(got) == set(expected)  # nothing lost; QoS 1 may duplicate around the restart
        dups = sum(got.values()) - len(got)
        assert dups < 2 * cfg.max_outstanding
    finally:
        sub.close()
        worker.join(5)
        broker.stop()


def test_replay_unreachable_broker_fails_clearly() -> None:
    port = free_port()
    cfg = ReplayConfig(broker=f"127.0.0.1:{port}", speedup=0, limit=1, connect_timeout=1.0)
    with pytest.raises(ReplayError, match=str(port)):
        replay("nab", cfg)


def test_cli_prints_json_summary(replay_broker: Broker, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(
        [
            "nab",
            "--broker",
            f"{replay_broker.host}:{replay_broker.port}",
            "--speedup",
            "0",
            "--batch",
            "10",
            "--limit",
            "50",
            "--shard",
            "1/3",
            "--progress",
            "0",
        ]
    )
    out = json.loads(capsys.readouterr().out)
    assert rc == 0
    assert out["devices"] == 2 and out["messages"] == 10 and out["readings"] == 100
    assert out["device_ids"] == select_devices("nab", ReplayConfig(shard=(1, 3)))
