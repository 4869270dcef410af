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
    from edge_agent.config_reference import render

    assert (ROOT / "docs" / "configuration.md").read_text() == render(), (
        "docs/configuration.md is stale: run `edge-agent config-reference > docs/configuration.md`"
    )


def test_controller_configuration_reference_is_current() -> None:
    from cloud_controller.cli.config_reference import render

    assert (ROOT / "docs" / "controller-configuration.md").read_text() == render(), (
        "docs/controller-configuration.md is stale: run "
        "`cloud-controller config-reference > docs/controller-configuration.md`"
    )


def test_controller_reference_env_vars_match_from_env() -> None:
    """The reference's variable table names exactly the variables from_env reads, each on a real field."""
    import inspect
    import re

    from cloud_controller.app import ControllerSettings
    from cloud_controller.cli.config_reference import ENV_VARS, setting_paths

    src = inspect.getsource(ControllerSettings.from_env)
    assert set(re.findall(r"EDGELOOP_[A-Z0-9_]+", src)) == set(ENV_VARS), (
        "edit ENV_VARS in cloud_controller/cli/config_reference.py to match ControllerSettings.from_env"
    )
    simple = dict(re.findall(r'"(EDGELOOP_[A-Z0-9_]+)": "(\w+)"', src))
    assert simple, "from_env's simple variable table moved: update this test"
    assert {var: ENV_VARS[var] for var in simple} == {var: (fld,) for var, fld in simple.items()}
    paths = set(setting_paths())
    assert {p for fields in ENV_VARS.values() for p in fields} <= paths


def test_controller_reference_flags_match_run_parser() -> None:
    """Every `cloud-controller run` flag is in the reference, on the field settings_from_args sets."""
    import inspect
    import re

    from cloud_controller.app import settings_from_args
    from cloud_controller.cli.config_reference import DESCRIPTIONS, FLAGS, run_actions, setting_paths

    assert {a.dest for a in run_actions()} == set(FLAGS), (
        "edit FLAGS in cloud_controller/cli/config_reference.py to match configure_run_args"
    )
    src = inspect.getsource(settings_from_args)
    assert set(re.findall(r"args\.(\w+)", src)) == set(FLAGS)
    pairs = {dest: fld for fld, dest in re.findall(r'"(\w+)": args\.(\w+)', src)}
    assert {dest: FLAGS[dest] for dest in pairs} == {dest: (fld,) for dest, fld in pairs.items()}
    assert set(FLAGS) - set(pairs) == {"broker"} and FLAGS["broker"] == ("mqtt.host", "mqtt.port")
    paths = set(setting_paths())
    assert {p for fields in FLAGS.values() for p in fields} <= paths
    assert set(DESCRIPTIONS) <= paths, "DESCRIPTIONS names a field ControllerSettings no longer has"


def test_controller_reference_precedence_notes_hold() -> None:
    """What the reference's notes claim: flag over variable over default, kube over store_path."""
    from cloud_controller.app import ControllerSettings, settings_from_args
    from cloud_controller.cli.main import build_parser

    def settings(argv: list[str], env: dict[str, str]) -> ControllerSettings:
        return settings_from_args(build_parser().parse_args(["run", *argv]), env)

    env = {"EDGELOOP_NAMESPACE": "from-env", "EDGELOOP_MQTT_HOST": "env-host", "EDGELOOP_STORE": "kubernetes"}
    assert settings([], {}).namespace == "default"
    assert settings([], env).namespace == "from-env"
    flagged = settings(["--namespace", "from-flag", "--broker", "flag-host:1", "--store", "x.db"], env)
    assert (flagged.namespace, flagged.mqtt.host) == ("from-flag", "flag-host")
    assert flagged.kube  # EDGELOOP_STORE=kubernetes survives --store


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        (["--broker", "127.0.0.1:99999"], {}, "port: Input should be less than or equal to 65535"),
        (["--broker", "no-port"], {}, "--broker: expected HOST:PORT"),
        (["--http-port", "70000"], {}, "http_port: Input should be less than or equal to 65535"),
        ([], {"EDGELOOP_MQTT_PORT": "abc"}, "invalid literal for int()"),
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
