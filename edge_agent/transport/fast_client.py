"""paho's client with a cheaper inbound path: buffered socket reads and a direct PUBLISH callback.

Why: with the agent's own per-message work trimmed, most of the time per
single-reading message went to paho's generic receive path (profile in
docs/profiles/agent-single.md): three ``recv`` system calls plus one readiness
check per packet, a ``Properties`` object with its tables for every PUBLISH even
when it carries none, an ``MQTTMessage`` with a ``threading.Condition``, and a
topic-filter walk for per-filter callbacks the agent never registers.

Two overrides, each falling back to paho's own code wherever it is not the
common case, so the protocol behaviour stays paho's:

* :meth:`FastClient._sock_recv` reads the socket in chunks of up to 64 KiB and
  serves paho's small reads (1 byte of header, 1-4 bytes of length, then the
  rest) from that buffer. Bytes in the buffer are invisible to epoll, so the
  reader asks :meth:`FastClient.buffered` before it waits for readiness
  (:mod:`edge_agent.transport.connection`).
* :meth:`FastClient._handle_publish` decodes an MQTT 5 QoS 0/1 PUBLISH itself
  and calls ``on_publish_in(topic, payload, qos, retain, mid, dup, properties)``
  directly; ``properties`` is None when the PUBLISH has none (the usual case),
  else paho's own decoder parses them. QoS 2, MQTT 3 and topics that are not
  valid UTF-8 go through paho's ``_handle_publish`` and ``on_message``. A
  truncated packet raises paho's ``MalformedPacket`` as paho's decoder does,
  which drops the connection.

The overridden methods are paho 2.x internals (pinned ``paho-mqtt>=2.1,<3``);
``tests/edge/test_fast_client.py`` checks both paths against a real broker and
fails if a paho release renames what they rely on.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt import _packet
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.properties import Properties

__all__ = ["FastClient", "PublishCallback"]

# topic, payload, qos, retain, packet id, dup, properties (None when the PUBLISH carried none)
PublishCallback = Callable[[str, bytes, int, bool, int, bool, "Properties | None"], None]

_RECV_CHUNK = 64 * 1024
_U16 = struct.Struct("!H")


class FastClient(paho.Client):
    """A paho MQTT 5 client whose inbound PUBLISH path skips paho's per-message objects."""

    def __init__(self, *args: Any, on_publish_in: PublishCallback | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.on_publish_in = on_publish_in
        self._rbuf = b""
        self._rpos = 0

    def buffered(self) -> bool:
        """True while bytes read from the socket wait here for paho (epoll cannot see them)."""
        return self._rpos < len(self._rbuf)

    def message_callback_add(self, sub: str, callback: Any) -> None:
        # The direct path does not consult per-filter callbacks; refuse them instead of ignoring them.
        raise NotImplementedError("FastClient delivers every PUBLISH to on_publish_in")

    # ------------------------------------------------------------------ paho internals

    def _sock_recv(self, bufsize: int) -> bytes:
        buf, pos = self._rbuf, self._rpos
        if pos >= len(buf):
            buf = super()._sock_recv(_RECV_CHUNK)  # BlockingIOError / OSError as paho expects them
            if not buf:
                return buf  # connection closed by the peer
            self._rbuf, pos = buf, 0
        end = pos + bufsize
        self._rpos = end
        return buf[pos:end]

    def _handle_publish(self) -> MQTTErrorCode:
        deliver = self.on_publish_in
        header = self._in_packet["command"]
        qos = (header & 0x06) >> 1
        if deliver is None or qos > 1 or self._protocol != paho.MQTTv5:
            return super()._handle_publish()
        packet = self._in_packet["packet"]
        try:
            (slen,) = _U16.unpack_from(packet, 0)
            pos = 2 + slen
            if len(packet) < pos:
                raise struct.error("topic longer than the packet")
            topic = packet[2:pos].decode("utf-8")
            mid = 0
            if qos:
                (mid,) = _U16.unpack_from(packet, pos)
                pos += 2
            has_props = packet[pos] != 0  # IndexError: no property length, as paho's decoder reports it
        except UnicodeDecodeError:
            return super()._handle_publish()  # paho's own handling of a topic that is not UTF-8
        except (struct.error, IndexError) as exc:
            raise paho.MalformedPacket(str(exc)) from exc
        props: Properties | None = None
        if has_props:
            result = _packet.decode_publish(header, packet, self._protocol)
            props, payload = result.properties, bytes(result.payload)
        else:
            payload = bytes(packet[pos + 1 :])
        with self._in_callback_mutex:
            deliver(topic, payload, qos, bool(header & 0x01), mid, bool(header & 0x08), props)
        if qos == 1 and not self._manual_ack:
            return self._send_puback(mid)
        return MQTTErrorCode.MQTT_ERR_SUCCESS
