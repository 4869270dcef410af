"""The shipped systemd unit, install script and example config.

``systemd-analyze verify`` fails a unit whose ExecStart binary does not exist,
and the shipped unit points at /opt/edgeloop/venv/bin/edge-agent, which exists
only on an installed device. So the verify test copies the unit into tmp_path
with ExecStart rewritten to an executable that exists here (this venv's
``edge-agent`` script, else /bin/true) and leaves every other line unchanged.
Verify only warns (exit 0) on unknown keys and some bad values, so its stderr
must also be empty.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from edge_agent.config import AgentConfig, load_config

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy" / "systemd"
UNIT = DEPLOY / "edge-agent.service"
INSTALL = DEPLOY / "install.sh"
EXAMPLE = DEPLOY / "edge-agent.example.yaml"

SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze not installed")


def parse_unit(text: str) -> dict[str, list[tuple[str, str]]]:
    """Sections to ordered (key, value) pairs; unlike configparser, keeps repeated keys."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], [])
            continue
        assert current is not None, f"key outside a section: {raw!r}"
        key, sep, value = line.partition("=")
        assert sep, f"not a key=value line: {raw!r}"
        current.append((key.strip(), value.strip()))
    return sections


def one(section: list[tuple[str, str]], key: str) -> str:
    values = [v for k, v in section if k == key]
    assert len(values) == 1, f"{key}: expected exactly one value, got {values}"
    return values[0]


def seconds(value: str) -> float:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(s|sec|min|m)?", value)
    assert m, f"unsupported time span {value!r}"
    return float(m.group(1)) * (60 if m.group(2) in {"min", "m"} else 1)


@pytest.fixture(scope="module")
def unit() -> dict[str, list[tuple[str, str]]]:
    return parse_unit(UNIT.read_text())


def _verify(path: Path) -> subprocess.CompletedProcess[str]:
    assert SYSTEMD_ANALYZE is not None
    return subprocess.run(
        [SYSTEMD_ANALYZE, "verify", str(path)], capture_output=True, text=True, timeout=60, check=False
    )


def _runnable_exec_start() -> str:
    venv_script = Path(sys.executable).parent / "edge-agent"
    if venv_script.is_file() and os.access(venv_script, os.X_OK):
        return str(venv_script)
    return "/bin/true"


@needs_analyze
def test_systemd_analyze_verify_is_clean(tmp_path: Path) -> None:
    text = UNIT.read_text()
    shipped = "ExecStart=/opt/edgeloop/venv/bin/edge-agent "
    assert shipped in text
    copy = tmp_path / "edge-agent.service"
    copy.write_text(text.replace(shipped, f"ExecStart={_runnable_exec_start()} "))
    result = _verify(copy)
    assert result.returncode == 0, result.stderr
    assert result.stderr == "", result.stderr


@needs_analyze
def test_verify_check_would_catch_a_bad_unit(tmp_path: Path) -> None:
    """Guard the guard: an unknown key only warns, and the stderr check sees it."""
    bad = tmp_path / "bad.service"
    bad.write_text("[Service]\nType=notify\nExecStart=/bin/true\nWatchdogSecs=30\n")
    result = _verify(bad)
    assert result.returncode == 0
    assert "WatchdogSecs" in result.stderr


def test_service_core_settings(unit: dict[str, list[tuple[str, str]]]) -> None:
    svc = unit["Service"]
    assert one(svc, "Type") == "notify"
    assert one(svc, "NotifyAccess") == "main"
    assert (
        one(svc, "ExecStart")
        == "/opt/edgeloop/venv/bin/edge-agent run --config /etc/edgeloop/edge-agent.yaml"
    )
    assert one(svc, "ExecReload") == "/bin/kill -HUP $MAINPID"
    assert one(svc, "Restart") == "on-failure"
    assert seconds(one(svc, "RestartSec")) == 2
    assert seconds(one(svc, "WatchdogSec")) == 30
    # A clean shutdown must finish before systemd escalates to SIGKILL.
    default_shutdown = AgentConfig.model_fields["shutdown_timeout_s"].default
    assert seconds(one(svc, "TimeoutStopSec")) > default_shutdown
    assert one(unit["Install"], "WantedBy") == "multi-user.target"


def test_paths_match_config_defaults(unit: dict[str, list[tuple[str, str]]]) -> None:
    svc = unit["Service"]
    default_state = AgentConfig.model_fields["state_dir"].default
    assert Path("/var/lib") / one(svc, "StateDirectory") == default_state
    config_path = one(svc, "ExecStart").split("--config", 1)[1].strip()
    assert Path(config_path).parent == Path("/etc") / one(svc, "ConfigurationDirectory")


