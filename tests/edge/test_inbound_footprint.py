"""What one queued inbound message costs the agent: garbage-collector work and memory under a backlog.

A resumed session's backlog keeps up to ``max_incoming`` messages alive at once,
and every container object they hold is walked by each full collection; the
start-up heap is walked too unless it is frozen. Both were most of the agent's
time per message under a backlog (issue 15, docs/benchmarks.md).
"""

from __future__ import annotations

import gc
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge_agent.config import MqttConfig
from edge_agent.ops.gc_freeze import freeze_startup_heap
from edge_agent.transport.mqtt import Message, MqttClient


class _Conn:
    generation = 7

    def pause_reading(self) -> bool:
        return False


def _paho_message(mid: int, props: Properties) -> paho.MQTTMessage:
    """A PUBLISH as paho hands it to on_message (decode_publish always attaches a Properties)."""
    m = paho.MQTTMessage(mid, b"edgeloop/v1/devices/d1/telemetry")
    m.payload = b'{"ts":1.0,"values":{"t":1.5}}'
    m.qos = 1
    m.properties = props
    return m


def test_a_queued_message_holds_one_tracked_object_and_no_empty_properties() -> None:
    client = MqttClient(MqttConfig(), "t", max_incoming=100_000)
    conn: Any = _Conn()
    n = 2000
    gc.collect()
    before = len(gc.get_objects())
    raw = [_paho_message(i + 1, Properties(PacketTypes.PUBLISH)) for i in range(n)]
    for m in raw:
        client._dispatch_paho(conn, m)
    del raw, m  # paho frees its message once on_message returns
    gc.collect()
    per_message = (len(gc.get_objects()) - before) / n
    assert client._incoming.qsize() == n
    assert per_message <= 1.05, per_message  # the Message itself; paho's objects are not kept
    first = client._incoming.get_nowait()
    assert first.properties is None and first.generation == 7 and first.mid == 1
    assert not hasattr(first, "__dict__")


def test_set_properties_are_kept() -> None:
    client = MqttClient(MqttConfig(), "t")
    props = Properties(PacketTypes.PUBLISH)
    props.ResponseTopic = "r/t"
    props.CorrelationData = b"c"
    client._dispatch_paho(_Conn(), _paho_message(1, props))  # type: ignore[arg-type]
    msg: Message = client._incoming.get_nowait()
    assert getattr(msg.properties, "ResponseTopic", None) == "r/t"
    assert getattr(msg.properties, "CorrelationData", None) == b"c"


def test_freeze_startup_heap_exempts_what_exists_from_later_collections() -> None:
    keep = [[i] for i in range(1000)]
    try:
        frozen = freeze_startup_heap()
        assert frozen >= len(keep)
        tracked = {id(o) for o in gc.get_objects()}
        assert not any(id(x) in tracked for x in keep)
    finally:
        gc.unfreeze()
