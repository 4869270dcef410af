"""Verify signed model releases on the edge before a single large byte is trusted.

A release is described by one *release manifest* (JSON, published retained on
:func:`edge_agent.protocol.topics.manifest_topic`). It names the bundle files
with their sha256 and size, the archive they form (the files concatenated in
manifest order, so unpacking needs no parser that an attacker could aim at), and
the sha256 of every transfer chunk. The controller signs the canonical JSON of
the manifest without its ``signature`` field with Ed25519; the node checks it
against a *pinned* public key chosen by ``key_id`` and refuses everything else.

The checks run cheapest-and-most-decisive first: the manifest's sha256 against
the digest the desired state asks for, then the signature, then per-chunk
hashes as chunks arrive, then the whole archive and each file. Every refusal is
a :class:`~edge_agent.protocol.errors.ModelRejected` with a stable reason label for status and metrics.

Version ordering (replay protection) is natural order: a version is split into
runs of digits and non-digits and compared run by run, digits as integers, so
``2 < 10``, ``1.9 < 1.10`` and ``student-1715000000 < student-1715000500``.
Equal keys (``1.0`` vs ``1.0``) are *not* newer. Pre-release suffixes are not
special-cased: use plain increasing numbers.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import json
import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, model_validator

from edge_agent.protocol.errors import ModelRejected
from edge_agent.protocol.topics import ID_PATTERN

__all__ = [
    "ARCHIVE_FORMAT",
    "MANIFEST_SCHEMA",
    "MAX_MANIFEST_BYTES",
    "ArchiveInfo",
    "FileEntry",
    "ReleaseManifest",
    "canonical_json",
    "check_newer",
    "key_id",
    "load_public_key",
    "manifest_digest",
    "parse_manifest",
    "sha256_hex",
    "task_slot",
    "verify_manifest",
    "version_key",
]

MANIFEST_SCHEMA = "edgeloop.release/v1"
ARCHIVE_FORMAT = "concat-v1"
MAX_MANIFEST_BYTES = 1024 * 1024
MAX_CHUNKS = 1 << 16

SafeId = Annotated[str, StringConstraints(pattern=ID_PATTERN.pattern)]
Hex64 = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]


# --------------------------------------------------------------------------- schema


class _Frozen(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


class FileEntry(_Frozen):
    name: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")]
    sha256: Hex64
    size: Annotated[int, Field(ge=0)]


class ArchiveInfo(_Frozen):
    format: Literal["concat-v1"]
    sha256: Hex64
    size: Annotated[int, Field(ge=0)]
    chunk_size: Annotated[int, Field(ge=1024, le=16 * 1024 * 1024)]
    chunks: Annotated[list[Hex64], Field(max_length=MAX_CHUNKS)]

    @model_validator(mode="after")
    def _count(self) -> ArchiveInfo:
        expected = -(-self.size // self.chunk_size)
        if len(self.chunks) != expected:
            raise ValueError(f"{len(self.chunks)} chunk digests for {self.size} bytes in {self.chunk_size}s")
        return self

    def chunk_length(self, index: int) -> int:
        return min(self.chunk_size, self.size - index * self.chunk_size)


class ReleaseManifest(BaseModel):
    """The signed description of one release. Unknown keys are kept (and signed) but ignored."""

    model_config = ConfigDict(strict=True, extra="allow", frozen=True)

    schema_: Literal["edgeloop.release/v1"] = Field(alias="schema")
    name: SafeId
    task: Literal["chat", "sensor"]
    bundle_task: str
    version: SafeId
    created: str
    parent_version: str | None = None
    metrics: dict[str, float] = Field(default_factory=dict)
    files: Annotated[list[FileEntry], Field(min_length=1, max_length=64)]
    archive: ArchiveInfo
    key_id: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{16}$")]
    signature: str

    @model_validator(mode="after")
    def _consistent(self) -> ReleaseManifest:
        names = [f.name for f in self.files]
        if len(set(names)) != len(names):
            raise ValueError("duplicate file names")
        if "release.json" in names:
            raise ValueError("release.json is reserved")
        if sum(f.size for f in self.files) != self.archive.size:
            raise ValueError("file sizes do not add up to the archive size")
        return self


# --------------------------------------------------------------------------- helpers


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def manifest_digest(payload: bytes) -> str:
    """The ``ModelRef.digest`` of a published manifest: sha256 of its exact bytes."""
    return f"sha256:{sha256_hex(payload)}"


def canonical_json(obj: Any) -> bytes:
    """The bytes that are signed: sorted keys, no whitespace, UTF-8, no NaN (both ends are Python)."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return text.encode()


def key_id(public_raw: bytes) -> str:
    """Short stable name of a public key: first 16 hex of sha256 of its 32 raw bytes."""
    return sha256_hex(public_raw)[:16]


