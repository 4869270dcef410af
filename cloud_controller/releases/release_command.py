"""``cloud-controller release``: sign a bundle into the artifact store, and optionally publish it.

Its own module because it wires the three release pieces together (store,
signing key, MQTT publisher); inside :mod:`.artifacts` it would make the store
depend on the publisher that depends on the store.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
from pathlib import Path

from cloud_controller.releases.artifact_backends import open_artifact_store
from cloud_controller.releases.artifacts import DEFAULT_CHUNK_SIZE
from cloud_controller.releases.publisher import ModelPublisher
from cloud_controller.releases.signing import load_private_key
from edge_agent.config import MqttConfig
from edge_agent.transport.mqtt import MqttClient

__all__ = ["configure_release_command", "run_release_command"]


def configure_release_command(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bundle", type=Path, required=True, help="bundle directory")
    p.add_argument("--key", type=Path, required=True, help="Ed25519 private key PEM (0600)")
    p.add_argument("--store", type=Path, default=None, help="artifact store directory (without --dsn)")
    p.add_argument("--dsn", default=os.environ.get("EDGELOOP_STORE_DSN") or None,
                   help="postgresql://...: the cluster's shared store (default: EDGELOOP_STORE_DSN)")
    p.add_argument("--chunk-size", type=int, default=DEFAULT_CHUNK_SIZE)
    p.add_argument("--task", choices=["chat", "sensor"], default=None, help="override the task slot")
    p.add_argument("--broker", default=None, help="HOST:PORT: also publish the release (retained)")
    p.add_argument("--client-id", default="edgeloop-controller-release")


def run_release_command(args: argparse.Namespace) -> int:
    if args.store is None and not args.dsn:
        raise SystemExit("release: give --store DIR (embedded) or --dsn postgresql://... (cluster)")
    store = open_artifact_store(args.store or Path("."), args.dsn, chunk_size=args.chunk_size)
    release = store.put_bundle(args.bundle, load_private_key(args.key), task=args.task)
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
    return 0
