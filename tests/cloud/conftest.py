"""Fixtures shared by the cloud tests: the parent student, trained once for the package."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.cloud.distill_harness import BASE, MODEL


@pytest.fixture(scope="package")
def parent_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Student version 1, trained by the runner (in-process) without the held-back intent."""
    pytest.importorskip("torch")
    from cloud_controller.distill_runner.job import run
    from cloud_controller.distill_runner.protocol import ProgressLog, RunnerSpec

    out = tmp_path_factory.mktemp("parent")
    spec = RunnerSpec(
        job="parent", task="chat", base=BASE, config="tiny", output_model=MODEL, version="1", epochs=4
    )
    os.environ.setdefault("TQDM_DISABLE", "1")
    result = run(spec, out, ProgressLog(out / "progress.jsonl"))
    return out / result["bundle"]


