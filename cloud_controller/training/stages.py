"""A resumable work dir: each stage records the hash of its inputs, and a rerun skips what is done.

``stages.json`` maps a stage name to ``{"inputs": sha256, "outputs": [...], "seconds": s,
"cpu_seconds": c}`` (wall and CPU time of this process: on a shared machine wall time
says little, CPU time says what the stage costs).
A stage is skipped when its recorded input hash equals the new one and every
output it listed still exists; otherwise it runs and its record is replaced
(written by temp file + rename, so an interrupted run never records a stage
that did not finish). A stage's input hash includes the hashes of the stages
it reads from, so changing the data re-runs everything downstream.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["StageRecord", "WorkDir", "digest"]

StageRecord = dict[str, Any]


def digest(*parts: object) -> str:
    """sha256 of the JSON of ``parts`` (sorted keys): a stage's input hash."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


class WorkDir:
    def __init__(self, root: Path, log: Callable[[str], None] = print) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.log = log
        self.manifest = self.root / "stages.json"
        self.records: dict[str, StageRecord] = (
            json.loads(self.manifest.read_text(encoding="utf-8")) if self.manifest.is_file() else {}
        )
        self.ran: list[str] = []
        self.skipped: list[str] = []

    def _save(self) -> None:
        tmp = self.manifest.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.records, indent=2), encoding="utf-8")
        os.replace(tmp, self.manifest)

    def done(self, name: str, inputs: str) -> bool:
        rec = self.records.get(name)
        return (
            rec is not None
            and rec.get("inputs") == inputs
            and all((self.root / o).exists() for o in rec.get("outputs", []))
        )

    def stage(self, name: str, inputs: str, outputs: list[str], body: Callable[[], None]) -> str:
        """Run ``body`` unless done; return the stage's key (its input hash) for the stages after it."""
        if self.done(name, inputs):
            self.skipped.append(name)
            self.log(f"[{name}] done before with the same inputs: skipped")
            return inputs
        self.records.pop(name, None)
        self._save()
        t0, c0 = time.perf_counter(), time.process_time()
        self.log(f"[{name}] ...")
        body()
        seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
        self.records[name] = {
            "inputs": inputs,
            "outputs": outputs,
            "seconds": round(seconds, 2),
            "cpu_seconds": round(cpu, 2),
        }
        self._save()
        self.ran.append(name)
        self.log(f"[{name}] {seconds:.1f} s")
        return inputs

    def seconds(self) -> dict[str, float]:
        return {k: float(v.get("seconds", 0.0)) for k, v in self.records.items()}

    def cpu_seconds(self) -> dict[str, float]:
        return {k: float(v.get("cpu_seconds", 0.0)) for k, v in self.records.items()}