def test_service_hardening(unit: dict[str, list[tuple[str, str]]]) -> None:
    svc = unit["Service"]
    expected = {
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "NoNewPrivileges": "yes",
        "ProtectKernelTunables": "yes",
        "ProtectKernelModules": "yes",
        "ProtectKernelLogs": "yes",
        "ProtectControlGroups": "yes",
        "RestrictNamespaces": "yes",
        "LockPersonality": "yes",
        "MemoryDenyWriteExecute": "yes",
        "SystemCallArchitectures": "native",
        "CapabilityBoundingSet": "",
        "UMask": "0077",
        "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
    }
    for key, value in expected.items():
        assert one(svc, key) == value, key
    filters = [v for k, v in svc if k == "SystemCallFilter"]
    assert "@system-service" in filters
    assert one(svc, "MemoryMax")
    assert int(one(svc, "LimitNOFILE")) >= 1024
    # A dedicated user (see the comment in the unit), never root.
    assert one(svc, "User") == "edgeloop"


def test_install_script_syntax() -> None:
    subprocess.run(["bash", "-n", str(INSTALL)], check=True, timeout=30)
    assert INSTALL.stat().st_mode & stat.S_IXUSR


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck not installed")
def test_install_script_shellcheck() -> None:
    result = subprocess.run(["shellcheck", str(INSTALL)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def _sentinel_path(tmp_path: Path) -> tuple[dict[str, str], Path]:
    """PATH with tripwires first: any system-changing command that runs records itself and fails."""
    bindir = tmp_path / "tripwire-bin"
    bindir.mkdir()
    calls = tmp_path / "tripwire-calls"
    for name in ("useradd", "install", "systemctl", "runuser", "python3", "pip", "cp", "chown", "chmod"):
        script = bindir / name
        script.write_text(f'#!/bin/sh\necho "{name} $*" >> "{calls}"\nexit 97\n')
        script.chmod(0o755)
    env = {**os.environ, "PATH": f"{bindir}:{os.environ.get('PATH', '/usr/bin:/bin')}"}
    return env, calls


def test_install_dry_run_prints_plan_and_changes_nothing(tmp_path: Path) -> None:
    prefix = tmp_path / "opt" / "edgeloop"
    env, calls = _sentinel_path(tmp_path)
    result = subprocess.run(
        ["bash", str(INSTALL), "--dry-run", "--prefix", str(prefix)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert not calls.exists(), f"dry run executed: {calls.read_text()}"
    assert not prefix.exists() and not (tmp_path / "opt").exists()
    # The plan names every step, with the prefix applied.
    assert f"[dry-run] python3 -m venv {prefix}/venv" in out or f"reusing virtualenv {prefix}/venv" in out
    assert f"{prefix}/venv/bin/python -m pip install" in out
    pip_line = next(line for line in out.splitlines() if "pip install" in line and str(REPO) in line)
    assert "[" not in pip_line.split("pip install", 1)[1], "edge install must not request extras"
    assert f"ExecStart={prefix}/venv/bin/edge-agent run --config /etc/edgeloop/edge-agent.yaml" in out
    assert "/opt/edgeloop/" not in out.replace(str(prefix), "<prefix>")
    assert "check-config /etc/edgeloop/edge-agent.yaml" in out
    assert "[dry-run] systemctl daemon-reload" in out
    assert "systemctl enable --now edge-agent.service" in out
    assert "nothing was changed" in out


@pytest.mark.parametrize("prefix", ["relative/dir", "/home/pi/edgeloop"])
def test_install_rejects_bad_prefix(prefix: str) -> None:
    result = subprocess.run(
        ["bash", str(INSTALL), "--dry-run", "--prefix", prefix],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert "--prefix" in result.stderr


def test_install_help() -> None:
    result = subprocess.run(["bash", str(INSTALL), "--help"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0 and "--dry-run" in result.stdout


def test_example_config_passes_the_cli_check() -> None:
    """The exact command install.sh runs, against the file it installs."""
    agent = Path(sys.executable).parent / "edge-agent"
    if not agent.is_file():
        pytest.skip("edge-agent console script not installed in this venv")
    result = subprocess.run(
        [str(agent), "check-config", str(EXAMPLE)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_example_config_is_valid() -> None:
    cfg = load_config(EXAMPLE)
    assert cfg.state_dir == Path("/var/lib/edge-agent")
    # Documented in the unit: stop must not be cut short.
    unit_stop = seconds(one(parse_unit(UNIT.read_text())["Service"], "TimeoutStopSec"))
    assert cfg.shutdown_timeout_s < unit_stop
