"""FastClient's inbound path: raw PUBLISH packets over a socket pair, decoded as paho decodes them.

The packets are written by hand (several in one ``send``), so the buffered reads,
the direct callback and every fallback to paho's own path are exercised without
a broker; a real broker run with a tiny read budget per wakeup checks that bytes
left in the buffer are never stranded (epoll cannot see them).
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge_agent.config import MqttConfig
from edge_agent.transport import connection
from edge_agent.transport.fast_client import FastClient
from edge_agent.transport.mqtt import MqttClient


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n % 128, n // 128
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def publish_packet(
    topic: bytes, payload: bytes, qos: int = 1, mid: int = 1, *, retain: bool = False, dup: bool = False,
    props: bytes = b"",
) -> bytes:
    body = len(topic).to_bytes(2, "big") + topic + (mid.to_bytes(2, "big") if qos else b"")
    body += _varint(len(props)) + props + payload
    return bytes([0x30 | dup << 3 | qos << 1 | retain]) + _varint(len(body)) + body


Delivered = tuple[str, bytes, int, bool, int, bool, Any]


@pytest.fixture
def wired() -> Iterator[tuple[FastClient, socket.socket, list[Delivered], list[paho.MQTTMessage]]]:
    """A FastClient reading one end of a socket pair, as after CONNACK; the test writes the other end."""
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    fast: list[Delivered] = []
    slow: list[paho.MQTTMessage] = []
    c = FastClient(
        CallbackAPIVersion.VERSION2, client_id="t", protocol=paho.MQTTv5, manual_ack=True,
        on_publish_in=lambda *a: fast.append(a),
    )
    c.on_message = lambda _c, _u, m: slow.append(m)
    c._sock = ours
    yield c, theirs, fast, slow
    ours.close()
    theirs.close()


def _drain(c: FastClient) -> None:
    c.loop_read()
    while c.buffered():
        c.loop_read()


def test_packets_in_one_chunk_are_delivered_directly(wired: Any) -> None:
    c, peer, fast, slow = wired
    props = Properties(PacketTypes.PUBLISH)
    props.ResponseTopic = "r/t"
    props.CorrelationData = b"c1"
    raw_props = props.pack()[len(_varint(len(props.pack()) - 1)) :]  # pack() prefixes the length
    peer.sendall(
        publish_packet(b"devices/d1/telemetry", b'{"ts":1,"values":{"t":1}}', mid=7)
        + publish_packet(b"a/b", b"zero", qos=0, retain=True)
        + publish_packet(b"rpc/x", b"req", mid=9, dup=True, props=raw_props)
        + publish_packet("é/ü".encode(), b"", mid=10)
    )
    _drain(c)
    assert not slow
    assert [d[:6] for d in fast] == [
        ("devices/d1/telemetry", b'{"ts":1,"values":{"t":1}}', 1, False, 7, False),
        ("a/b", b"zero", 0, True, 0, False),
        ("rpc/x", b"req", 1, False, 9, True),
        ("é/ü", b"", 1, False, 10, False),
    ]
    assert fast[0][6] is None and fast[1][6] is None  # no Properties object for a PUBLISH without any
    assert fast[2][6].ResponseTopic == "r/t" and fast[2][6].CorrelationData == b"c1"
    assert all(type(d[1]) is bytes for d in fast)


def test_a_packet_split_across_reads_is_completed_by_the_next(wired: Any) -> None:
    c, peer, fast, _ = wired
    pkt = publish_packet(b"t/x", b"x" * 300, mid=3)
    peer.sendall(pkt[:5])
    _drain(c)
    assert not fast and not c.buffered()
    peer.sendall(pkt[5:])
    _drain(c)
    assert [(d[0], len(d[1]), d[4]) for d in fast] == [("t/x", 300, 3)]


def test_qos2_and_non_utf8_topics_take_paho_s_own_path(wired: Any) -> None:
    c, peer, fast, slow = wired
    peer.sendall(publish_packet(b"q/2", b"two", qos=2, mid=5) + publish_packet(b"bad\xff", b"p", mid=6))
    _drain(c)
    assert not fast
    assert 5 in c._in_messages  # QoS 2: paho keeps it until PUBREL, then calls on_message
    assert [(m._topic, m.qos) for m in slow] == [(b"bad\xff", 1)]


def test_a_truncated_publish_is_a_protocol_error_as_in_paho(wired: Any) -> None:
    c, peer, fast, _ = wired
    peer.sendall(b"\x32\x03\x00\x09a")  # topic length 9, one byte of topic
    assert c.loop_read() == MQTTErrorCode.MQTT_ERR_PROTOCOL
    assert not fast


def test_auto_ack_sends_the_puback() -> None:
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    try:
        c = FastClient(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5, on_publish_in=lambda *a: None)
        c._sock = ours
        theirs.sendall(publish_packet(b"t", b"p", mid=0x0102))
        c.loop_read()
        c.loop_write()
        assert theirs.recv(16)[:4] == b"\x40\x02\x01\x02"  # PUBACK for packet id 0x0102
    finally:
        ours.close()
        theirs.close()


async def test_a_backlog_read_a_few_packets_per_wakeup_is_not_stranded_in_the_buffer(
    mqtt_cfg: MqttConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two packets per event-loop wakeup: most of each 64 KiB chunk waits in the buffer, with no epoll event.
    monkeypatch.setattr(connection, "_READS_PER_WAKEUP", 2)
    make: Callable[..., MqttClient] = lambda cid, **kw: MqttClient(mqtt_cfg, cid, name=cid, **kw)  # noqa: E731
    first = make("agent", subscriptions=[("o/#", 1)], clean_start=False)
    await first.start()
    await first.wait_connected(5)
    await first.stop()
    pub = make("pub")
    await pub.start()
    await pub.wait_connected(5)
    for i in range(300):
        await pub.publish("o/x", str(i).encode(), qos=1, timeout=5)
    again = make("agent", subscriptions=[("o/#", 1)], clean_start=False)
    await again.start()
    try:
        got = [int((await again.receive(5)).payload) for _ in range(300)]
        assert got == list(range(300))
    finally:
        await again.stop()
        await pub.stop()
