"""The edge agent as a real process: data path, daemon behaviour, bad input."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edgeloop_sim.broker import Broker
from edgeloop_sim.harness.agent import AgentProcess, agent_config, metric, scrape, wait_until
from edgeloop_sim.harness.receiver import ReceiverProcess
from edgeloop_sim.replay import replay
from edgeloop_sim.replay_config import ReplayConfig


@pytest.fixture
def receiver(tmp_path: Path, broker: Broker) -> Iterator[ReceiverProcess]:
    r = ReceiverProcess(tmp_path, broker.port)
    r.start()
    yield r
    r.stop()


@pytest.fixture
def agent_factory(tmp_path: Path, broker: Broker) -> Iterator:
    agents: list[AgentProcess] = []

    def make(node: str = "n1", **overrides: object) -> AgentProcess:
        a = AgentProcess(tmp_path, agent_config(tmp_path, node, broker.port, **overrides))
        agents.append(a)
        return a

    yield make
    for a in agents:
        a.close()
        print(f"----- agent {a.name} log -----\n" + "\n".join(a.log_text().splitlines()[-40:]))


def publisher(broker: Broker) -> paho.Client:
    c = paho.Client(CallbackAPIVersion.VERSION2, client_id="test-device", protocol=paho.MQTTv5)
    c.connect(broker.host, broker.port)
    c.loop_start()
    return c


def publish_all(c: paho.Client, msgs: list[tuple[str, bytes]]) -> None:
    infos = [c.publish(t, p, qos=1) for t, p in msgs]
    for i in infos:
        i.wait_for_publish(10)


def test_skab_replay_reaches_cloud_exactly(broker: Broker, receiver: ReceiverProcess, agent_factory) -> None:
    agent = agent_factory("n1")
    agent.start(extra_env={"WATCHDOG_USEC": "400000"})
    res = replay(
        "skab", ReplayConfig(broker=f"127.0.0.1:{broker.port}", speedup=0, batch=10, limit=400, devices=3)
    )
    agent.notify.wait_for("WATCHDOG=1", timeout=5)
    wait_until(
        lambda: metric(scrape(agent), "edgeloop_agent_readings_in_total") == res.readings, 10, "ingest"
    )
    # Windows still open are flushed by SIGTERM; everything must reach the cloud.
    assert agent.terminate() == 0
    agent.notify.wait_for("STOPPING=1", timeout=1)
    wait_until(lambda: receiver.readings() == res.readings, 20, "cloud totals to match the replay")
    t = receiver.totals()["n1"]
    assert t.duplicates == 0 and t.seq_gaps == 0
    assert t.bytes * 15 < res.raw_json_bytes  # summaries are far smaller than raw forwarding


def test_sigterm_flushes_open_windows_within_bound(
    broker: Broker, receiver: ReceiverProcess, agent_factory
) -> None:
    # Hour-long windows never close by themselves during the test: only the SIGTERM flush sends them.
    agent = agent_factory("n1", windows={"length_s": 3600.0, "idle_close_s": 3600.0}, shutdown_timeout_s=5.0)
    agent.start()
    c = publisher(broker)
    now = time.time()
    publish_all(
        c,
        [
            (f"devices/d{i % 4}/telemetry", json.dumps({"ts": now + i, "values": {"x": i, "y": -i}}).encode())
            for i in range(200)
        ],
    )
    wait_until(lambda: metric(scrape(agent), "edgeloop_agent_readings_in_total") == 400, 10, "agent ingest")
    # Windows crossing an hour boundary close by event time; everything else waits for the flush.
    before = receiver.readings()
    assert before < 400
    t0 = time.monotonic()
    assert agent.terminate() == 0
    assert time.monotonic() - t0 < 5.0 + 2.0
    wait_until(lambda: receiver.readings() == 400, 10, "flushed windows at the cloud")
    c.loop_stop()
    c.disconnect()


BAD_INPUTS = [
    ("malformed_json", "devices/d1/telemetry", b'{"ts": 1, "values": {'),
    ("wrong_type", "devices/d1/telemetry", b'{"ts": "yesterday", "values": {"x": 1}}'),
    ("wrong_type", "devices/d1/telemetry", b'{"ts": 1, "values": {"x": "1.5"}}'),
    ("non_finite", "devices/d1/telemetry", b'{"ts": 1, "values": {"x": NaN}}'),
    ("non_finite", "devices/d1/telemetry", b'{"ts": 1, "values": {"x": Infinity}}'),
    ("non_finite", "devices/d1/telemetry", b'{"ts": 1, "values": {"x": 1e999}}'),
    ("missing_field", "devices/d1/telemetry", b'{"values": {"x": 1}}'),
    ("missing_field", "devices/d1/chat/in", b'{"session_id": "s1", "text": "hi", "ts": 1}'),
    ("unknown_device", "devices/intruder/telemetry", b'{"ts": 1, "values": {"x": 1}}'),
    ("oversized", "devices/d1/telemetry", b'{"ts": 1, "values": {"x": 1}, "pad": "' + b"a" * 5000 + b'"}'),
    ("bad_id", "devices/d1/chat/in", b'{"session_id": "s/../#", "msg_id": "m1", "text": "hi", "ts": 1}'),
    ("bad_id", "devices/d1/chat/in", b'{"session_id": "s1", "msg_id": "+", "text": "hi", "ts": 1}'),
    ("bad_id", "devices/d%20$1/telemetry", b'{"ts": 1, "values": {"x": 1}}'),
]


def test_bad_input_is_rejected_counted_and_dead_lettered(broker: Broker, agent_factory) -> None:
    agent = agent_factory(
        "n1", devices={"allowed": ["d1"], "allow_unknown": False, "max_payload_bytes": 4096}
    )
    agent.start()
    c = publisher(broker)
    publish_all(c, [(t, p) for _, t, p in BAD_INPUTS])
    # A good message after the junk: the agent is still alive and processing.
    publish_all(c, [("devices/d1/telemetry", b'{"ts": 1700000000, "values": {"x": 1}}')])
    wait_until(lambda: metric(scrape(agent), "edgeloop_agent_readings_in_total") == 1, 10, "good reading")
    wait_until(
        lambda: metric(scrape(agent), "edgeloop_agent_dead_letters_total") == len(BAD_INPUTS),
        10,
        "dead letters committed",
    )
    text = scrape(agent)
    expected: dict[str, int] = {}
    for reason, _, _ in BAD_INPUTS:
        expected[reason] = expected.get(reason, 0) + 1
    for reason, n in expected.items():
        assert metric(text, "edgeloop_agent_rejected_total", reason=reason) == n, reason
    assert agent.proc is not None and agent.proc.poll() is None
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "edge_agent.cli",
            "dead-letters",
            "--config",
            str(agent.config_path),
            "--limit",
            "100",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert sorted(r["reason"] for r in rows) == sorted(r for r, _, _ in BAD_INPUTS)
    log = agent.log_text()
    assert "rejected inbound message" in log and '"reason": "non_finite"' in log
    c.loop_stop()
    c.disconnect()


def test_broken_config_is_reported_with_field_paths(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("node_id: 'a/b'\nmqtt:\n  port: 0\n  bogus: 1\nwindows:\n  length_s: -5\n")
    out = subprocess.run(
        [sys.executable, "-m", "edge_agent.cli", "check-config", str(bad)], capture_output=True, text=True
    )
    assert out.returncode == 2
    for path in ("node_id", "mqtt.port", "mqtt.bogus", "windows.length_s"):
        assert f"  {path}:" in out.stderr
    out = subprocess.run(
        [sys.executable, "-m", "edge_agent.cli", "run", "--config", str(bad)], capture_output=True, text=True
    )
    assert out.returncode == 2 and "mqtt.port" in out.stderr
    syntax = tmp_path / "syntax.yaml"
    syntax.write_text("node_id: [unclosed\n")
    out = subprocess.run(
        [sys.executable, "-m", "edge_agent.cli", "check-config", str(syntax)], capture_output=True, text=True
    )
    assert out.returncode == 2 and "syntax error" in out.stderr


def test_sighup_reloads_and_keeps_running_on_broken_config(broker: Broker, agent_factory) -> None:
    agent = agent_factory("n1")
    agent.start()
    agent.cfg["devices"] = {"allowed": ["d1"], "allow_unknown": False}
    agent.write_config(agent.cfg)
    agent.signal(signal.SIGHUP)
    agent.notify.wait_for("RELOADING=1", timeout=5)
    agent.notify.wait_for("READY=1", timeout=5)
    wait_until(lambda: "config reloaded" in agent.log_text(), 5, "reload log line")
    c = publisher(broker)
    publish_all(c, [("devices/d2/telemetry", b'{"ts": 1, "values": {"x": 1}}')])
    wait_until(
        lambda: metric(scrape(agent), "edgeloop_agent_rejected_total", reason="unknown_device") == 1,
        10,
        "new allow-list applied",
    )
    agent.config_path.write_text("node_id: [broken\n")
    agent.signal(signal.SIGHUP)
    wait_until(lambda: "config reload failed" in agent.log_text(), 5, "reload failure logged")
    publish_all(c, [("devices/d1/telemetry", b'{"ts": 1, "values": {"x": 1}}')])
    wait_until(lambda: metric(scrape(agent), "edgeloop_agent_readings_in_total") == 1, 10, "still processing")
    assert agent.terminate() == 0
    c.loop_stop()
    c.disconnect()


def test_status_is_retained_with_last_will(broker: Broker, agent_factory) -> None:
    agent = agent_factory("n1")
    agent.start()
    got: list[dict] = []
    c = paho.Client(CallbackAPIVersion.VERSION2, client_id="watcher", protocol=paho.MQTTv5)
    c.on_message = lambda _c, _u, m: got.append(json.loads(m.payload))
    c.connect(broker.host, broker.port)
    c.subscribe("edgeloop/v1/nodes/n1/status", qos=1)
    c.loop_start()
    wait_until(lambda: any(s["online"] for s in got), 5, "retained online status")
    agent.kill()  # no clean disconnect: the broker publishes the last will
    wait_until(lambda: got and got[-1]["online"] is False, 10, "last will (offline)")
    c.loop_stop()
    c.disconnect()
