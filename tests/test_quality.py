"""Project rules checked in CI: layering, lint, types, generated docs in sync."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_layers_and_forbidden_imports_hold() -> None:
    """edge_agent never imports cloud_controller, edgeloop_sim, torch, transformers or kubernetes."""
    out = run(str(BIN / "lint-imports"))
    assert out.returncode == 0, out.stdout + out.stderr


def test_edge_agent_imports_without_cloud_libraries() -> None:
    code = (
        "import sys, edge_agent.daemon, edge_agent.cli, edge_agent.delivery.models;"
        "bad = [m for m in ('torch', 'transformers', 'kubernetes', 'cloud_controller') if m in sys.modules];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    out = run(sys.executable, "-c", code)
    assert out.returncode == 0, out.stdout + out.stderr


def test_ruff_clean() -> None:
    out = run(str(BIN / "ruff"), "check", "edge_agent", "cloud_controller", "edgeloop_sim", "tests", "bench")
    assert out.returncode == 0, out.stdout[-4000:]


@pytest.mark.slow
def test_mypy_clean() -> None:
    out = run(str(BIN / "mypy"), "edge_agent", "cloud_controller", "edgeloop_sim")
    assert out.returncode == 0, out.stdout[-4000:]


def test_configuration_reference_is_current() -> None:
    from edge_agent.config_reference import render

    assert (ROOT / "docs" / "configuration.md").read_text() == render(), (
        "docs/configuration.md is stale: run `edge-agent config-reference > docs/configuration.md`"
    )
