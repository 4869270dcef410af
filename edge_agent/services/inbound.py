"""The readers of the two MQTT connections: each inbound message goes to the one object that handles it.

Device telemetry is absorbed by the pipeline and acknowledged by the next
commit tick; a chat utterance is queued for the chat answerers; the desired
state goes to its handler. A redelivery of work already absorbed is only
acknowledged (after the next commit, like the original).
"""

from __future__ import annotations

import asyncio

from edge_agent.pipeline.core import Pipeline
from edge_agent.protocol import topics
from edge_agent.services.chat_answers import ChatAnswers
from edge_agent.services.desired_apply import DesiredStateApplier
from edge_agent.tick import CommitTick
from edge_agent.transport.mqtt import MqttClient
from edge_agent.transport.redelivery import RedeliveryGuard

# Unacknowledged messages after which the reader lets the tick commit before reading on.
_MAX_UNACKED = 2000
# Share of the broker's window (our Receive Maximum) read before the tick is woken early: the broker
# stops sending once the whole window is unacknowledged, so a commit started at half of it runs while the
# reader absorbs the other half, instead of the reader idling through every commit (fsync included).
_COMMIT_AT_WINDOW_SHARE = 0.5


class Inbound:
    def __init__(
        self,
        node: str,
        client: MqttClient,
        cloud: MqttClient,
        pipeline: Pipeline,
        redelivery: RedeliveryGuard,
        tick: CommitTick,
        chat: ChatAnswers,
        desired: DesiredStateApplier,
    ) -> None:
        self._client = client
        self._cloud = cloud
        self._pipeline = pipeline
        self._redelivery = redelivery
        self._tick = tick
        self._chat = chat
        self._desired = desired
        self._desired_topic = topics.desired(node)

    async def devices(self) -> None:
        """The device connection (which also carries the desired state when there is one broker)."""
        handle = self._pipeline.handle
        guard = self._redelivery
        tick = self._tick
        commit_at = max(1, int(self._client.max_incoming * _COMMIT_AT_WINDOW_SHARE))
        async for msg in self._client.messages():
            if msg.topic == self._desired_topic:
                self._desired.on_message(msg)
                self._client.ack(msg)  # retained: the current desired state comes again after any reconnect
                continue
            if topics.is_node_topic(msg.topic):
                self._client.ack(msg)  # a cloud topic on the device connection: not ours to process
                continue
            if not guard.is_duplicate(msg.mid, msg.dup, msg.topic, msg.payload):
                job = handle(msg.topic, msg.payload)
                if job is not None:
                    # Answered by a chat worker, which acknowledges it once the answer is applied.
                    await self._chat.submit(job, msg)
                    continue
                guard.absorbed(msg.mid, msg.topic, msg.payload)
            tick.ack_after_commit(msg)
            unacked = tick.unacked
            if unacked >= commit_at:
                tick.wake()
                if unacked >= _MAX_UNACKED:
                    # Let the committer catch up instead of growing the unacknowledged set without bound.
                    await asyncio.sleep(0)
            elif tick.readings_due():
                # Batched telemetry: bound the readings one commit turns into summaries (memory, tick.py).
                await tick.let_commit()

    async def cloud(self) -> None:
        """With a separate cloud connection, the only inbound cloud message is the desired state."""
        async for msg in self._cloud.messages():
            if msg.topic == self._desired_topic:
                self._desired.on_message(msg)
            self._cloud.ack(msg)
