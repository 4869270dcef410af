"""Content-addressed artifact stores for signed model releases: the release logic and the file backend.

:class:`ReleaseStore` holds what every backend shares (verify and sign a bundle,
refuse to re-release a version differently, rebuild chunks, retention); a
backend supplies blobs and release refs. Two backends: :class:`ArtifactStore`,
files under a directory (the embedded default), and
:class:`~cloud_controller.releases.pg_artifacts.PgArtifactStore`, chunked
``bytea`` rows in the shared PostgreSQL (a cluster: every replica and every
restarted pod sees the same releases; chosen by ``store_dsn`` in
:mod:`cloud_controller.releases.artifact_backends`). Both check a blob's sha256
on every read.

The file backend's layout under ``root``::

    objects/sha256/ab/cdef...      immutable blobs: bundle files and signed release manifests
    releases/{name}/{version}      text: the release's manifest digest (``sha256:...``)

Blobs are named by their sha256, so a labels.json or vocab.json shared by many
versions is stored once, and a blob is written by temp file + rename, so a
crash never leaves a half blob under a valid name. A release is immutable:
putting the same name and version again is a no-op when the signed manifest is
byte-identical (Ed25519 signatures are deterministic and ``created`` comes from
the bundle, so re-running a release is idempotent) and an error otherwise,
because nodes may already hold chunks of the first one.

The archive is the bundle's files concatenated in manifest order (format
``concat-v1``): deterministic by construction, and the edge needs no archive
parser, only the sizes and hashes the signed manifest already carries.
"""

from __future__ import annotations

import hashlib
import os
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cloud_controller.releases.signing import sign_manifest
from cloud_controller.resources.store_protocol import API_VERSION
from edge_agent.models.bundle import MANIFEST, load_bundle, read_regular_file
from edge_agent.protocol.manifest import (
    ARCHIVE_FORMAT,
    MANIFEST_SCHEMA,
    canonical_json,
    manifest_digest,
    parse_manifest,
    task_slot,
    version_key,
)
from edge_agent.protocol.messages import ModelRef
from edge_agent.protocol.topics import release_prefix
from edge_agent.updates.durable_files import atomic_write

__all__ = ["DEFAULT_CHUNK_SIZE", "ArtifactError", "ArtifactStore", "Release", "ReleaseStore"]

DEFAULT_CHUNK_SIZE = 64 * 1024


class ArtifactError(Exception):
    """The store cannot accept or find a release (immutability conflict, missing blob, bad bundle)."""


@dataclass(frozen=True)
class Release:
    name: str
    task: str  # agent task slot: "chat" | "sensor"
    version: str
    manifest: bytes  # the signed manifest exactly as published
    digest: str  # "sha256:..." of ``manifest``: what ModelRef.digest pins
    size: int  # archive bytes
    chunks: int
    chunk_size: int
    parsed: dict[str, Any]

    def model_ref(self) -> ModelRef:
        return ModelRef.model_validate(
            {
                "name": self.name,
                "task": self.task,
                "version": self.version,
                "digest": self.digest,
                "size": self.size,
                "chunks": self.chunks,
            }
        )


def _hex(digest: str) -> str:
    return digest.removeprefix("sha256:")


