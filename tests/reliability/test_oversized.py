"""Oversized messages are refused by the agent (counted, dead-lettered) and by the broker config.

The broker half (``max_packet_size`` in ``deploy/kubernetes/broker/mosquitto.conf``
refuses a larger PUBLISH) is already tested on the deployed config by
``tests/protocol/test_broker_acl.py::test_oversized_publish_is_refused``; not duplicated here.
This file covers the agent: a payload one byte over ``devices.max_payload_bytes``
is refused with reason ``oversized``, one exactly at the limit is accepted, and
the agent keeps processing.
"""

from __future__ import annotations

import json
import re
import urllib.request
from pathlib import Path

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from edgeloop_sim.broker import Broker
from edgeloop_sim.harness.agent import AgentProcess, agent_config, wait_until

LIMIT = 1024


def _sized(n: int) -> bytes:
    """A valid reading padded (with an ignored field) to exactly ``n`` bytes."""
    base = {"ts": 1_700_000_000, "values": {"x": 1.0}, "pad": ""}
    raw = json.dumps(base).encode()
    base["pad"] = "a" * (n - len(raw))
    out = json.dumps(base).encode()
    assert len(out) == n
    return out


def _metric(port: int, name: str, label: str = "") -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    m = re.search(rf"^{re.escape(name)}{re.escape(label)} (\S+)$", text, re.MULTILINE)
    return float(m.group(1)) if m else 0.0


def test_agent_refuses_payload_over_its_limit(tmp_path: Path, broker: Broker) -> None:
    agent = AgentProcess(
        tmp_path, agent_config(tmp_path, "n1", broker.port, devices={"max_payload_bytes": LIMIT})
    )
    try:
        agent.start()
        port = int(re.search(r'"metrics_port": (\d+)', agent.log_text()).group(1))  # type: ignore[union-attr]
        c = paho.Client(CallbackAPIVersion.VERSION2, client_id="dev", protocol=paho.MQTTv5)
        c.connect(broker.host, broker.port)
        c.loop_start()
        payloads = [_sized(LIMIT + 1), _sized(LIMIT * 64), _sized(LIMIT)]
        for info in [c.publish("devices/d1/telemetry", p, qos=1) for p in payloads]:
            info.wait_for_publish(10)
        c.loop_stop()
        c.disconnect()
        wait_until(
            lambda: _metric(port, "edgeloop_agent_rejected_total", '{reason="oversized"}') == 2, 10, "rejects"
        )
        wait_until(lambda: _metric(port, "edgeloop_agent_readings_in_total") == 1, 10, "the one at the limit")
        wait_until(lambda: _metric(port, "edgeloop_agent_dead_letters_total") == 2, 10, "dead letters")
        assert agent.proc is not None and agent.proc.poll() is None
        assert '"reason": "oversized"' in agent.log_text()
        assert agent.terminate() == 0
    finally:
        agent.close()
