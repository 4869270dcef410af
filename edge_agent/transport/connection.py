"""One MQTT connection attempt: its paho client, its futures, and its socket on the event loop.

paho's non-blocking socket is registered with ``loop.add_reader``/``add_writer``
(the way aiomqtt does it), so every paho callback runs on the event loop thread
and no message crosses a thread. This module owns that glue; the client in
:mod:`edge_agent.transport.mqtt` owns the protocol (connect, subscribe, publish,
ack, backoff) and throws a :class:`Connection` away with its paho client when the
link drops, so nothing queued on a dead connection is ever replayed.
"""

from __future__ import annotations

import asyncio
import contextlib
import select
import socket
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from edge_agent.protocol.errors import MqttError

__all__ = ["Connection", "close_socket"]

# paho reads one packet per call: a readable socket is drained up to this many packets per wakeup.
# Not more: each step of a commit (an SQLite statement in its thread, then back) waits for the
# current batch of reads, and a commit delayed is a window of acks delayed.
_READS_PER_WAKEUP = 64


def close_socket(client: paho.Client) -> None:
    sock = client.socket()
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.close()


@dataclass
class Connection:
    """State of one connection attempt; discarded with its paho client."""

    client: paho.Client
    generation: int
    loop: asyncio.AbstractEventLoop
    connack: asyncio.Future[tuple[ReasonCode, Properties | None, bool]]
    closed: asyncio.Future[ReasonCode | None]
    pending: dict[int, asyncio.Future[ReasonCode]] = field(default_factory=dict)
    subacks: dict[int, asyncio.Future[list[ReasonCode]]] = field(default_factory=dict)
    # The fd, not the socket object: asyncio rejects a closed socket object on removal.
    fd: int | None = None
    reading: bool = False

    def attach_socket(self) -> None:
        """Hand the connected socket to the event loop (reads now, writes whenever paho wants)."""
        sock = self.client.socket()
        if sock is None:
            raise MqttError("connection closed during connect")
        self.fd = fd = sock.fileno()
        # Small QoS 1 exchanges (PUBLISH/PUBACK, request/response) must not wait for Nagle + delayed ACK.
        with contextlib.suppress(OSError, AttributeError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # type: ignore[attr-defined]
        client = self.client
        loop = self.loop

        def register_write(_c: paho.Client, _u: Any, s: Any) -> None:
            loop.add_writer(fd, client.loop_write)

        def unregister_write(_c: paho.Client, _u: Any, s: Any) -> None:
            loop.remove_writer(fd)

        def socket_close(_c: paho.Client, _u: Any, s: Any) -> None:
            # Forget the fd before paho closes it: the number may be reused at once.
            loop.remove_reader(fd)
            loop.remove_writer(fd)
            self.reading = False
            self.fd = None

        client.on_socket_register_write = register_write
        client.on_socket_unregister_write = unregister_write
        client.on_socket_close = socket_close
        self.resume_reading()
        if client.want_write():
            loop.add_writer(fd, client.loop_write)

    def resume_reading(self) -> None:
        if self.reading or self.fd is None:
            return
        client = self.client
        loop = self.loop
        # One poll object per connection: cheaper per check than building select()'s three lists.
        poller = select.poll()
        poller.register(self.fd, select.POLLIN)
        sock = client.socket()
        pending = getattr(sock, "pending", None)  # TLS only
        # Bytes paho's reader buffered past the last packet (FastClient): epoll cannot see them either.
        buffered = getattr(client, "buffered", None)

        def more() -> bool:
            return (
                (buffered is not None and buffered())
                or (pending is not None and pending() > 0)
                or bool(poller.poll(0))
            )

        def readable() -> None:
            if not self.reading or client.socket() is not sock:
                return
            client.loop_read()
            # Keep reading while bytes are waiting, since one event-loop pass per message is the
            # bottleneck otherwise. TLS: decrypted bytes can sit inside the SSL object where epoll
            # cannot see them.
            for _ in range(_READS_PER_WAKEUP):
                if not self.reading or client.socket() is not sock or not more():
                    return
                client.loop_read()
            # Out of reads for this pass: let the loop run other work (the commit), then go on. Bytes
            # already buffered would not wake epoll again.
            if self.reading and client.socket() is sock and buffered is not None and buffered():
                loop.call_soon(readable)

        loop.add_reader(self.fd, readable)
        self.reading = True
        if buffered is not None and buffered():  # resumed after backpressure with bytes already read
            loop.call_soon(readable)

    def pause_reading(self) -> bool:
        """Backpressure: stop reading; TCP and the broker queue hold the rest. False if not reading."""
        if not self.reading or self.fd is None:
            return False
        self.loop.remove_reader(self.fd)
        self.reading = False
        return True

    def close_socket(self) -> None:
        """Only a socket handed to the event loop is ours to close; one still being
        connected in the worker thread is closed by the connect future's callback."""
        if self.fd is not None:
            self.loop.remove_reader(self.fd)
            self.loop.remove_writer(self.fd)
            self.reading = False
            self.fd = None
            close_socket(self.client)
