"""Settings on both sides: precedence (flags > env > file > defaults), env var names, the references."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cloud_controller.cli.main import CLI
from cloud_controller.cli.run import configure_run_args, settings_from_args
from cloud_controller.cli.settings_reference import flag_fields, run_actions
from cloud_controller.settings import STORE_VAR, ControllerSettings, EnvSource, env_var, setting_fields
from edge_agent.config import env_overrides, load_config
from edge_agent.protocol.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def cloud(argv: list[str], env: dict[str, str]) -> ControllerSettings:
    parser = argparse.ArgumentParser()
    configure_run_args(parser)
    return settings_from_args(parser.parse_args(argv), env)


# --------------------------------------------------------------------------- cloud


def test_cloud_precedence_flag_over_env_over_file_over_default(tmp_path: Path) -> None:
    file = tmp_path / "controller.yaml"
    file.write_text(
        yaml.safe_dump(
            {"namespace": "from-file", "poll_s": 7.0, "mqtt": {"host": "file-host", "keepalive_s": 40}}
        )
    )
    assert cloud([], {}).namespace == "default"
    assert cloud(["--config", str(file)], {}).namespace == "from-file"
    env = {"EDGELOOP_NAMESPACE": "from-env", "EDGELOOP_MQTT_HOST": "env-host"}
    s = cloud(["--config", str(file)], env)
    assert (s.namespace, s.poll_s, s.mqtt.host, s.mqtt.keepalive_s) == ("from-env", 7.0, "env-host", 40)
    s = cloud(["--config", str(file), "--namespace", "from-flag", "--broker", "flag-host:1"], env)
    assert (s.namespace, s.mqtt.host, s.mqtt.port, s.mqtt.keepalive_s) == ("from-flag", "flag-host", 1, 40)
    # The controller's own reconnect cap survives an mqtt section given in parts.
    assert s.mqtt.reconnect_max_s == 2.0 == ControllerSettings().mqtt.reconnect_max_s


def test_cloud_toml_file(tmp_path: Path) -> None:
    file = tmp_path / "controller.toml"
    file.write_text('enrollment = "manual"\n[mqtt]\nport = 8883\n')
    s = cloud(["--config", str(file)], {})
    assert (s.enrollment, s.mqtt.port) == ("manual", 8883)


def test_cloud_store_variable_and_kube_wins() -> None:
    assert cloud([], {STORE_VAR: "kubernetes"}).kube
    assert cloud([], {STORE_VAR: "r.db"}).store_path == Path("r.db")
    flagged = cloud(["--store", "x.db"], {STORE_VAR: "kubernetes"})
    assert flagged.kube and flagged.store_path == Path("x.db")


def test_cloud_env_details() -> None:
    s = cloud(
        [], {"EDGELOOP_LEADER_ELECTION": "On", "EDGELOOP_MQTT_CA_FILE": "/ca", "EDGELOOP_NAMESPACE": ""}
    )
    assert s.leader_election is True and s.namespace == "default"  # empty: unset
    assert s.mqtt.tls is not None and s.mqtt.tls.ca_file == Path("/ca")
    assert cloud([], {"EDGELOOP_LEADER_ELECTION": "maybe"}).leader_election is False
    # Direct construction reads nothing from the process environment.
    assert ControllerSettings(namespace="x").data_root is None


def test_every_documented_variable_is_read() -> None:
    """Each variable in the reference sets its field (``EnvSource`` and ``env_var`` agree)."""
    for path, _ in setting_fields():
        var = env_var(path)
        if var is None or var == STORE_VAR:
            continue
        data = EnvSource(ControllerSettings, {var: "1"})()
        for part in path.split("."):
            data = data[part]
        assert data == "1", path


def test_deployment_variables_are_all_settings() -> None:
    """Every EDGELOOP_* name the manifests set for the controller still means a setting."""
    doc = next(
        d
        for d in yaml.safe_load_all((ROOT / "deploy/kubernetes/controller/deployment.yaml").read_text())
        if d and d.get("kind") == "Deployment"
    )
    names = {
        e["name"]
        for c in doc["spec"]["template"]["spec"]["containers"]
        for e in c.get("env", [])
        if e["name"].startswith("EDGELOOP_")
    }
    known = {env_var(p) for p, _ in setting_fields()}
    assert names and names <= known, names - known


def test_every_run_flag_sets_a_setting() -> None:
    paths = {p for p, _ in setting_fields()}
    for action in run_actions():
        assert set(flag_fields(action)) <= paths, action.dest


def test_bad_settings_file_is_one_line(tmp_path: Path) -> None:
    file = tmp_path / "bad.yaml"
    file.write_text("- not a mapping\n")
    proc = subprocess.run(
        [sys.executable, "-m", "cloud_controller.cli", "run", "--store", "r.db", "--config", str(file)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith("cloud-controller run: invalid settings: settings file")


# --------------------------------------------------------------------------- edge


def test_edge_precedence_flag_over_env_over_file(tmp_path: Path) -> None:
    file = tmp_path / "agent.yaml"
    file.write_text("node_id: n1\nmqtt:\n  host: file-host\n  port: 1884\nlog:\n  level: WARNING\n")
    assert load_config(file, {}).log.level == "WARNING"
    env = {"EDGE_AGENT_MQTT__HOST": "env-host", "EDGE_AGENT_LOG__LEVEL": "ERROR", "EDGE_AGENT_NODE_ID": ""}
    cfg = load_config(file, env)
    assert (cfg.node_id, cfg.mqtt.host, cfg.mqtt.port, cfg.log.level) == ("n1", "env-host", 1884, "ERROR")
    cfg = load_config(file, env, overrides={"log": {"level": "DEBUG"}})
    assert cfg.log.level == "DEBUG"
    assert load_config(file, {"EDGE_AGENT_DEVICES__ALLOWED": '["d1", "d2"]'}).devices.allowed == ["d1", "d2"]
    assert load_config(file, {}).outbox.max_bytes == 64 * 1024 * 1024  # default


def test_edge_bad_env_value_names_the_field(tmp_path: Path) -> None:
    file = tmp_path / "agent.yaml"
    file.write_text("node_id: n1\n")
    with pytest.raises(ConfigError) as exc:
        load_config(file, {"EDGE_AGENT_MQTT__PORT": "0"})
    assert [p for p, _ in exc.value.problems] == ["mqtt.port"]
    assert env_overrides({"UNRELATED": "1", "EDGE_AGENT_WINDOWS__LENGTH_S": "5"}) == {
        "windows": {"length_s": "5"}
    }


def test_edge_run_bad_config_is_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("node_id: n1\nmqtt:\n  port: 0\n")
    proc = subprocess.run(
        [sys.executable, "-m", "edge_agent.cli", "run", "--config", str(bad)], capture_output=True, text=True
    )
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith(f"edge-agent run: invalid config {bad}: mqtt.port:")


def test_both_command_lines_share_log_level_and_registry() -> None:
    from edge_agent.cli import CLI as EDGE

    for cli in (CLI, EDGE):
        args = cli.parser().parse_args(["--log-level", "debug", "config-reference"])
        assert args.log_level == "DEBUG"
    assert {"run", "receive", "totals", "apply", "get", "describe", "delete", "keys", "release"} <= set(
        CLI.verbs
    )
    assert {"run", "check-config", "dead-letters", "config-reference"} == set(EDGE.verbs)
