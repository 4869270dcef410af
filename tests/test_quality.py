"""Project rules checked in CI: layering, lint, types, generated docs in sync."""

from __future__ import annotations

import os
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
        "import sys, edge_agent.daemon, edge_agent.cli, edge_agent.updates.manager;"
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
    from edge_agent.ops.config_reference import render

    assert (ROOT / "docs" / "configuration.md").read_text() == render(), (
        "docs/configuration.md is stale: run `make config-docs`"
    )


def test_controller_configuration_reference_is_current() -> None:
    from cloud_controller.cli.settings_reference import render

    assert (ROOT / "docs" / "controller-configuration.md").read_text() == render(), (
        "docs/controller-configuration.md is stale: run `make config-docs`"
    )


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        (["--broker", "127.0.0.1:99999"], {}, "port: Input should be less than or equal to 65535"),
        (["--broker", "no-port"], {}, "--broker: expected HOST:PORT"),
        (["--http-port", "70000"], {}, "http_port: Input should be less than or equal to 65535"),
        ([], {"EDGELOOP_MQTT_PORT": "abc"}, "mqtt.port: Input should be a valid integer"),
    ],
)
def test_controller_run_rejects_bad_settings_with_a_clear_error(
    tmp_path: Path, argv: list[str], env: dict[str, str], message: str
) -> None:
    """A bad flag or EDGELOOP_* value ends `run` with exit 2 and one line naming it, not a traceback."""
    proc = subprocess.run(
        [sys.executable, "-m", "cloud_controller.cli.main", "run", "--store", str(tmp_path / "r.db"), *argv],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **env},
        cwd=ROOT,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert message in proc.stderr and "Traceback" not in proc.stderr