class ReleaseStore(ABC):
    """Signed releases over a backend's blobs and refs; no I/O until a method is called."""

    chunk_size: int = DEFAULT_CHUNK_SIZE

    # ------------------------------------------------------------------ the backend's part

    @abstractmethod
    def put_blob(self, data: bytes) -> str:
        """Store ``data`` under its sha256 (hex, returned); storing it again is a no-op."""

    @abstractmethod
    def get_blob(self, hexdigest: str) -> bytes:
        """The blob, its sha256 checked; :class:`ArtifactError` when missing or corrupt."""

    @abstractmethod
    def release_uri(self, name: str, version: str) -> str:
        """Where an EdgeModel says the release lives (``spec.uri``)."""

    @abstractmethod
    def _read_ref(self, name: str, version: str) -> str | None: ...

    @abstractmethod
    def _claim_ref(self, name: str, version: str, digest: str) -> str:
        """Set the ref unless it exists; the digest it holds afterwards (first writer wins)."""

    @abstractmethod
    def _delete_ref(self, name: str, version: str) -> None: ...

    @abstractmethod
    def _versions(self, name: str) -> list[str]: ...

    @abstractmethod
    def _all_refs(self) -> list[str]:
        """The manifest digest of every release of every name."""

    @abstractmethod
    def _blob_hexes(self) -> Iterable[str]: ...

    @abstractmethod
    def _delete_blob(self, hexdigest: str) -> None: ...

    # ------------------------------------------------------------------ resources

    def edge_model(
        self,
        rel: Release,
        *,
        namespace: str = "default",
        name: str | None = None,
        labels: dict[str, str] | None = None,
        metrics: dict[str, float] | None = None,
        **spec: Any,
    ) -> dict[str, Any]:
        """The ``EdgeModel`` that pins ``rel``: digest, size, signature and this store's URI.

        One place for it: the DistillationJob reconciler, the operator CLI path of
        the demo and the fleet bench all publish releases the same way.
        """
        return {
            "apiVersion": API_VERSION,
            "kind": "EdgeModel",
            "metadata": {
                "name": name or f"{rel.name}-{rel.version}",
                "namespace": namespace,
                "labels": {"edgeloop.io/model": rel.name, **(labels or {})},
            },
            "spec": {
                "model": rel.name,
                "task": rel.task,
                "version": rel.version,
                "digest": rel.digest,
                "sizeBytes": rel.size,
                "uri": self.release_uri(rel.name, rel.version),
                "signature": rel.parsed["signature"],
                "keyId": rel.parsed["key_id"],
                "metrics": dict(metrics or {}),
                **spec,
            },
        }

    # ------------------------------------------------------------------ releases

    def put_bundle(
        self,
        bundle_dir: str | Path,
        private_key: Ed25519PrivateKey,
        *,
        chunk_size: int | None = None,
        task: str | None = None,
    ) -> Release:
        """Verify a bundle directory, sign its release manifest, store blobs and the ref."""
        try:
            bundle = load_bundle(bundle_dir)
        except Exception as exc:
            raise ArtifactError(f"bundle {bundle_dir} does not verify: {exc}") from exc
        bm = bundle.manifest
        size_per_chunk = chunk_size or self.chunk_size
        root = Path(bundle_dir)
        names = sorted({*bm.files, MANIFEST})
        contents = {n: read_regular_file(root / n) for n in names}  # never follows a link
        if contents["model.onnx"] != bundle.model_bytes:
            raise ArtifactError(f"{bundle_dir}: model.onnx changed while it was being released")
        archive = b"".join(contents[n] for n in names)
        chunks = [archive[i : i + size_per_chunk] for i in range(0, len(archive), size_per_chunk)]
        body: dict[str, Any] = {
            "schema": MANIFEST_SCHEMA,
            "name": bm.name,
            "task": task or task_slot(bm.task),
            "bundle_task": bm.task,
            "version": bm.version,
            "created": bm.created.isoformat(),
            "parent_version": bm.parent_version,
            "metrics": dict(bm.metrics),
            "files": [
                {"name": n, "sha256": hashlib.sha256(contents[n]).hexdigest(), "size": len(contents[n])}
                for n in names
            ],
            "archive": {
                "format": ARCHIVE_FORMAT,
                "sha256": hashlib.sha256(archive).hexdigest(),
                "size": len(archive),
                "chunk_size": size_per_chunk,
                "chunks": [hashlib.sha256(c).hexdigest() for c in chunks],
            },
        }
        manifest_bytes = canonical_json(sign_manifest(body, private_key))
        parse_manifest(manifest_bytes)  # the edge's schema must accept what we publish
        digest = manifest_digest(manifest_bytes)
        release_prefix(bm.name, bm.version)  # both must be safe single path and topic levels
        existing = self._read_ref(bm.name, bm.version)
        if existing is None:
            for n in names:
                self.put_blob(contents[n])
            self.put_blob(manifest_bytes)
            existing = self._claim_ref(bm.name, bm.version, digest)
        if existing != digest:
            raise ArtifactError(
                f"{bm.name}@{bm.version} was already released as {existing}; versions are immutable"
            )
        return self._release(manifest_bytes)

    def _release(self, manifest_bytes: bytes) -> Release:
        m, raw = parse_manifest(manifest_bytes)
        return Release(
            name=m.name,
            task=m.task,
            version=m.version,
            manifest=manifest_bytes,
            digest=manifest_digest(manifest_bytes),
            size=m.archive.size,
            chunks=len(m.archive.chunks),
            chunk_size=m.archive.chunk_size,
            parsed=raw,
        )

    def get(self, name: str, version: str) -> Release:
        release_prefix(name, version)
        digest = self._read_ref(name, version)
        if digest is None:
            raise ArtifactError(f"no release {name}@{version}")
        return self._release(self.get_blob(digest))

    def releases(self, name: str) -> list[Release]:
        """Every stored release of ``name``, oldest first by version order."""
        return [self.get(name, v) for v in sorted(self._versions(name), key=version_key)]

    def iter_chunks(self, release: Release) -> Iterator[bytes]:
        """Chunk i of the archive, rebuilt from the file blobs (chunks are never stored twice)."""
        m, _ = parse_manifest(release.manifest)
        archive = b"".join(self.get_blob(f.sha256) for f in m.files)
        if hashlib.sha256(archive).hexdigest() != m.archive.sha256:
            raise ArtifactError(f"{release.name}@{release.version}: archive does not match its manifest")
        step = m.archive.chunk_size
        for i in range(len(m.archive.chunks)):
            yield archive[i * step : (i + 1) * step]

    # ------------------------------------------------------------------ retention

    def retain(self, name: str, keep: int = 3) -> list[Release]:
        """Drop all but the newest ``keep`` releases of ``name`` and garbage-collect unreferenced blobs."""
        if keep < 1:
            raise ValueError("keep at least one release")
        old = self.releases(name)[:-keep]
        for r in old:
            self._delete_ref(r.name, r.version)
        if old:
            self.gc()
        return old

    def gc(self) -> int:
        """Mark blobs reachable from any release ref, sweep the rest; returns blobs removed."""
        live: set[str] = set()
        for ref in self._all_refs():
            digest = _hex(ref)
            live.add(digest)
            m, _ = parse_manifest(self.get_blob(digest))
            live.update(f.sha256 for f in m.files)
        removed = 0
        for hexdigest in list(self._blob_hexes()):
            if hexdigest not in live:
                self._delete_blob(hexdigest)
                removed += 1
        return removed


