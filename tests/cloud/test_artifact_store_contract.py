"""One contract for the artifact stores, run against both backends (files, a real PostgreSQL)."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cloud_controller.releases.artifact_backends import open_artifact_store
from cloud_controller.releases.artifacts import ArtifactError, ArtifactStore, ReleaseStore
from cloud_controller.releases.pg_artifacts import PgArtifactStore
from edge_agent.models.bundle import write_bundle
from edge_agent.protocol.errors import ModelRejected
from edge_agent.protocol.manifest import parse_manifest

Make = Callable[[], ReleaseStore]


@pytest.fixture(params=["files", "postgres"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Make]:
    """A factory: two stores from one factory share their data (two replicas, or a restarted pod)."""
    if request.param == "files":
        yield lambda: ArtifactStore(tmp_path / "artifacts", chunk_size=1024)
        return
    dsn = request.getfixturevalue("postgres_dsn")
    opened: list[PgArtifactStore] = []

    def make() -> ReleaseStore:
        # Small parts, so a bundle spans many rows: the multi-part path is the one exercised.
        store = PgArtifactStore(dsn, chunk_size=1024, part_size=777)
        opened.append(store)
        return store

    yield make
    for s in opened:
        s.close()


@pytest.fixture
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def bundle(root: Path, version: str, *, pad: int = 5000, vocab: str | None = None) -> Path:
    return write_bundle(
        root / "bundles" / version,
        {
            "model.onnx": os.urandom(3000 + int(version)),
            "labels.json": json.dumps({"intents": ["a", "b"], "tags": ["O"]}).encode(),
            "vocab.json": json.dumps({"pad": vocab if vocab is not None else "v" * pad}).encode(),
        },
        {"name": "tiny", "task": "chat", "version": version, "metrics": {"acc": 0.9}},
    )


def test_release_round_trip_and_chunks(make_store: Make, key: Ed25519PrivateKey, tmp_path: Path) -> None:
    src = bundle(tmp_path, "1")
    rel = make_store().put_bundle(src, key)
    other = make_store()  # another replica, or the pod after a restart
    again = other.get("tiny", "1")
    assert (again.digest, again.size, again.chunks, again.manifest) == (rel.digest, rel.size, rel.chunks,
                                                                        rel.manifest)
    m, _ = parse_manifest(again.manifest)
    chunks = list(other.iter_chunks(again))
    assert len(chunks) == rel.chunks > 1
    assert [hashlib.sha256(c).hexdigest() for c in chunks] == m.archive.chunks
    for f in m.files:
        assert other.get_blob(f.sha256) == (src / f.name).read_bytes()
    assert other.edge_model(rel)["spec"]["uri"] == other.release_uri("tiny", "1")


def test_versions_are_immutable_and_rerelease_is_idempotent(make_store: Make, key: Ed25519PrivateKey,
                                                           tmp_path: Path) -> None:
    store = make_store()
    src = bundle(tmp_path / "a", "1")
    first = store.put_bundle(src, key)
    assert store.put_bundle(src, key).digest == first.digest  # signatures are deterministic
    with pytest.raises(ArtifactError, match="already released"):
        make_store().put_bundle(bundle(tmp_path / "b", "1", vocab="different"), key)
    assert [r.version for r in store.releases("tiny")] == ["1"]


def test_releases_in_version_order_and_retention_collects_blobs(make_store: Make, key: Ed25519PrivateKey,
                                                                tmp_path: Path) -> None:
    store = make_store()
    for v in ("2", "10", "1", "3"):
        store.put_bundle(bundle(tmp_path, v, vocab=v * 100), key)
    assert [r.version for r in store.releases("tiny")] == ["1", "2", "3", "10"]
    assert store.releases("nothing") == []
    dropped = store.retain("tiny", keep=2)
    assert [r.version for r in dropped] == ["1", "2"]
    assert [r.version for r in make_store().releases("tiny")] == ["3", "10"]
    with pytest.raises(ArtifactError, match="no release"):
        store.get("tiny", "1")
    for r in dropped:  # their model blobs went with them; the kept ones still read back
        m, _ = parse_manifest(r.manifest)
        model = next(f for f in m.files if f.name == "model.onnx")
        with pytest.raises(ArtifactError, match="missing"):
            store.get_blob(model.sha256)
    assert store.gc() == 0
    assert len(list(store.iter_chunks(store.get("tiny", "10")))) > 1


def test_missing_blob_and_bad_names(make_store: Make) -> None:
    store = make_store()
    with pytest.raises(ArtifactError, match="missing"):
        store.get_blob("sha256:" + "0" * 64)
    with pytest.raises(ArtifactError, match="no release"):
        store.get("tiny", "7")
    with pytest.raises(ModelRejected, match="not a safe topic level"):
        store.get("../etc", "1")
    data = b"x" * 2500
    assert store.get_blob(store.put_blob(data)) == data
    assert store.put_blob(data) == hashlib.sha256(data).hexdigest()  # again: a no-op


def test_postgres_detects_a_corrupt_blob(postgres_dsn: str) -> None:
    store = PgArtifactStore(postgres_dsn, part_size=100)
    digest = store.put_blob(b"y" * 1000)
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute("UPDATE artifact_parts SET data = %s WHERE sha256 = %s AND idx = 3",
                     (b"z" * 100, digest))
    with pytest.raises(ArtifactError, match="corrupt"):
        store.get_blob(digest)
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute("DELETE FROM artifact_parts WHERE sha256 = %s AND idx = 9", (digest,))
    with pytest.raises(ArtifactError, match="corrupt"):
        store.get_blob(digest)
    store.close()


def test_backend_follows_the_dsn(tmp_path: Path, postgres_dsn: str) -> None:
    assert isinstance(open_artifact_store(tmp_path), ArtifactStore)
    store = open_artifact_store(tmp_path, postgres_dsn)
    assert isinstance(store, PgArtifactStore)
    assert "@" not in store.release_uri("m", "1")  # never a user or password in a resource
    with pytest.raises(ValueError, match="postgresql://"):
        open_artifact_store(tmp_path, "mysql://x")
