"""Publish signed releases as retained MQTT messages so the broker does the fan-out.

Topics (see :mod:`edge_agent.protocol.manifest`)::

    edgeloop/v1/models/{name}/{version}/chunks/{i}   raw bytes of archive chunk i, retained, QoS 1
    edgeloop/v1/models/{name}/{version}/manifest     the signed manifest JSON, retained, QoS 1

Each release is published once, whatever the number of nodes: a node that
subscribes gets the retained copies from the broker, so rolling out to 1,000
nodes costs the controller one upload, not 1,000. Chunks go first and the
manifest last, so a node that sees a manifest always finds every chunk; clearing
goes the other way (manifest first), so no node starts a download that cannot
finish. Nothing here answers ``nodes/{node}/models/request``: with retained
chunks, nodes resume by subscribing to the chunk topics they are missing.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable

from cloud_controller.releases.artifacts import Release, ReleaseStore
from edge_agent.protocol.topics import chunk_topic, manifest_topic
from edge_agent.transport.mqtt import MqttClient

__all__ = ["ModelPublisher", "PublishProgress"]

log = logging.getLogger(__name__)

PublishProgress = Callable[[int, int], None]  # (chunks published, total)


class ModelPublisher:
    def __init__(self, client: MqttClient, store: ReleaseStore, *, max_inflight: int = 32,
                 publish_timeout_s: float = 30.0) -> None:
        self.client = client
        self.store = store
        self.max_inflight = max_inflight
        self.publish_timeout_s = publish_timeout_s

    async def _publish_all(self, items: Iterable[tuple[str, bytes]], progress: PublishProgress | None,
                           total: int) -> None:
        """QoS 1 publishes, at most ``max_inflight`` awaiting PUBACK; a failure cancels the rest."""
        sem = asyncio.Semaphore(self.max_inflight)
        done = 0

        async def one(topic: str, payload: bytes) -> None:
            nonlocal done
            try:
                await self.client.publish(topic, payload, qos=1, retain=True, timeout=self.publish_timeout_s)
            finally:
                sem.release()
            done += 1
            if progress is not None:
                progress(done, total)

        async with asyncio.TaskGroup() as tg:
            for i, (topic, payload) in enumerate(items):
                await sem.acquire()
                tg.create_task(one(topic, payload), name=f"model-publish-{i}")

    async def publish(self, release: Release, progress: PublishProgress | None = None) -> None:
        """Chunks, then the manifest, all retained. Idempotent: re-publishing rewrites the same bytes."""
        chunks = ((chunk_topic(release.name, release.version, i), c)
                  for i, c in enumerate(self.store.iter_chunks(release)))
        await self._publish_all(chunks, progress, release.chunks)
        await self.client.publish(manifest_topic(release.name, release.version), release.manifest, qos=1,
                                  retain=True, timeout=self.publish_timeout_s)
        log.info("published %s@%s: %d bytes in %d chunks (%s)", release.name, release.version,
                 release.size, release.chunks, release.digest)

    async def clear(self, release: Release) -> None:
        """Remove the retained copies (an empty retained payload deletes), manifest first."""
        await self.client.publish(manifest_topic(release.name, release.version), b"", qos=1, retain=True,
                                  timeout=self.publish_timeout_s)
        empties = ((chunk_topic(release.name, release.version, i), b"") for i in range(release.chunks))
        await self._publish_all(empties, None, release.chunks)

    async def retain(self, name: str, keep: int = 3) -> list[Release]:
        """Keep the newest ``keep`` releases on the broker and in the store; clear and drop the rest.

        Keep at least the version a rollback may go back to: a rollout's previous
        version must stay fetchable for nodes that pruned it from disk.
        """
        old = self.store.releases(name)[:-keep] if keep >= 1 else []
        for r in old:
            await self.clear(r)
        self.store.retain(name, keep)
        return old
