"""What a node may roll back to, and what it must refuse as a replay.

Two small JSON files under ``{state_dir}/models`` hold it:

* ``active/{task}.json``, the per-task pointer: the active release and the one
  before it. Boot falls back to ``previous`` when the active version no longer
  loads; pruning keeps exactly the versions some pointer names.
* ``{name}/history.json``: the highest version ever activated and the digests of
  the last hundred activated releases. A release must be newer than anything
  activated before (replay protection), unless the desired state pins the digest
  of a release this node ran before: an explicit rollback.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from edge_agent.protocol.manifest import check_newer, version_key
from edge_agent.protocol.messages import ModelRef
from edge_agent.updates.durable_files import atomic_write, read_json

__all__ = ["check_replay", "pointers", "record_activation", "write_pointer"]


def _history_path(root: Path, name: str) -> Path:
    return root / name / "history.json"


def check_replay(root: Path, ref: ModelRef, version: str | None = None) -> None:
    """Raise ModelRejected unless ``ref`` is newer than anything activated, or a release run before."""
    hist = read_json(_history_path(root, ref.name)) or {}
    if ref.digest in hist.get("activated", []):
        return  # an explicit rollback to a release this node already ran
    check_newer(version or ref.version, hist.get("highest"))


def record_activation(root: Path, ref: ModelRef) -> None:
    path = _history_path(root, ref.name)
    hist = read_json(path) or {}
    highest = hist.get("highest")
    if highest is None or version_key(ref.version) > version_key(highest):
        highest = ref.version
    activated = [*[d for d in hist.get("activated", []) if d != ref.digest][-99:], ref.digest]
    atomic_write(path, json.dumps({"highest": highest, "activated": activated}, indent=1).encode())


def write_pointer(root: Path, task: str, cur: Mapping[str, str], prev: Mapping[str, str] | None) -> None:
    ptr = {"name": cur["name"], "version": cur["version"], "digest": cur["digest"],
           "previous": dict(prev) if prev else None}
    atomic_write(root / "active" / f"{task}.json", json.dumps(ptr, indent=1).encode())


def pointers(root: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """(task, pointer) of every readable pointer file, in task order."""
    pdir = root / "active"
    for ptr_path in sorted(pdir.glob("*.json")) if pdir.is_dir() else []:
        ptr = read_json(ptr_path)
        if ptr is not None:
            yield ptr_path.stem, ptr
