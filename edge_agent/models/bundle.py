"""Model bundles: one directory per model version, verified before use.

Layout::

    model.onnx      int8 ONNX graph (weights inlined)
    labels.json     {"intents": [...], "tags": [...]}
    vocab.json      tokenizer (see :mod:`edge_agent.models.tokenizer`)
    manifest.json   name, task, version, created, sha256 of every file, metrics, parent version

The manifest lists the sha256 of every payload file; :func:`load_bundle`
re-hashes each one and refuses the bundle on any mismatch, missing file or
malformed JSON, so a truncated download or a flipped bit never reaches
onnxruntime. The Ed25519 ``signature`` field is reserved here and filled and
checked by the signing layer.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edge_agent.protocol.errors import PermanentError

__all__ = [
    "MANIFEST",
    "REQUIRED_FILES",
    "Bundle",
    "BundleError",
    "BundleManifest",
    "load_bundle",
    "read_regular_file",
    "sha256_bytes",
    "write_bundle",
]

MANIFEST = "manifest.json"
REQUIRED_FILES = ("model.onnx", "labels.json", "vocab.json")


class BundleError(PermanentError):
    """The bundle is unusable: missing file, digest mismatch, bad JSON or bad manifest.

    Permanent for *this copy* of the bundle: loading it again fails the same way;
    the delivery layer decides whether to re-download or roll back.
    """


class BundleManifest(BaseModel):
    """``manifest.json``. Unknown keys are ignored so an older agent can read a newer cloud's bundle."""

    model_config = ConfigDict(extra="ignore")

    name: str = Field(min_length=1)
    task: str = Field(min_length=1)
    version: str = Field(min_length=1)
    created: datetime
    files: dict[str, str] = Field(description="bundle file name -> sha256 hex digest")
    metrics: dict[str, float] = Field(default_factory=dict)
    parent_version: str | None = None
    extra: dict[str, Any] = Field(default_factory=dict, description="architecture, training recipe, ...")
    signature: str | None = Field(default=None, description="Ed25519 signature (base64); set by the signer")


@dataclass(frozen=True)
class Bundle:
    """A verified bundle; ``model_bytes`` is exactly what was hashed (no re-read between check and use)."""

    path: Path
    manifest: BundleManifest
    labels: dict[str, Any]
    vocab: dict[str, Any]
    model_bytes: bytes


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_regular_file(path: str | Path) -> bytes:
    """The bytes of ``path``, refusing a symlink or anything but a regular file.

    A bundle is signed and shipped to every node, so a link planted in a bundle
    directory (``model.onnx -> ~/.ssh/id_ed25519``) must never pull an unrelated
    file into the archive. ``O_NOFOLLOW`` makes the check and the read one step.
    """
    p = Path(path)
    if p.is_symlink():
        raise BundleError(f"{p} is a symlink; a bundle holds regular files only (links are not followed)")
    try:
        fd = os.open(p, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as exc:  # ELOOP: replaced by a link between the check and the open
        if p.is_symlink():
            raise BundleError(f"{p} is a symlink; a bundle holds regular files only") from exc
        raise
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise BundleError(f"{p} is not a regular file; a bundle holds regular files only")
        return f.read()


def _check_name(name: str) -> None:
    if name == MANIFEST or "/" in name or "\\" in name or name in {"", ".", ".."}:
        raise BundleError(f"invalid bundle file name {name!r}")


def write_bundle(
    directory: str | Path, files: Mapping[str, bytes | str | Path], manifest_fields: Mapping[str, Any]
) -> Path:
    """Write ``files`` (name -> bytes or source path) and a manifest with their digests into ``directory``.

    ``manifest_fields`` supplies name, task, version, metrics, parent_version,
    extra (``created`` defaults to now, UTC). The bundle is assembled in a
    temporary sibling directory and renamed into place, so readers never see
    half a bundle. ``directory`` must not exist yet (versions are immutable).
    """
    target = Path(directory)
    if target.exists():
        raise BundleError(f"bundle directory {target} already exists; bundle versions are immutable")
    missing = [f for f in REQUIRED_FILES if f not in files]
    if missing:
        raise BundleError(f"bundle needs {', '.join(missing)}")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        digests: dict[str, str] = {}
        for name, src in files.items():
            _check_name(name)
            data = src if isinstance(src, bytes) else read_regular_file(src)
            (tmp / name).write_bytes(data)
            digests[name] = sha256_bytes(data)
        fields = {"created": datetime.now(UTC), **dict(manifest_fields), "files": digests}
        try:
            manifest = BundleManifest.model_validate(fields)
        except ValidationError as exc:
            raise BundleError(f"invalid manifest fields: {exc}") from exc
        (tmp / MANIFEST).write_text(manifest.model_dump_json(indent=2), encoding="utf-8")
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def _json(path: Path, data: bytes) -> Any:
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{path}: not valid JSON ({exc})") from exc


def load_bundle(directory: str | Path) -> Bundle:
    """Read and verify a bundle; raise :class:`BundleError` naming the offending file on any problem."""
    root = Path(directory)
    mpath = root / MANIFEST
    if not mpath.is_file() and not mpath.is_symlink():
        raise BundleError(f"{mpath}: manifest missing")
    raw = _json(mpath, read_regular_file(mpath))
    try:
        manifest = BundleManifest.model_validate(raw)
    except ValidationError as exc:
        raise BundleError(f"{mpath}: invalid manifest: {exc}") from exc
    missing = [f for f in REQUIRED_FILES if f not in manifest.files]
    if missing:
        raise BundleError(f"{mpath}: manifest does not list {', '.join(missing)}")
    contents: dict[str, bytes] = {}
    for name, digest in manifest.files.items():
        _check_name(name)
        fpath = root / name
        if not fpath.is_file() and not fpath.is_symlink():
            raise BundleError(f"{fpath}: file listed in the manifest is missing")
        data = read_regular_file(fpath)
        actual = sha256_bytes(data)
        if actual != digest.lower():
            raise BundleError(f"{fpath}: sha256 mismatch (manifest {digest}, file {actual})")
        contents[name] = data
    labels = _json(root / "labels.json", contents["labels.json"])
    vocab = _json(root / "vocab.json", contents["vocab.json"])
    if not isinstance(labels, dict) or not isinstance(vocab, dict):
        raise BundleError(f"{root}: labels.json and vocab.json must be JSON objects")
    return Bundle(root, manifest, labels, vocab, contents["model.onnx"])
