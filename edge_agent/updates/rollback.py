"""What a node may roll back to, and what it must refuse as a replay.

Two small JSON files under ``{state_dir}/models`` hold it:

* ``active/{task}.json``, the per-task pointer: the active release and the one
  before it. Boot falls back to ``previous`` when the active version no longer
  loads; pruning keeps exactly the versions some pointer names.
* ``{name}/history.json``: the highest version ever activated and the digests of
  the last hundred activated releases. A release must be newer than anything
  activated before (replay protection), unless the desired state pins the digest
  of a release this node ran before: an explicit rollback.
* ``.slots/{task}.json``: the same record per task slot, whatever the model's
  name. Without it a release under *another* name could take the slot with a
  version older than what the slot already ran (replay by renaming).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from edge_agent.protocol.errors import ModelRejected
from edge_agent.protocol.manifest import check_newer, version_key
from edge_agent.protocol.messages import ModelRef
from edge_agent.updates.durable_files import atomic_write, read_json

__all__ = ["SLOTS_DIR", "check_replay", "pointers", "record_activation", "write_pointer"]


SLOTS_DIR = ".slots"


def _history_path(root: Path, name: str) -> Path:
    return root / name / "history.json"


def _slot_path(root: Path, task: str) -> Path:
    return root / SLOTS_DIR / f"{task}.json"


def _slot_history(root: Path, task: str) -> dict[str, Any]:
    """The slot's record; a node upgraded from per-name history seeds it from the slot's pointer."""
    hist = read_json(_slot_path(root, task))
    if hist is not None:
        return hist
    ptr = read_json(root / "active" / f"{task}.json") or {}
    ran = [e for e in (ptr, ptr.get("previous") or {}) if "version" in e]
    highest = max((e["version"] for e in ran), key=version_key, default=None)
    return {"highest": highest, "activated": [e["digest"] for e in ran]}


def check_replay(root: Path, ref: ModelRef, version: str | None = None) -> None:
    """Raise ModelRejected unless ``ref`` is newer than anything its name or its slot activated.

    A release this node already ran (same digest) passes: an explicit rollback.
    """
    hist = read_json(_history_path(root, ref.name)) or {}
    slot = _slot_history(root, ref.task)
    if ref.digest in hist.get("activated", []) or ref.digest in slot.get("activated", []):
        return  # an explicit rollback to a release this node already ran
    check_newer(version or ref.version, hist.get("highest"))
    highest = slot.get("highest")
    if highest is not None and version_key(version or ref.version) <= version_key(highest):
        raise ModelRejected("not_newer", f"{ref.name}@{version or ref.version} is not newer than version "
                                         f"{highest}, already activated in the {ref.task} slot")


def _recorded(hist: Mapping[str, Any], ref: ModelRef) -> bytes:
    highest = hist.get("highest")
    if highest is None or version_key(ref.version) > version_key(highest):
        highest = ref.version
    activated = [*[d for d in hist.get("activated", []) if d != ref.digest][-99:], ref.digest]
    return json.dumps({"highest": highest, "activated": activated}, indent=1).encode()


def record_activation(root: Path, ref: ModelRef) -> None:
    path = _history_path(root, ref.name)
    atomic_write(path, _recorded(read_json(path) or {}, ref))
    atomic_write(_slot_path(root, ref.task), _recorded(_slot_history(root, ref.task), ref))


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
