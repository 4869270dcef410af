"""Issue 15 point 7 (agent side): a node id becomes an EdgeNode name, so the agent refuses at config
load any id that cannot be one (RFC 1123: lower-case), naming the field and the rule."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from edge_agent.config import parse_config
from edge_agent.protocol import topics
from edge_agent.protocol.errors import ConfigError, RejectedMessage

BAD = ["Node-A", "n_1", "-n1", "n1-", "n1.", "a" * 64, "n..1", "UPPER"]
GOOD = ["n1", "edge-01", "site.a.edge-7", "0", "a" * 63]


@pytest.mark.parametrize("node", BAD)
def test_config_refuses_a_node_id_that_cannot_be_a_resource_name(node: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config({"node_id": node})
    (path, msg), *_ = err.value.problems
    assert path == "node_id"
    assert "lower-case" in msg and "RFC 1123" in msg, msg


@pytest.mark.parametrize("node", GOOD)
def test_config_accepts_resource_names(node: str) -> None:
    assert parse_config({"node_id": node}).node_id == node


def test_device_ids_keep_their_own_rule() -> None:
    """The node rule is for node ids only: devices name their own topic levels (NAB's have ``_``)."""
    cfg = parse_config({"node_id": "n1", "devices": {"allowed": ["machine_temperature", "Pump-A.1"]}})
    assert cfg.devices.allowed == ["machine_temperature", "Pump-A.1"]
    with pytest.raises(ConfigError):
        parse_config({"node_id": "n1", "devices": {"allowed": ["a/b"]}})


@pytest.mark.parametrize("node", BAD)
def test_node_topics_refuse_the_same_ids(node: str) -> None:
    with pytest.raises(RejectedMessage) as err:
        topics.summaries(node)
    assert err.value.reason == "bad_node_id"
    with pytest.raises(RejectedMessage):
        topics.parse_node_topic(f"edgeloop/v1/nodes/{node}/summaries")


def test_one_rule() -> None:
    for node in GOOD:
        assert topics.is_node_id(node)
    for node in BAD:
        assert not topics.is_node_id(node)


SCRIPT = Path(__file__).resolve().parents[2] / "deploy" / "pki" / "issue-node-cert.sh"


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")
def test_cert_script_checks_the_same_rule(tmp_path: Path) -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True)

    assert run("init-ca", str(tmp_path / "pki")).returncode == 0
    for node in ("Node-A", "n_1", "n1-", "a" * 64):
        out = run("issue", str(tmp_path / "pki"), node, "--node")
        assert out.returncode == 2 and "lower-case" in out.stderr, (node, out.stderr)
    assert run("issue", str(tmp_path / "pki"), "edge-001.site-a", "--node").returncode == 0
    # Not a node: issued (device ids may use upper case), with a warning naming the rule.
    out = run("issue", str(tmp_path / "pki"), "Sensor_7")
    assert out.returncode == 0 and "not a valid node id" in out.stderr
