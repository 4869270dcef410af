"""A DistillationJob's work directory: its layout, and reading what the runner left in it.

Everything the reconciler needs to pick a job up again after a controller
restart lives in the object's status and in ``{work_dir}/{uid}/`` (a shared
volume on a cluster)::

    spec.json            RunnerSpec: the job spec resolved once (version, parent, snapshot)
    hard_examples.jsonl  the snapshot of hard examples the job trains on (re-runs use the same)
    parent/              the parent release's bundle, rebuilt from the artifact store
    progress.jsonl       written by the runner: stage, progress, message, ts
    result.json          written last by the runner: metrics, bundle dir, or error
    attempts             how many times the runner was started
    pid, runner.log      the local runner's process id and output (local launcher only)

The runner's side of these files is :mod:`cloud_controller.distill_runner.protocol`.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cloud_controller.releases.artifacts import Release, ReleaseStore
from cloud_controller.resources.kinds import JobStage
from cloud_controller.resources.store_protocol import Obj
from edge_agent.protocol.manifest import parse_manifest, version_key

__all__ = [
    "RUNNING_STAGES",
    "JobRef",
    "job_ref",
    "materialize",
    "next_version",
    "read_int",
    "read_progress",
    "read_result",
    "tail",
]

RUNNING_STAGES: tuple[JobStage, ...] = ("Collecting", "Training", "Evaluating")


@dataclass(frozen=True)
class JobRef:
    name: str  # DistillationJob name
    namespace: str
    uid: str
    work: Path  # the work directory as the controller sees it
    owner: Obj = field(default_factory=dict, compare=False)
    attempt: int = 1  # which start of the runner this is (``attempts`` in the work directory)


def job_ref(work_dir: Path, obj: Obj) -> JobRef:
    """The job of ``obj`` and its work directory ``work_dir/uid``, at the attempt last started."""
    meta = obj["metadata"]
    uid = meta.get("uid") or f"{meta.get('namespace', 'default')}-{meta['name']}"
    work = work_dir / uid
    attempt = read_int(work / "attempts") or 1
    return JobRef(meta["name"], meta.get("namespace") or "default", uid, work, obj, attempt)


def read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def tail(path: Path, n: int = 600) -> str:
    try:
        return path.read_bytes()[-n:].decode("utf-8", "replace").strip()
    except OSError:
        return ""


def read_progress(work: Path) -> tuple[dict[str, float], float | None, str]:
    """(first ts of each stage, last progress, last message) from progress.jsonl; torn last line ignored."""
    first: dict[str, float] = {}
    last_p: float | None = None
    last_m = ""
    try:
        lines = (work / "progress.jsonl").read_text(encoding="utf-8").splitlines()
    except OSError:
        return first, None, ""
    for line in lines:
        try:
            d = json.loads(line)
        except ValueError:
            continue
        if d.get("stage") in RUNNING_STAGES:
            first.setdefault(d["stage"], float(d["ts"]))
            last_p, last_m = float(d.get("progress", 0.0)), str(d.get("message", ""))
    return first, last_p, last_m


def next_version(versions: list[str]) -> str:
    """One past the highest version: ``3`` -> ``4``, ``1.4.0`` -> ``1.4.1``; ``1`` when there is none."""
    if not versions:
        return "1"
    top = max(versions, key=version_key)
    m = re.match(r"^(.*?)(\d+)$", top)
    return f"{m.group(1)}{int(m.group(2)) + 1}" if m else f"{top}.1"


def read_result(work: Path) -> dict[str, Any] | None:
    """What the runner reported in result.json; None while it has not written one."""
    path = work / "result.json"
    if not path.exists():
        return None
    try:
        result: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        return {"ok": False, "error": "result.json is not valid JSON"}
    return result


def materialize(artifacts: ReleaseStore, release: Release, target: Path) -> Path:
    """Rebuild a release's bundle directory from its verified blobs (the parent to compare against)."""
    if (target / "manifest.json").exists():
        return target
    m, _ = parse_manifest(release.manifest)
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    for f in m.files:
        (tmp / f.name).write_bytes(artifacts.get_blob(f.sha256))
    os.replace(tmp, target)
    return target
