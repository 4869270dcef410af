"""Model delivery on the edge: fetch (resumable), verify, unpack, load, health-check, swap, roll back.

Transfer. A release is retained on the broker (see :mod:`cloud_controller.releases.publisher`)
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
than anything ever activated for that name (unless the desired state pins the
digest of a release this node activated before: an explicit rollback) — all
before a single chunk is requested. Each chunk is hashed on arrival and kept
under ``models/.partial/{digest}/``; after a disconnect or a restart only the
chunk topics still missing are subscribed. The whole archive and every file are
hashed again while unpacking into a temp dir that is renamed into
``models/{name}/{version}/``.

Activation. The new model is loaded and health-checked in a worker thread
while the old one keeps serving; only then is the per-task pointer
``models/active/{task}.json`` replaced (write temp + fsync + ``os.replace``) and
the in-memory model swapped. A load or health failure leaves the old model
running and reports ``rolled_back``. At boot, an active version that no longer
loads falls back to the recorded previous one. Two versions per task stay on disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_agent.protocol.errors import ModelRejected, MqttError
from edge_agent.protocol.manifest import (
    ReleaseManifest,
    check_newer,
    manifest_digest,
    verify_manifest,
    version_key,
)
from edge_agent.protocol.messages import DesiredState, ModelRef, ModelStatus
from edge_agent.protocol.topics import chunk_prefix, chunk_topic, chunks_filter, manifest_topic
from edge_agent.transport.backoff import Backoff
from edge_agent.transport.mqtt import Message, MqttClient

__all__ = ["ActiveModel", "DeliveryStats", "ModelManager", "default_health_check", "default_loaders"]

log = logging.getLogger(__name__)

Loader = Callable[[Path], Any]
HealthCheck = Callable[[str, Any], None]
Progress = Callable[[str, int, int], None]  # (task, chunks held, total)
RELEASE_FILE = "release.json"


@dataclass(frozen=True)
class ActiveModel:
    name: str
    version: str
    digest: str
    path: Path
    model: Any


@dataclass
class DeliveryStats:
    manifests_fetched: int = 0
    chunks_received: int = 0  # chunk messages used from the broker
    chunks_duplicate: int = 0  # chunk messages for chunks already held (should stay 0)
    chunks_from_disk: int = 0  # chunks resumed from a partial download
    bytes_received: int = 0
    transfer_connects: int = 0
    activations: int = 0
    rollbacks: int = 0
    rejected: dict[str, int] = field(default_factory=dict)


class _ChunkReader:
    """Reads the archive as one stream across chunk files, hashing it as it goes."""

    def __init__(self, paths: list[Path]) -> None:
        self._paths = iter(paths)
        self._buf = memoryview(b"")
        self._hash = hashlib.sha256()

    def read(self, n: int) -> bytes:
        while not self._buf:
            path = next(self._paths, None)
            if path is None:
                return b""
            data = path.read_bytes()
            self._hash.update(data)
            self._buf = memoryview(data)
        piece, self._buf = self._buf[:n], self._buf[n:]
        return bytes(piece)

    def digest(self) -> str:
        return self._hash.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _atomic_write(path: Path, data: bytes, *, durable: bool = True) -> None:
    """Temp file + rename. ``durable=False`` skips fsync: for chunks, which are re-hashed on resume anyway."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if durable:
        _fsync_dir(path.parent)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_bytes())
    except (FileNotFoundError, ValueError):
        return None
    return data if isinstance(data, dict) else None


