"""A bundle never carries a file a symlink points at (issue 15, point 9a).

A link planted in a bundle directory, or passed as a source to ``write_bundle``,
would otherwise be followed and the target's bytes signed and shipped to every node.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cloud_controller.releases.artifacts import ArtifactError, ArtifactStore
from cloud_controller.releases.signing import generate_keys, load_private_key
from edge_agent.models.bundle import BundleError, load_bundle, write_bundle

SECRET = b"-----BEGIN OPENSSH PRIVATE KEY----- not for shipping"


def _files(tmp: Path) -> dict[str, bytes | Path]:
    return {
        "model.onnx": b"\x08\x07onnx",
        "labels.json": json.dumps({"intents": ["a"], "tags": ["O"]}).encode(),
        "vocab.json": b"{}",
    }


FIELDS = {"name": "tiny", "task": "chat", "version": "1"}


def test_write_bundle_refuses_a_symlinked_source(tmp_path: Path) -> None:
    secret = tmp_path / "id_ed25519"
    secret.write_bytes(SECRET)
    link = tmp_path / "model.onnx"
    link.symlink_to(secret)
    files = _files(tmp_path)
    files["model.onnx"] = link
    with pytest.raises(BundleError, match="symlink"):
        write_bundle(tmp_path / "bundle", files, FIELDS)
    assert not (tmp_path / "bundle").exists()


def test_load_bundle_and_release_refuse_a_symlink_planted_in_the_bundle(tmp_path: Path) -> None:
    bundle = write_bundle(tmp_path / "bundle", _files(tmp_path), FIELDS)
    secret = tmp_path / "secret"
    secret.write_bytes(SECRET)
    # Swap labels.json for a link to a file with identical bytes: digests alone would not notice.
    labels = bundle / "labels.json"
    secret.write_bytes(labels.read_bytes())
    labels.unlink()
    labels.symlink_to(secret)
    with pytest.raises(BundleError, match="symlink"):
        load_bundle(bundle)
    keys = generate_keys(tmp_path / "keys")
    store = ArtifactStore(tmp_path / "store")
    with pytest.raises(ArtifactError, match="symlink"):
        store.put_bundle(bundle, load_private_key(keys.private_path))
    assert not (tmp_path / "store" / "releases").exists()


def test_regular_files_still_build_and_release(tmp_path: Path) -> None:
    src = tmp_path / "model.bin"
    src.write_bytes(b"\x08\x07onnx")
    files = _files(tmp_path)
    files["model.onnx"] = src
    bundle = write_bundle(tmp_path / "bundle", files, FIELDS)
    assert load_bundle(bundle).model_bytes == b"\x08\x07onnx"