class ArtifactStore(ReleaseStore):
    """Blobs and release refs on a local disk (the embedded controller's default)."""

    def __init__(self, root: str | Path, chunk_size: int = DEFAULT_CHUNK_SIZE) -> None:
        self.root = Path(root)
        self.chunk_size = chunk_size

    def release_uri(self, name: str, version: str) -> str:
        return (self.root / "releases" / name / version).resolve().as_uri()

    # ------------------------------------------------------------------ blobs

    def _blob_path(self, hexdigest: str) -> Path:
        return self.root / "objects" / "sha256" / hexdigest[:2] / hexdigest[2:]

    def put_blob(self, data: bytes) -> str:
        hexdigest = hashlib.sha256(data).hexdigest()
        path = self._blob_path(hexdigest)
        if path.exists():
            return hexdigest
        atomic_write(path, data)  # whole or absent; named by content, so a rewrite is the same bytes
        return hexdigest

    def get_blob(self, hexdigest: str) -> bytes:
        path = self._blob_path(_hex(hexdigest))
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise ArtifactError(f"blob {hexdigest} missing from {self.root}") from None
        if hashlib.sha256(data).hexdigest() != _hex(hexdigest):
            raise ArtifactError(f"blob {hexdigest} is corrupt on disk")
        return data

    def _ref_path(self, name: str, version: str) -> Path:
        release_prefix(name, version)  # both must be safe single path and topic levels
        return self.root / "releases" / name / version

    def _read_ref(self, name: str, version: str) -> str | None:
        ref = self._ref_path(name, version)
        return ref.read_text().strip() if ref.exists() else None

    def _claim_ref(self, name: str, version: str, digest: str) -> str:
        ref = self._ref_path(name, version)
        if not ref.exists():
            ref.parent.mkdir(parents=True, exist_ok=True)
            tmp = ref.with_name(f".{ref.name}.tmp")
            tmp.write_text(digest + "\n")
            os.replace(tmp, ref)
        return ref.read_text().strip()

    def _delete_ref(self, name: str, version: str) -> None:
        self._ref_path(name, version).unlink(missing_ok=True)

    def _versions(self, name: str) -> list[str]:
        d = self.root / "releases" / name
        return [p.name for p in d.iterdir() if not p.name.startswith(".")] if d.is_dir() else []

    def _all_refs(self) -> list[str]:
        rel_root = self.root / "releases"
        refs = rel_root.glob("*/*") if rel_root.is_dir() else []
        return [ref.read_text().strip() for ref in refs if not ref.name.startswith(".")]

    def _blob_hexes(self) -> Iterable[str]:
        obj_root = self.root / "objects" / "sha256"
        for path in obj_root.glob("*/*") if obj_root.is_dir() else []:
            if not path.name.startswith("."):
                yield path.parent.name + path.name

    def _delete_blob(self, hexdigest: str) -> None:
        self._blob_path(hexdigest).unlink(missing_ok=True)
