"""Ed25519 release signing: key files, key ids, and signing a release manifest.

The edge verifies with :mod:`edge_agent.protocol.manifest`, which owns the
canonical JSON and the key id so that both ends agree by construction. The
private key lives in a 0600 PEM file created with O_EXCL (never overwritten,
never world-readable even for an instant); the public key PEM is what the
nodes pin.
"""

from __future__ import annotations

import argparse
import base64
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edge_agent.protocol.manifest import canonical_json, key_id, load_public_key

__all__ = [
    "PRIVATE_KEY_FILE",
    "PUBLIC_KEY_FILE",
    "KeyPair",
    "configure_keys_command",
    "generate_keys",
    "load_private_key",
    "public_key_id",
    "run_keys_command",
    "sign_manifest",
]

PRIVATE_KEY_FILE = "release-signing.key"
PUBLIC_KEY_FILE = "release-signing.pub"


@dataclass(frozen=True)
class KeyPair:
    private_path: Path
    public_path: Path
    key_id: str


def _raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def public_key_id(private_key: Ed25519PrivateKey) -> str:
    return key_id(_raw_public(private_key.public_key()))


def _write_exclusive(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.fchmod(fd, mode)  # the umask must not widen or narrow what we asked for
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def generate_keys(directory: str | Path) -> KeyPair:
    """Create a new key pair in ``directory``; refuses to overwrite an existing key (rotation is explicit)."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    priv, pub = d / PRIVATE_KEY_FILE, d / PUBLIC_KEY_FILE
    if priv.exists() or pub.exists():
        raise FileExistsError(f"{d} already holds a signing key; move it away to rotate")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    _write_exclusive(priv, pem, 0o600)
    pub_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    _write_exclusive(pub, pub_pem, 0o644)
    return KeyPair(priv, pub, public_key_id(key))


def load_private_key(path: str | Path) -> Ed25519PrivateKey:
    """Load a PEM private key; refuses a file others can read (a leaked key signs models for every node)."""
    p = Path(path)
    mode = p.stat().st_mode & 0o777
    if mode & 0o077:
        raise PermissionError(f"{p} is readable by others (mode {mode:o}); chmod 600 it")
    key = serialization.load_pem_private_key(p.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{p} is not an Ed25519 private key")
    return key


def load_public_key_file(path: str | Path) -> tuple[str, bytes]:
    """``(key_id, raw)`` of a public key file, ready for a node's pinned-keys mapping."""
    raw = load_public_key(Path(path).read_bytes())
    return key_id(raw), raw


def sign_manifest(manifest: dict[str, Any], private_key: Ed25519PrivateKey) -> dict[str, Any]:
    """Return a copy with ``key_id`` set and ``signature`` over the canonical JSON of everything else."""
    body = {k: v for k, v in manifest.items() if k != "signature"}
    body["key_id"] = public_key_id(private_key)
    sig = private_key.sign(canonical_json(body))
    return {**body, "signature": base64.b64encode(sig).decode("ascii")}


# --------------------------------------------------------------------------- CLI hooks


def configure_keys_command(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="keys_command", required=True)
    init = sub.add_parser("init", help="create a release signing key pair (0600 private key)")
    init.add_argument("--dir", type=Path, required=True, help="directory for the key files")
    show = sub.add_parser("id", help="print the key id of a public or private key file")
    show.add_argument("path", type=Path)


def run_keys_command(args: argparse.Namespace) -> int:
    if args.keys_command == "init":
        try:
            pair = generate_keys(args.dir)
        except FileExistsError as exc:
            print(exc)
            return 1
        print(f"private key: {pair.private_path} (keep secret)")
        print(f"public key:  {pair.public_path} (pin on nodes)")
        print(f"key id:      {pair.key_id}")
        return 0
    data = Path(args.path).read_bytes()
    if b"PRIVATE KEY" in data:
        print(public_key_id(load_private_key(args.path)))
    else:
        print(load_public_key_file(args.path)[0])
    return 0
