"""Targets on model delivery: signed manifests and chunks, against a real signed release."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import strategies as st

from cloud_controller.releases.signing import public_key_id, sign_manifest
from edge_agent.protocol import manifest as verify
from edge_agent.protocol import topics
from edge_agent.protocol.errors import ModelRejected
from edgeloop_sim.harness.fuzz.mutation import mutated_json, raw_bytes
from edgeloop_sim.harness.fuzz.target_base import FuzzTarget

# ---- model manifests and chunks: a real signed release to mutate


_KEY = Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"edgeloop-fuzz").digest())
_PUB = _KEY.public_key().public_bytes_raw()
KEYS = {public_key_id(_KEY): _PUB}
CHUNK_SIZE = 1024
ARCHIVE = bytes(range(256)) * 10  # 2560 bytes: chunks of 1024, 1024, 512
CHUNKS = [ARCHIVE[i : i + CHUNK_SIZE] for i in range(0, len(ARCHIVE), CHUNK_SIZE)]


def _manifest_dict() -> dict[str, Any]:
    return {
        "schema": "edgeloop.release/v1",
        "name": "intent",
        "task": "chat",
        "bundle_task": "chat",
        "version": "1.0.0",
        "created": "2024-01-01T00:00:00Z",
        "metrics": {"f1": 0.9},
        "files": [
            {"name": "model.onnx", "sha256": hashlib.sha256(ARCHIVE).hexdigest(), "size": len(ARCHIVE)}
        ],
        "archive": {
            "format": "concat-v1",
            "sha256": hashlib.sha256(ARCHIVE).hexdigest(),
            "size": len(ARCHIVE),
            "chunk_size": CHUNK_SIZE,
            "chunks": [hashlib.sha256(c).hexdigest() for c in CHUNKS],
        },
    }


SIGNED = sign_manifest(_manifest_dict(), _KEY)
SIGNED_BYTES = json.dumps(SIGNED).encode()
MANIFEST = verify.verify_manifest(SIGNED_BYTES, KEYS)


@st.composite
def manifest_payloads(draw: st.DrawFn) -> tuple[bytes, bool]:
    """(payload, re-signed?): mutations are re-signed half the time so checks past the signature run."""
    choice = draw(st.integers(0, 9))
    if choice == 0:
        return draw(raw_bytes()), False
    if choice == 1:
        return SIGNED_BYTES, False
    raw = draw(mutated_json(st.just(dict(SIGNED))))
    resign = draw(st.booleans())
    if resign:
        try:
            doc = json.loads(raw)
        except (ValueError, RecursionError):
            return raw, False
        if isinstance(doc, dict):
            try:
                return json.dumps(sign_manifest(doc, _KEY), allow_nan=True).encode(), True
            except (ValueError, TypeError, RecursionError):
                return raw, False
    return raw, False


class ModelManifestTarget(FuzzTarget):
    name = "model_manifest"

    def strategy(self) -> st.SearchStrategy[Any]:
        return st.tuples(manifest_payloads(), st.booleans())

    def feed(self, case: Any) -> str:
        (payload, _resigned), pin_digest = case
        digest = verify.manifest_digest(SIGNED_BYTES) if pin_digest else None
        try:
            m = verify.verify_manifest(payload, KEYS, digest)
        except ModelRejected as exc:
            return exc.reason
        assert m.archive.size == sum(f.size for f in m.files)
        return "accepted"


def check_chunk(topic: str, payload: bytes, m: verify.ReleaseManifest, have: set[int]) -> str:
    """Mirror of the ``on_message`` closure in ``Downloader._fetch_chunks`` (see module doc).

    Returns "accepted", "ignored" (the closure returns False: not a chunk of this
    release), "duplicate" or "file_hash_mismatch" (the closure drops the chunk, counts
    it and fetches it again later).
    """
    prefix = topics.chunk_prefix(m.name, m.version)
    total = len(m.archive.chunks)
    idx_s = topic.removeprefix(prefix)
    if not topic.startswith(prefix) or not (idx_s.isascii() and idx_s.isdigit()) or not payload:
        return "ignored"
    idx = int(idx_s)
    if idx >= total:
        return "ignored"
    if idx in have:
        return "duplicate"
    if (
        len(payload) != m.archive.chunk_length(idx)
        or hashlib.sha256(payload).hexdigest() != m.archive.chunks[idx]
    ):
        return "file_hash_mismatch"
    have.add(idx)
    return "accepted"


@st.composite
def chunk_cases(draw: st.DrawFn) -> tuple[str, bytes]:
    prefix = topics.chunk_prefix(MANIFEST.name, MANIFEST.version)
    idx = draw(
        st.one_of(
            st.integers(0, 3).map(str),
            st.sampled_from(["-1", "00", "1 ", "", "x", "+", "#", "99999999999"]),
            st.text(max_size=4),
        )
    )
    topic = draw(st.one_of(st.just(prefix + idx), st.just(prefix + idx), st.text(max_size=30)))
    i = int(idx) if idx.isascii() and idx.isdigit() and int(idx) < len(CHUNKS) else 0
    payload = draw(
        st.one_of(
            st.just(CHUNKS[i]),
            st.just(CHUNKS[i][:-1]),
            st.just(CHUNKS[i] + b"x"),
            st.binary(max_size=64),
            st.just(b""),
            st.just(CHUNKS[i][:-1] + bytes([CHUNKS[i][-1] ^ 1])),
        )
    )
    return topic, payload


class ModelChunkTarget(FuzzTarget):
    name = "model_chunk"

    def strategy(self) -> st.SearchStrategy[Any]:
        return chunk_cases()

    def feed(self, case: Any) -> str:
        topic, payload = case
        try:
            out = check_chunk(topic, payload, MANIFEST, set())
        except ModelRejected as exc:
            return exc.reason
        return "accepted" if out == "accepted" else out
