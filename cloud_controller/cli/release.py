"""``cloud-controller release``: sign a bundle into the artifact store (the work is in ``releases/``).

``--apply`` puts the release's EdgeModel (and, with ``--rollout``, its canary
ModelRollout) straight into the embedded store, as ``apply -f`` would; a
controller running on that store starts the rollout on its next resync.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from cloud_controller.cli.kubectl import apply, default_store_path
from cloud_controller.releases.release_command import (
    configure_release_command,
    release_manifests,
    sign_release,
)
from cloud_controller.resources.schema import load_schemas
from cloud_controller.resources.sqlite_store import SqliteResourceStore
from edge_agent.ops.cli_kit import Verb


def _configure(p: argparse.ArgumentParser) -> None:
    configure_release_command(p)
    p.add_argument(
        "--apply",
        action="store_true",
        help="also create the EdgeModel (+ ModelRollout with --rollout) in the embedded store",
    )
    p.add_argument(
        "--resources",
        type=Path,
        default=None,
        help="embedded store for --apply (default: $EDGELOOP_STORE or var/controller/resources.db)",
    )
    p.add_argument("--crds", type=Path, default=None, help="CRD directory (default: the repository's crds/)")


def _run(args: argparse.Namespace) -> int:
    store, rel = sign_release(args)
    if not args.apply:
        return 0
    docs = release_manifests(store, rel, args.namespace, args.rollout, args.pause)
    schemas = load_schemas(args.crds)

    async def main() -> int:
        db = SqliteResourceStore(args.resources or default_store_path(), schemas=schemas)
        try:
            return await apply(db, schemas, docs, args.namespace, sys.stderr, sys.stderr)
        finally:
            await db.close()

    return asyncio.run(main())


VERBS = (
    Verb(
        "release",
        "sign a bundle into the artifact store (--broker also publishes it; --rollout starts a canary)",
        _run,
        _configure,
    ),
)
