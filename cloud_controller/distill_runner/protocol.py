"""The files a distillation run and the reconciler share: the spec in, progress and the result out.

The runner (a local process or a Kubernetes Job) talks to the controller only
through its work directory, the same protocol in both modes (on a cluster each
side's copy of the directory is mirrored through the shared store:
:mod:`cloud_controller.distill_runner.exchange`):

* ``spec.json``: a :class:`RunnerSpec`, written once by the reconciler; relative
  paths in it are relative to the work directory (:func:`resolve_paths`);
* ``progress.jsonl``: one JSON line per step, ``{"ts", "stage", "progress", "message"}``,
  appended and flushed (:class:`ProgressLog`); the reconciler mirrors it into
  ``status.stage``/``progress`` and takes each stage's first ``ts`` as the stage timestamp;
* ``result.json`` (written last, atomically with :func:`write_json_atomic`): ``ok``,
  metrics before/after, the bundle directory, or ``error``. Its presence means
  "done", whoever started the runner.

Kept free of training imports, so the controller can read and write these files
without the train extra.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qs

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "BaseSpec",
    "ProgressLog",
    "RunnerSpec",
    "Stage",
    "parse_base",
    "resolve_paths",
    "write_json_atomic",
]

Stage = Literal["Collecting", "Training", "Evaluating"]


class RunnerSpec(BaseModel):
    """What the reconciler hands the runner (``spec.json``): the job spec, resolved."""

    model_config = ConfigDict(extra="forbid")

    job: str
    uid: str = ""
    task: Literal["chat", "sensor"]
    teacher: str = "labels"  # "labels" | "bundle:PATH" | a MiniLM teacher name
    base: str = "snips"
    held_back: str | None = None  # sensor: labelled experiments only scored, never trained on
    temperature: float = 2.0
    alpha: float = 0.5
    epochs: int | None = None
    student_params: dict[str, float] = Field(default_factory=dict)
    config: Literal["tiny", "full"] = "full"
    data_root: str | None = None
    # Hard examples: a snapshot file written by the reconciler, or a store queried here.
    hard_examples_file: str | None = None
    hard_examples_db: str | None = None
    since: float | None = None
    min_teacher_confidence: float | None = None
    max_hard_examples: int | None = None
    parent_bundle: str | None = None
    output_model: str
    version: str
    parent_version: str | None = None
    hard_repeat: int = Field(default=3, ge=1, le=100)  # oversampling: a few hundred new rows vs thousands
    new_eval_fraction: float = Field(default=0.25, ge=0, lt=1)
    escalation_threshold: float = Field(default=0.5, ge=0, le=1)
    max_fixed_eval: int | None = None
    # Sensor: the edge's uncertainty band (a window scored inside it is escalated as a hard example).
    uncertain_band: tuple[float, float] = (0.35, 0.65)
    seed: int | None = None


class BaseSpec(BaseModel):
    dataset: str
    exclude: list[str] = Field(default_factory=list)
    groups: list[str] = Field(default_factory=list)
    experiments: list[str] = Field(default_factory=list)


def parse_base(base: str) -> BaseSpec:
    """``snips``, ``snips?exclude=IntentA,IntentB`` (the held-back intents the first student never
    saw), ``skab?groups=valve1`` (the SKAB experiment groups the first sensor student saw),
    ``skab?exclude=valve2/1`` (SKAB without some experiments) or ``skab?experiments=valve2/1,other/2``
    (just those: a held-back set)."""
    name, _, query = base.partition("?")
    q = parse_qs(query)

    def items(key: str) -> list[str]:
        return [x for v in q.get(key, []) for x in v.split(",") if x]

    return BaseSpec(
        dataset=name, exclude=items("exclude"), groups=items("groups"), experiments=items("experiments")
    )


class ProgressLog:
    """Appends progress lines; flushed per line so a reader (or a restarted controller) sees them at once."""

    def __init__(self, path: Path, after: Callable[[], object] | None = None) -> None:
        self.path = path
        self.after = after  # e.g. push the file to the shared store (a Job on a cluster)

    def __call__(self, stage: Stage, progress: float, message: str = "") -> None:
        line = {"ts": time.time(), "stage": stage, "progress": round(progress, 4), "message": message}
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(line) + "\n")
            f.flush()
        if self.after is not None:
            self.after()


def write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str), encoding="utf-8")
    os.replace(tmp, path)


def resolve_paths(spec: RunnerSpec, out: Path) -> RunnerSpec:
    """Relative paths in the spec are relative to the work directory: the controller and a Job pod
    mount that directory at different places, and both must read the same spec."""
    upd: dict[str, str] = {}
    for name in ("hard_examples_file", "hard_examples_db"):
        v = getattr(spec, name)
        if v and not Path(v).is_absolute():
            upd[name] = str(out / v)
    if spec.parent_bundle and not Path(spec.parent_bundle).is_absolute():
        upd["parent_bundle"] = str(out / spec.parent_bundle)
    return spec.model_copy(update=upd)