class ModelManager:
    """Owns ``{state_dir}/models``; one per agent. No I/O until :meth:`load_active` or :meth:`apply`."""

    def __init__(
        self,
        state_dir: str | Path,
        client: MqttClient,
        public_keys: Mapping[str, bytes],
        loaders: Mapping[str, Loader],
        health_check: HealthCheck | None = None,
        *,
        max_model_bytes: int = 256 * 1024 * 1024,
        window: int = 256,
        max_incoming: int = 16,
        manifest_timeout_s: float = 10.0,
        stall_timeout_s: float = 10.0,
        progress: Progress | None = None,
    ) -> None:
        self.root = Path(state_dir) / "models"
        self.client = client
        self.public_keys = dict(public_keys)
        self.loaders = dict(loaders)
        self.health_check = health_check
        self.max_model_bytes = max_model_bytes
        self.window = window
        self.max_incoming = max_incoming
        self.manifest_timeout_s = manifest_timeout_s
        self.stall_timeout_s = stall_timeout_s
        self.progress = progress
        self.stats = DeliveryStats()
        self._active: dict[str, ActiveModel] = {}
        self._status: dict[str, ModelStatus] = {}
        self._refused: dict[str, str] = {}  # digest -> error; permanent, never retried
        self._transfers: dict[str, tuple[str, asyncio.Task[None]]] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        # Directories a convergence is using (its download, its unpacked version), with a count of
        # users: another task's activation prunes, and must not delete what this one is about to load.
        self._busy: Counter[Path] = Counter()

    # ------------------------------------------------------------------ public API

    def current(self, task: str) -> tuple[str, str, Any] | None:
        a = self._active.get(task)
        return (a.name, a.version, a.model) if a else None

    def status(self) -> dict[str, ModelStatus]:
        return dict(self._status)

    async def load_active(self) -> None:
        """Load every task's active version from disk; fall back to the previous one if it fails."""
        pdir = self.root / "active"
        for ptr_path in sorted(pdir.glob("*.json")) if pdir.is_dir() else []:
            task = ptr_path.stem
            ptr = _read_json(ptr_path)
            if ptr is None or task not in self.loaders:
                continue
            try:
                await self._load_into(task, ptr["name"], ptr["version"], ptr["digest"])
                prev = ptr.get("previous")
                self._set_status(task, "active", previous=prev["version"] if prev else None)
                continue
            except Exception as exc:
                error = f"{type(exc).__name__}: {exc}"
                log.error("active %s model %s@%s does not load: %s", task, ptr["name"], ptr["version"], error)
            prev = ptr.get("previous")
            if prev:
                try:
                    await self._load_into(task, prev["name"], prev["version"], prev["digest"])
                except Exception as exc2:
                    error += f"; previous: {exc2}"
                else:
                    self._write_pointer(task, prev, None)
                    self.stats.rollbacks += 1
                    self._set_status(task, "rolled_back", error=f"{ptr['version']}: {error}")
                    continue
            self._status[task] = ModelStatus(name=ptr["name"], version=ptr["version"], state="failed",
                                             error=error[:500])

    async def apply(self, desired: DesiredState) -> dict[str, ModelStatus]:
        """Converge every task to ``desired``; returns when each task is active, refused or superseded.

        Transfers run as named tasks that outlive a cancelled ``apply`` (a newer
        desired state for the same release re-joins the running transfer).
        """
        waits: list[asyncio.Task[None]] = []
        for task, ref in desired.models.items():
            active = self._active.get(task)
            if active is not None and active.digest == ref.digest:
                continue
            if ref.digest in self._refused:
                continue
            running = self._transfers.get(task)
            if running is not None and not running[1].done():
                if running[0] == ref.digest:
                    waits.append(running[1])
                    continue
                running[1].cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await running[1]
            t = asyncio.create_task(self._converge(task, ref), name=f"model-{task}-{ref.name}-{ref.version}")
            self._transfers[task] = (ref.digest, t)
            waits.append(t)
        if waits:
            await asyncio.wait(waits)
        return self.status()

    async def stop(self) -> None:
        tasks = [t for _, t in self._transfers.values() if not t.done()]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._transfers.clear()

    # ------------------------------------------------------------------ status

    def _set_status(self, task: str, state: str, *, error: str | None = None,
                    ref: ModelRef | None = None, previous: str | None = None) -> None:
        """Status names what *runs* (the target when nothing runs yet); ``error`` names the target's fate."""
        a = self._active.get(task)
        old = self._status.get(task)
        name = a.name if a else (ref.name if ref else (old.name if old else ""))
        version = a.version if a else (ref.version if ref else (old.version if old else ""))
        if previous is None and old is not None and old.version == version:
            previous = old.previous
        self._status[task] = ModelStatus.model_validate(
            {"name": name, "version": version, "state": state, "previous": previous,
             "error": error[:500] if error else None}
        )

    def _reject(self, task: str, ref: ModelRef, exc: ModelRejected) -> None:
        self.stats.rejected[exc.reason] = self.stats.rejected.get(exc.reason, 0) + 1
        self._refused[ref.digest] = str(exc)
        shutil.rmtree(self._partial_dir(ref.digest), ignore_errors=True)
        log.error("refused %s model %s@%s: %s", task, ref.name, ref.version, exc)
        self._set_status(task, "failed", error=f"{ref.name}@{ref.version} {exc}", ref=ref)

    # ------------------------------------------------------------------ converge one task

    async def _converge(self, task: str, ref: ModelRef) -> None:
        lock = self._locks.setdefault(task, asyncio.Lock())
        before = self._status.get(task)
        busy = [self._partial_dir(ref.digest), self.root / ref.name / ref.version]
        self._busy.update(busy)
        try:
            if task != ref.task or task not in self.loaders:
                raise ModelRejected("malformed", f"release for task {ref.task!r} in slot {task!r}")
            self._check_replay(ref)
            self._set_status(task, "downloading", ref=ref)
            path = self._installed(ref)
            if path is None:
                manifest, partial = await self._fetch(task, ref)
                path = await asyncio.to_thread(self._unpack, manifest, partial, ref.digest)
            async with lock:
                await self._activate(task, ref, path)
        except ModelRejected as exc:
            self._reject(task, ref, exc)
        except asyncio.CancelledError:
            if before is not None:
                self._status[task] = before
            else:
                self._status.pop(task, None)
            raise
        except Exception as exc:  # disk full, loader bug: report, retry on the next apply
            log.exception("installing %s model %s@%s failed", task, ref.name, ref.version)
            self._set_status(task, "failed", error=f"{ref.name}@{ref.version} {type(exc).__name__}: {exc}",
                             ref=ref)
        finally:
            self._busy.subtract(busy)
            self._busy += Counter()  # drop the zero counts

    def _partial_dir(self, digest: str) -> Path:
        return self.root / ".partial" / digest.removeprefix("sha256:")

    def _history_path(self, name: str) -> Path:
        return self.root / name / "history.json"

    def _check_replay(self, ref: ModelRef, version: str | None = None) -> None:
        hist = _read_json(self._history_path(ref.name)) or {}
        if ref.digest in hist.get("activated", []):
            return  # an explicit rollback to a release this node already ran
        check_newer(version or ref.version, hist.get("highest"))

    def _installed(self, ref: ModelRef) -> Path | None:
        path = self.root / ref.name / ref.version
        rel = path / RELEASE_FILE
        if rel.is_file() and manifest_digest(rel.read_bytes()) == ref.digest:
            return path
        return None

    # ------------------------------------------------------------------ fetch

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

    async def _fetch(self, task: str, ref: ModelRef) -> tuple[ReleaseManifest, Path]:
        partial = self._partial_dir(ref.digest)
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
        self._check_replay(ref, manifest.version)
        if not mpath.is_file():
            _atomic_write(mpath, payload)
        await self._fetch_chunks(task, ref, manifest, partial)
        return manifest, partial

    async def _fetch_chunks(self, task: str, ref: ModelRef, m: ReleaseManifest, partial: Path) -> None:
        total = len(m.archive.chunks)
        have = await asyncio.to_thread(self._verified_chunks, m, partial)
        self.stats.chunks_from_disk += len(have)
        prefix = chunk_prefix(ref.name, ref.version)

        def take(window: set[int]) -> Callable[[Message], bool]:
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
                    raise ModelRejected("file_hash_mismatch", f"chunk {idx} does not match its signed sha256")
                _atomic_write(partial / f"chunk-{idx:06d}", msg.payload, durable=False)
                have.add(idx)
                self.stats.chunks_received += 1
                self.stats.bytes_received += len(msg.payload)
                if self.progress is not None:
                    self.progress(task, len(have), total)
                return not (window - have)
            return on_message

        async def next_window() -> None:
            # Recomputed on every attempt: after a cut, subscribe only to what is still missing.
            window = set(sorted(set(range(total)) - have)[: self.window])
            if len(window) == total:
                subs = [(chunks_filter(ref.name, ref.version), 1)]
            else:
                subs = [(chunk_topic(ref.name, ref.version, i), 1) for i in sorted(window)]
            await self._session(task, subs, take(window))

        while len(have) < total:
            await self._retrying(f"chunks of {ref.name}@{ref.version}", next_window)

    @staticmethod
    def _verified_chunks(m: ReleaseManifest, partial: Path) -> set[int]:
        have: set[int] = set()
        for i, digest in enumerate(m.archive.chunks):
            p = partial / f"chunk-{i:06d}"
            try:
                data = p.read_bytes()
            except FileNotFoundError:
                continue
            if hashlib.sha256(data).hexdigest() == digest:
                have.add(i)
            else:
                p.unlink(missing_ok=True)
        return have

    # ------------------------------------------------------------------ unpack and verify on disk

    def _unpack(self, m: ReleaseManifest, partial: Path, digest: str) -> Path:
        """Stream the chunks into the files, hashing both; rename the finished dir into place."""
        base = self.root / m.name
        base.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{m.version}-", dir=base))
        try:
            reader = _ChunkReader([partial / f"chunk-{i:06d}" for i in range(len(m.archive.chunks))])
            for entry in m.files:
                fh, left = hashlib.sha256(), entry.size
                with open(tmp / entry.name, "wb") as out:
                    while left:
                        piece = reader.read(left)
                        if not piece:
                            raise ModelRejected("file_hash_mismatch", "archive is shorter than its files")
                        out.write(piece)
                        fh.update(piece)
                        left -= len(piece)
                if fh.hexdigest() != entry.sha256:
                    raise ModelRejected("file_hash_mismatch", f"{entry.name} does not match its sha256")
            if reader.read(1) or reader.digest() != m.archive.sha256:
                raise ModelRejected("file_hash_mismatch", "archive does not match its signed sha256")
            (tmp / RELEASE_FILE).write_bytes((partial / "manifest.json").read_bytes())
            for p in tmp.iterdir():
                with open(p, "rb") as f:
                    os.fsync(f.fileno())
            target = base / m.version
            if target.exists():
                shutil.rmtree(target)  # same version, other digest, not active (else not_newer refused it)
            os.replace(tmp, target)
            _fsync_dir(base)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        shutil.rmtree(partial, ignore_errors=True)
        log.info("unpacked %s@%s (%s)", m.name, m.version, digest)
        return target

    def _verify_dir(self, path: Path, digest: str) -> None:
        """Re-verify an installed release (boot, rollback): signature, digest, every file's sha256."""
        try:
            payload = (path / RELEASE_FILE).read_bytes()
        except FileNotFoundError:
            raise ModelRejected("malformed", f"{path} has no {RELEASE_FILE}") from None
        m = verify_manifest(payload, self.public_keys, digest)
        for f in m.files:
            try:
                data = (path / f.name).read_bytes()
            except FileNotFoundError:
                raise ModelRejected("file_hash_mismatch", f"{path / f.name} is missing") from None
            if hashlib.sha256(data).hexdigest() != f.sha256:
                raise ModelRejected("file_hash_mismatch", f"{path / f.name} changed on disk")

    def _load_checked(self, task: str, path: Path, digest: str) -> Any:
        self._verify_dir(path, digest)
        model = self.loaders[task](path)
        if self.health_check is not None:
            self.health_check(task, model)
        return model

    # ------------------------------------------------------------------ activate

    async def _load_into(self, task: str, name: str, version: str, digest: str) -> None:
        path = self.root / name / version
        model = await asyncio.to_thread(self._load_checked, task, path, digest)
        self._active[task] = ActiveModel(name, version, digest, path, model)

    def _write_pointer(self, task: str, cur: Mapping[str, str], prev: Mapping[str, str] | None) -> None:
        ptr = {"name": cur["name"], "version": cur["version"], "digest": cur["digest"],
               "previous": dict(prev) if prev else None}
        _atomic_write(self.root / "active" / f"{task}.json", json.dumps(ptr, indent=1).encode())

    async def _activate(self, task: str, ref: ModelRef, path: Path) -> None:
        old = self._active.get(task)
        try:
            model = await asyncio.to_thread(self._load_checked, task, path, ref.digest)
        except ModelRejected:
            raise
        except Exception as exc:
            self.stats.rollbacks += 1
            self._refused[ref.digest] = f"{type(exc).__name__}: {exc}"
            with contextlib.suppress(OSError):
                if old is None or old.path != path:
                    shutil.rmtree(path)
            err = f"{ref.name}@{ref.version} failed to load or health check: {type(exc).__name__}: {exc}"
            log.error("%s model: %s; %s", task, err, f"kept {old.version}" if old else "nothing to keep")
            self._set_status(task, "rolled_back" if old else "failed", error=err, ref=ref)
            return
        cur = {"name": ref.name, "version": ref.version, "digest": ref.digest}
        prev = {"name": old.name, "version": old.version, "digest": old.digest} if old else None
        # No await from here to the swap: a cancellation cannot leave pointer and memory disagreeing.
        self._write_pointer(task, cur, prev)
        self._record_activation(ref)
        self._active[task] = ActiveModel(ref.name, ref.version, ref.digest, path, model)
        self.stats.activations += 1
        self._set_status(task, "active", previous=old.version if old else None)
        log.info("%s model now %s@%s (previous %s)", task, ref.name, ref.version, prev)
        self._prune()

    def _record_activation(self, ref: ModelRef) -> None:
        path = self._history_path(ref.name)
        hist = _read_json(path) or {}
        highest = hist.get("highest")
        if highest is None or version_key(ref.version) > version_key(highest):
            highest = ref.version
        activated = [*[d for d in hist.get("activated", []) if d != ref.digest][-99:], ref.digest]
        _atomic_write(path, json.dumps({"highest": highest, "activated": activated}, indent=1).encode())

    def _prune(self) -> None:
        """Keep only versions some task's pointer names (active + previous); drop everything else."""
        keep: set[Path] = set()
        for ptr_path in (self.root / "active").glob("*.json"):
            ptr = _read_json(ptr_path) or {}
            for entry in (ptr, ptr.get("previous") or {}):
                if "name" in entry:
                    keep.add(self.root / entry["name"] / entry["version"])
        keep |= set(self._busy)  # what another task's convergence is about to unpack or load
        wanted = {self._partial_dir(d) for d, t in self._transfers.values() if not t.done()} | set(self._busy)
        pdir = self.root / ".partial"
        for partial in pdir.iterdir() if pdir.is_dir() else []:
            if partial not in wanted:  # superseded downloads; the running one keeps its chunks
                shutil.rmtree(partial, ignore_errors=True)
        for name_dir in self.root.iterdir():
            if name_dir.name in {"active", ".partial"} or not name_dir.is_dir():
                continue
            for vdir in name_dir.iterdir():
                if vdir.is_dir() and not vdir.name.startswith(".") and vdir not in keep:
                    shutil.rmtree(vdir, ignore_errors=True)


# --------------------------------------------------------------------------- defaults for the agent


def default_loaders() -> dict[str, Loader]:
    """Loaders for the agent's two task slots (imported lazily: onnxruntime starts only when needed)."""

    def chat(path: Path) -> Any:
        from edge_agent.models.chat_runtime import ChatModel

        return ChatModel(path)

    def sensor(path: Path) -> Any:
        from edge_agent.models.sensor_runtime import SensorModel

        return SensorModel(path).load()

    return {"chat": chat, "sensor": sensor}


def default_health_check(task: str, model: Any) -> None:
    """Run one canned input; raise if it errors or yields a non-finite output."""
    import math

    import numpy as np

    if task == "chat":
        conf = float(model.predict("what is the weather tomorrow").confidence)
        if not math.isfinite(conf):
            raise ValueError(f"chat model returned confidence {conf}")
    elif task == "sensor":
        score = model.score(np.zeros((1, model.spec.n_features), dtype=np.float32))
        if not np.all(np.isfinite(score)):
            raise ValueError("sensor model returned a non-finite score")
