"""Fixtures shared by the cloud tests: the parent student (trained once per package), a real PostgreSQL."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgeloop_sim.harness.postgres import PostgresServer, find_bindir
from tests.cloud.distill_harness import BASE, MODEL

_dbs = itertools.count()


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


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One server per session (Debian's postgresql; ``make setup`` installs it)."""
    if find_bindir() is None:
        pytest.skip("PostgreSQL not installed (make setup installs Debian's postgresql)")
    with PostgresServer() as server:
        yield server


@pytest.fixture
def postgres_dsn(postgres_server: PostgresServer) -> str:
    """A fresh, empty database: tests never see each other's rows."""
    return postgres_server.create_database(f"t{next(_dbs)}")
