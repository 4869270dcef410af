"""Fetching a release from the broker: the signed manifest, then its chunks, resumable.

A release is retained on the broker (see :mod:`cloud_controller.releases.publisher`)
as one signed manifest and N chunk topics. The node fetches it on a *dedicated,
short-lived* MQTT connection (same credentials, client id ``{agent}-models-{task}``,
clean start, no session expiry), not on the agent's own connection, because:
the agent's session is persistent (subscribing it to chunk topics would leave
them subscribed across restarts), its inbound queue carries telemetry that 1 MB
of chunks must not delay, and MqttClient has no unsubscribe — closing the
connection *is* the unsubscribe. Its Receive Maximum bounds chunks in flight,
so memory stays bounded whatever the model size.

Order of checks: the manifest's sha256 must equal ``ModelRef.digest``, its
Ed25519 signature must verify with a pinned key, and its version must be newer
than anything ever activated for that name or slot (unless it is an explicit rollback,
see :mod:`edge_agent.updates.rollback`) — all before a single chunk is requested.
Each chunk is hashed on arrival and kept under ``models/.partial/{digest}/``;
after a disconnect or a restart only the chunk topics still missing are subscribed.
A chunk that fails its signed digest is dropped and counted, never stored: the
rest of the window is still taken, then the transfer backs off and subscribes to
what is missing again, so a corrected re-publish of that chunk is picked up without
a restart (the manifest's signature already pins what every chunk must hash to).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from edge_agent.protocol.errors import ModelRejected, MqttError
from edge_agent.protocol.manifest import ReleaseManifest, manifest_digest, verify_manifest
from edge_agent.protocol.messages import ModelRef
from edge_agent.protocol.topics import chunk_prefix, chunk_topic, chunks_filter, manifest_topic
from edge_agent.transport.backoff import Backoff
from edge_agent.transport.mqtt import Message, MqttClient
from edge_agent.updates.delivery_stats import DeliveryStats
from edge_agent.updates.durable_files import atomic_write
from edge_agent.updates.rollback import check_replay

__all__ = ["DamagedChunks", "Downloader", "Progress", "Trouble", "chunk_path", "partial_dir"]

log = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]  # (task, chunks held, total)
Trouble = Callable[[str, str], None]  # (task, what is wrong while the transfer keeps retrying)


class DamagedChunks(MqttError):
    """Retained chunks did not match the signed manifest; retried like a lost connection."""


def partial_dir(root: Path, digest: str) -> Path:
    """Where the chunks and the manifest of one release collect until it is unpacked."""
    return root / ".partial" / digest.removeprefix("sha256:")


def chunk_path(partial: Path, idx: int) -> Path:
    return partial / f"chunk-{idx:06d}"


class Downloader:
    """Fetches releases into ``{root}/.partial``; one per :class:`ModelManager`."""

    def __init__(
        self,
        root: Path,
        client: MqttClient,
        public_keys: Mapping[str, bytes],
        stats: DeliveryStats,
        *,
        max_model_bytes: int,
        window: int,
        max_incoming: int,
        stall_timeout_s: float,
        progress: Progress | None,
        trouble: Trouble | None = None,
    ) -> None:
        self.root = root
        self.client = client
        self.public_keys = public_keys
        self.stats = stats
        self.max_model_bytes = max_model_bytes
        self.window = window
        self.max_incoming = max_incoming
        self.stall_timeout_s = stall_timeout_s
        self.progress = progress
        self.trouble = trouble

    def _transfer_client(self, task: str, subs: list[tuple[str, int]]) -> MqttClient:
        cfg = self.client.cfg.model_copy(update={"session_expiry_s": 0})
        return MqttClient(cfg, f"{self.client.client_id}-models-{task}", subscriptions=subs, clean_start=True,
                          max_incoming=self.max_incoming, name=f"models-{task}")

    async def _session(self, task: str, subs: list[tuple[str, int]],
                       on_message: Callable[[Message], bool]) -> None:
        """One connection: subscribe, feed messages until ``on_message`` says done, or raise MqttError."""
        client = self._transfer_client(task, subs)
        self.stats.transfer_connects += 1
        await client.start()
        try:
            await client.wait_connected(self.client.cfg.connect_timeout_s)
            lost = asyncio.create_task(client.wait_disconnected(), name=f"models-{task}-lost")
            try:
                while True:
                    recv = asyncio.create_task(client.receive(self.stall_timeout_s), name=f"models-{task}-rx")
                    await asyncio.wait({recv, lost}, return_when=asyncio.FIRST_COMPLETED)
                    if lost.done():
                        recv.cancel()
                        with contextlib.suppress(asyncio.CancelledError, MqttError):
                            await recv
                        raise MqttError("transfer connection lost")
                    if on_message(recv.result()):
                        return
            finally:
                lost.cancel()
                with contextlib.suppress(asyncio.CancelledError, MqttError):
                    await lost
        finally:
            await client.stop()

    async def _retrying(self, what: str, attempt: Callable[[], Any]) -> None:
        backoff = Backoff(self.client.cfg.reconnect_min_s, self.client.cfg.reconnect_max_s)
        while True:
            try:
                await attempt()
                return
            except MqttError as exc:
                log.warning("%s: %s; retrying in %.2fs", what, exc, backoff.ceiling())
            await backoff.sleep()

    async def fetch(self, task: str, ref: ModelRef) -> tuple[ReleaseManifest, Path]:
        partial = partial_dir(self.root, ref.digest)
        mpath = partial / "manifest.json"
        payload = mpath.read_bytes() if mpath.is_file() else b""
        if manifest_digest(payload) != ref.digest:
            got: list[bytes] = []

            def take(msg: Message) -> bool:
                if not msg.payload:
                    return False  # cleared release: keep waiting until the stall timeout
                got.append(msg.payload)
                return True

            topic = manifest_topic(ref.name, ref.version)
            await self._retrying(f"manifest {topic}", lambda: self._session(task, [(topic, 1)], take))
            payload = got[0]
            self.stats.manifests_fetched += 1
        manifest = verify_manifest(payload, self.public_keys, ref.digest)
        if (manifest.name, manifest.version, manifest.task) != (ref.name, ref.version, ref.task):
            raise ModelRejected("malformed", f"manifest is {manifest.name}@{manifest.version} "
                                             f"for {manifest.task}, desired names {ref.name}@{ref.version}")
        if manifest.archive.size > self.max_model_bytes:
            raise ModelRejected("malformed", f"{manifest.archive.size} bytes > limit {self.max_model_bytes}")
        check_replay(self.root, ref, manifest.version)
        if not mpath.is_file():
            atomic_write(mpath, payload)
        await self._fetch_chunks(task, ref, manifest, partial)
        return manifest, partial

    async def _fetch_chunks(self, task: str, ref: ModelRef, m: ReleaseManifest, partial: Path) -> None:
        total = len(m.archive.chunks)
        have = await asyncio.to_thread(self._verified_chunks, m, partial)
        self.stats.chunks_from_disk += len(have)
        prefix = chunk_prefix(ref.name, ref.version)

        def take(window: set[int]) -> Callable[[Message], bool]:
            bad: set[int] = set()

            def on_message(msg: Message) -> bool:
                idx_s = msg.topic.removeprefix(prefix)
                digits = idx_s.isascii() and idx_s.isdigit()
                if not msg.topic.startswith(prefix) or not digits or not msg.payload:
                    return False
                idx = int(idx_s)
                if idx >= total:
                    return False
                if idx in have:
                    self.stats.chunks_duplicate += 1
                    return not (window - have)
                if len(msg.payload) != m.archive.chunk_length(idx) or \
                        hashlib.sha256(msg.payload).hexdigest() != m.archive.chunks[idx]:
                    self.stats.chunks_bad += 1
                    bad.add(idx)
                    return done()
                bad.discard(idx)
                atomic_write(chunk_path(partial, idx), msg.payload, durable=False)
                have.add(idx)
                self.stats.chunks_received += 1
                self.stats.bytes_received += len(msg.payload)
                if self.progress is not None:
                    self.progress(task, len(have), total)
                return done()

            def done() -> bool:
                missing = window - have
                if missing and missing <= bad:  # only damaged chunks left: back off, then ask again
                    raise DamagedChunks(f"chunks {sorted(bad)[:10]} of {ref.name}@{ref.version} do not match "
                                        "their signed sha256; fetching them again")
                return not missing

            return on_message

        async def next_window() -> None:
            # Recomputed on every attempt: after a cut, subscribe only to what is still missing.
            window = set(sorted(set(range(total)) - have)[: self.window])
            if len(window) == total:
                subs = [(chunks_filter(ref.name, ref.version), 1)]
            else:
                subs = [(chunk_topic(ref.name, ref.version, i), 1) for i in sorted(window)]
            try:
                await self._session(task, subs, take(window))
            except DamagedChunks as exc:
                if self.trouble is not None:
                    self.trouble(task, str(exc))
                raise

        while len(have) < total:
            await self._retrying(f"chunks of {ref.name}@{ref.version}", next_window)

    @staticmethod
    def _verified_chunks(m: ReleaseManifest, partial: Path) -> set[int]:
        have: set[int] = set()
        for i, digest in enumerate(m.archive.chunks):
            p = chunk_path(partial, i)
            try:
                data = p.read_bytes()
            except FileNotFoundError:
                continue
            if hashlib.sha256(data).hexdigest() == digest:
                have.add(i)
            else:
                p.unlink(missing_ok=True)
        return have