# DER prefix of an Ed25519 SubjectPublicKeyInfo (RFC 8410): SEQUENCE { SEQUENCE { OID 1.3.101.112 },
# BIT STRING of 32 bytes }. Every Ed25519 public key in PEM is this prefix plus the raw key.
_ED25519_SPKI = bytes.fromhex("302a300506032b6570032100")
_PEM_KEY = re.compile(rb"-----BEGIN PUBLIC KEY-----([A-Za-z0-9+/=\s]+)-----END PUBLIC KEY-----")


def load_public_key(data: bytes) -> bytes:
    """Raw 32-byte Ed25519 public key from PEM, base64 or raw bytes (what nodes pin in config).

    The common PEM form is read without ``cryptography``: importing it costs the agent ~7 MB of
    resident memory (its Rust extension and OpenSSL bindings), which a node running no model
    should not pay at start; it is imported when a manifest's signature is checked.
    """
    if data.lstrip().startswith(b"-----BEGIN"):
        m = _PEM_KEY.search(data)
        if m is not None:
            with contextlib.suppress(binascii.Error, ValueError):
                der = base64.b64decode(b"".join(m.group(1).split()), validate=True)
                if len(der) == len(_ED25519_SPKI) + 32 and der.startswith(_ED25519_SPKI):
                    return der[len(_ED25519_SPKI) :]
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

        key = serialization.load_pem_public_key(data)
        if not isinstance(key, Ed25519PublicKey):
            raise ValueError("not an Ed25519 public key")
        return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    if len(data) == 32:
        return data
    raw = base64.b64decode(data.strip(), validate=True)
    if len(raw) != 32:
        raise ValueError("an Ed25519 public key has 32 bytes")
    return raw


def task_slot(bundle_task: str) -> Literal["chat", "sensor"]:
    """The agent's task slot for a bundle's own task label (``sensor-anomaly`` -> ``sensor``)."""
    if bundle_task == "sensor" or bundle_task.startswith("sensor-"):
        return "sensor"
    if bundle_task in {"chat", "intent-slots"} or bundle_task.startswith("chat-"):
        return "chat"
    raise ModelRejected("malformed", f"unknown bundle task {bundle_task!r}")


_TOKENS = re.compile(r"\d+|\D+")


def version_key(version: str) -> tuple[tuple[int, int, str], ...]:
    """Natural-order key (see module docstring); digits compare as integers, below any text."""
    return tuple((0, int(t), "") if t.isdigit() else (1, 0, t) for t in _TOKENS.findall(version))


def check_newer(version: str, highest: str | None) -> None:
    if highest is not None and version_key(version) <= version_key(highest):
        raise ModelRejected("not_newer", f"version {version} is not newer than {highest}, already activated")


# --------------------------------------------------------------------------- verification


def parse_manifest(payload: bytes) -> tuple[ReleaseManifest, dict[str, Any]]:
    """Parse and validate; returns the model and the raw dict (the signature covers the raw dict)."""
    if len(payload) > MAX_MANIFEST_BYTES:
        raise ModelRejected("malformed", f"manifest of {len(payload)} bytes exceeds {MAX_MANIFEST_BYTES}")
    try:
        raw = json.loads(payload)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise ModelRejected("malformed", f"manifest is not JSON: {exc}") from exc
    if not isinstance(raw, dict):
        raise ModelRejected("malformed", "manifest is not a JSON object")
    try:
        return ReleaseManifest.model_validate(raw), raw
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "<root>"
        raise ModelRejected("malformed", f"{where}: {first['msg']}") from exc


def verify_signature(raw: Mapping[str, Any], public_keys: Mapping[str, bytes]) -> None:
    kid = raw.get("key_id")
    if not isinstance(kid, str) or kid not in public_keys:
        raise ModelRejected("unknown_key", f"manifest signed with key {kid!r}, which is not pinned")
    sig_b64 = raw.get("signature")
    try:
        sig = base64.b64decode(str(sig_b64), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ModelRejected("bad_signature", "signature is not base64") from exc
    body = {k: v for k, v in raw.items() if k != "signature"}
    from cryptography.exceptions import InvalidSignature  # lazily: see load_public_key
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        Ed25519PublicKey.from_public_bytes(public_keys[kid]).verify(sig, canonical_json(body))
    except (InvalidSignature, ValueError) as exc:
        raise ModelRejected("bad_signature", f"Ed25519 signature does not verify with key {kid}") from exc


def verify_manifest(
    payload: bytes, public_keys: Mapping[str, bytes], expected_digest: str | None = None
) -> ReleaseManifest:
    """Digest (if pinned by desired state), then schema, then signature: all before any chunk is fetched."""
    if expected_digest is not None and manifest_digest(payload) != expected_digest:
        raise ModelRejected(
            "digest_mismatch", f"manifest digest {manifest_digest(payload)} != desired {expected_digest}"
        )
    manifest, raw = parse_manifest(payload)
    verify_signature(raw, public_keys)
    return manifest
