"""Activation: unpack and verify on disk, load and health-check, swap atomically, prune.

The whole archive and every file are hashed again while unpacking into a temp dir
that is renamed into ``models/{name}/{version}/``. The new model is loaded and
health-checked in a worker thread while the old one keeps serving; only then is
the per-task pointer replaced (see :mod:`edge_agent.updates.rollback`) and the
in-memory model swapped. Two versions per task stay on disk.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from edge_agent.protocol.errors import ModelRejected
from edge_agent.protocol.manifest import ReleaseManifest, manifest_digest, verify_manifest
from edge_agent.protocol.messages import ModelRef
from edge_agent.updates.download import chunk_path
from edge_agent.updates.durable_files import fsync_dir
from edge_agent.updates.rollback import SLOTS_DIR, pointers

__all__ = [
    "RELEASE_FILE",
    "HealthCheck",
    "Loader",
    "default_health_check",
    "default_loaders",
    "installed",
    "load_checked",
    "prune",
    "unpack",
    "verify_installed",
]

log = logging.getLogger(__name__)

Loader = Callable[[Path], Any]
HealthCheck = Callable[[str, Any], None]
RELEASE_FILE = "release.json"


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


def installed(root: Path, ref: ModelRef) -> Path | None:
    """The unpacked release of ``ref`` if it is already on disk (a rollback needs no download)."""
    path = root / ref.name / ref.version
    rel = path / RELEASE_FILE
    if rel.is_file() and manifest_digest(rel.read_bytes()) == ref.digest:
        return path
    return None


def unpack(root: Path, m: ReleaseManifest, partial: Path, digest: str) -> Path:
    """Stream the chunks into the files, hashing both; rename the finished dir into place."""
    base = root / m.name
    base.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{m.version}-", dir=base))
    try:
        reader = _ChunkReader([chunk_path(partial, i) for i in range(len(m.archive.chunks))])
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
        fsync_dir(base)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(partial, ignore_errors=True)
    log.info("unpacked %s@%s (%s)", m.name, m.version, digest)
    return target


def verify_installed(path: Path, digest: str, public_keys: Mapping[str, bytes]) -> None:
    """Re-verify an installed release (boot, rollback): signature, digest, every file's sha256."""
    try:
        payload = (path / RELEASE_FILE).read_bytes()
    except FileNotFoundError:
        raise ModelRejected("malformed", f"{path} has no {RELEASE_FILE}") from None
    m = verify_manifest(payload, public_keys, digest)
    for f in m.files:
        try:
            data = (path / f.name).read_bytes()
        except FileNotFoundError:
            raise ModelRejected("file_hash_mismatch", f"{path / f.name} is missing") from None
        if hashlib.sha256(data).hexdigest() != f.sha256:
            raise ModelRejected("file_hash_mismatch", f"{path / f.name} changed on disk")


def load_checked(
    task: str,
    path: Path,
    digest: str,
    public_keys: Mapping[str, bytes],
    loader: Loader,
    health_check: HealthCheck | None,
) -> Any:
    """Verify the files again, load, health-check: runs in a worker thread while the old model serves."""
    verify_installed(path, digest, public_keys)
    model = loader(path)
    if health_check is not None:
        health_check(task, model)
    return model


def prune(root: Path, busy: Iterable[Path], downloading: Iterable[Path]) -> None:
    """Keep only versions some task's pointer names (active + previous); drop everything else.

    ``busy``: directories a convergence is about to unpack or load; ``downloading``: partial
    downloads of transfers still running.
    """
    busy = set(busy)
    keep: set[Path] = set()
    for _task, ptr in pointers(root):
        for entry in (ptr, ptr.get("previous") or {}):
            if "name" in entry:
                keep.add(root / entry["name"] / entry["version"])
    keep |= busy  # what another task's convergence is about to unpack or load
    wanted = set(downloading) | busy
    pdir = root / ".partial"
    for partial in pdir.iterdir() if pdir.is_dir() else []:
        if partial not in wanted:  # superseded downloads; the running one keeps its chunks
            shutil.rmtree(partial, ignore_errors=True)
    for name_dir in root.iterdir():
        if name_dir.name in {"active", ".partial", SLOTS_DIR} or not name_dir.is_dir():
            continue
        for vdir in name_dir.iterdir():
            if vdir.is_dir() and not vdir.name.startswith(".") and vdir not in keep:
                shutil.rmtree(vdir, ignore_errors=True)


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
