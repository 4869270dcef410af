"""``cloud-controller release``: sign a bundle into the artifact store, and optionally publish it.

Its own module because it wires the three release pieces together (store,
signing key, MQTT publisher); inside :mod:`.artifacts` it would make the store
depend on the publisher that depends on the store.

``--manifests FILE`` also writes the resources that put the release on the
fleet: its ``EdgeModel`` and, with ``--rollout 10,50,100``, a canary
``ModelRollout``. The same file goes to the embedded store
(``cloud-controller apply -f FILE``, or ``--apply`` here) and to a cluster
(``kubectl apply -f FILE``): one path, two stores.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
from pathlib import Path
from typing import Any

import yaml

from cloud_controller.releases.artifact_backends import open_artifact_store
from cloud_controller.releases.artifacts import DEFAULT_CHUNK_SIZE, ArtifactError, Release, ReleaseStore
from cloud_controller.releases.publisher import ModelPublisher
from cloud_controller.releases.signing import load_private_key
from cloud_controller.resources.store_protocol import API_VERSION
from edge_agent.config import MqttConfig
from edge_agent.ops.cli_kit import UsageError
from edge_agent.protocol.errors import PermanentError
from edge_agent.transport.mqtt import MqttClient

__all__ = ["configure_release_command", "release_manifests", "run_release_command", "sign_release"]


def configure_release_command(p: argparse.ArgumentParser) -> None:
    p.add_argument("bundle_dir", nargs="?", type=Path, default=None, help="bundle directory (or --bundle)")
    p.add_argument("--bundle", type=Path, default=None, help="bundle directory")
    p.add_argument("--key", type=Path, required=True, help="Ed25519 private key PEM (0600)")
    p.add_argument("--store", type=Path, default=None, help="artifact store directory (without --dsn)")
    p.add_argument("--dsn", default=os.environ.get("EDGELOOP_STORE_DSN") or None,
                   help="postgresql://...: the cluster's shared store (default: EDGELOOP_STORE_DSN)")
    p.add_argument("--chunk-size", type=int, default=DEFAULT_CHUNK_SIZE)
    p.add_argument("--task", choices=["chat", "sensor"], default=None, help="override the task slot")
    p.add_argument("--broker", default=None, help="HOST:PORT: also publish the release (retained)")
    p.add_argument("--client-id", default="edgeloop-controller-release")
    p.add_argument(
        "--manifests",
        type=Path,
        default=None,
        help="write the release's EdgeModel (+ ModelRollout with --rollout) as YAML for apply -f",
    )
    p.add_argument(
        "--rollout",
        default=None,
        metavar="W1,W2,...",
        help="canary weights in percent, e.g. 10,50,100 (needs --manifests or --apply)",
    )
    p.add_argument("--pause", type=int, default=60, help="seconds to hold each canary step below 100 %%")
    p.add_argument("-n", "--namespace", default="default")


def _k8s_name(text: str) -> str:
    return re.sub(r"[^a-z0-9-]", "-", text.lower())[:253].strip("-")


def _weights(spec: str) -> list[int]:
    try:
        weights = [int(w) for w in spec.split(",") if w.strip()]
    except ValueError:
        raise UsageError(f"--rollout {spec!r}: weights are integers, e.g. 10,50,100") from None
    if not weights or weights != sorted(weights) or weights[-1] != 100 or weights[0] < 1:
        raise UsageError(f"--rollout {spec!r}: rising weights in 1..100 that end at 100")
    return weights


def release_manifests(
    store: ReleaseStore, rel: Release, namespace: str, rollout: str | None, pause: int
) -> list[dict[str, Any]]:
    """The EdgeModel pinning ``rel`` and, if asked, the canary ModelRollout that ships it."""
    name = _k8s_name(f"{rel.name}-{rel.version}")
    metrics = {k: float(v) for k, v in rel.parsed.get("metrics", {}).items() if isinstance(v, int | float)}
    docs = [store.edge_model(rel, namespace=namespace, name=name, metrics=metrics)]
    if rollout:
        steps = [
            {"setWeight": w, **({"pauseSeconds": pause} if pause and w < 100 else {})}
            for w in _weights(rollout)
        ]
        docs.append(
            {
                "apiVersion": API_VERSION,
                "kind": "ModelRollout",
                "metadata": {"name": name, "namespace": namespace},
                "spec": {"model": rel.name, "version": rel.version, "steps": steps},
            }
        )
    return docs


def sign_release(args: argparse.Namespace) -> tuple[ReleaseStore, Release]:
    """Sign into the store, publish if asked, write the manifests if asked; print the ModelRef."""
    bundle = args.bundle_dir or args.bundle
    if bundle is None:
        raise UsageError("give the bundle directory (release DIR or --bundle DIR)")
    if args.rollout and not (args.manifests or getattr(args, "apply", False)):
        raise UsageError("--rollout needs --manifests FILE (or --apply)")
    if args.rollout:
        _weights(args.rollout)  # a bad --rollout fails before anything is signed
    if args.store is None and not args.dsn:
        raise UsageError("give --store DIR (embedded) or --dsn postgresql://... (cluster)")
    store = open_artifact_store(args.store or Path("."), args.dsn, chunk_size=args.chunk_size)
    try:
        release = store.put_bundle(bundle, load_private_key(args.key), task=args.task)
    except (ArtifactError, PermanentError) as exc:  # a bad bundle or a version clash: one line, exit 2
        raise UsageError(f"{bundle}: {exc}") from exc
    print(json.dumps(release.model_ref().model_dump(), indent=2))
    if args.broker:
        host, _, port = str(args.broker).rpartition(":")

        async def publish() -> None:
            client = MqttClient(MqttConfig(host=host, port=int(port)), args.client_id, clean_start=True)
            await client.start()
            try:
                await client.wait_connected(10)
                await ModelPublisher(client, store).publish(release)
            finally:
                await client.stop()

        asyncio.run(publish())
    if args.manifests:
        docs = release_manifests(store, release, args.namespace, args.rollout, args.pause)
        args.manifests.parent.mkdir(parents=True, exist_ok=True)
        args.manifests.write_text(yaml.safe_dump_all(docs, sort_keys=False), encoding="utf-8")
    return store, release


def run_release_command(args: argparse.Namespace) -> int:
    sign_release(args)
    return 0
