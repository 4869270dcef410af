"""An MQTT client started and connected for the length of a ``with`` block.

Tests and benches that play one side of the wire (a node asking, a teacher
answering) need a client that is really connected before the first publish,
and stopped however the block ends.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from edge_agent.config import MqttConfig
from edge_agent.transport.mqtt import MqttClient

__all__ = ["connected_client"]


@asynccontextmanager
async def connected_client(cfg: MqttConfig, cid: str) -> AsyncIterator[MqttClient]:
    c = MqttClient(cfg, cid, name=cid, clean_start=True)
    await c.start()
    try:
        await c.wait_connected(5)
        yield c
    finally:
        await c.stop(timeout=1)
