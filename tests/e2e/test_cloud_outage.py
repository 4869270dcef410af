"""A separate cloud broker (uplink.mqtt): the agent keeps ingesting while the cloud is unreachable."""

from __future__ import annotations

import json
import time
from pathlib import Path

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from edgeloop_sim.broker import Broker
from edgeloop_sim.harness.agent import AgentProcess, agent_config, metric, scrape, wait_until
from edgeloop_sim.harness.receiver import ReceiverProcess


def test_cloud_unreachable_then_back_loses_nothing(tmp_path: Path, broker: Broker) -> None:
    cloud = Broker(tmp_path / "cloud-broker")
    cloud.start()
    receiver = ReceiverProcess(tmp_path, cloud.port)
    receiver.start()
    cfg = agent_config(
        tmp_path,
        "n1",
        broker.port,
        windows={"length_s": 1.0, "idle_close_s": 1.0},
        uplink={
            "mqtt": {"host": "127.0.0.1", "port": cloud.port, "reconnect_min_s": 0.05, "reconnect_max_s": 0.5}
        },
    )
    agent = AgentProcess(tmp_path, cfg)
    dev = paho.Client(CallbackAPIVersion.VERSION2, client_id="dev", protocol=paho.MQTTv5)
    dev.connect(broker.host, broker.port)
    dev.loop_start()
    try:
        agent.start()

        def send(start: int, n: int) -> None:
            t0 = time.time()
            infos = [
                dev.publish(
                    "devices/d1/telemetry",
                    json.dumps({"ts": t0 + i * 0.1, "values": {"x": float(start + i)}}).encode(),
                    qos=1,
                )
                for i in range(n)
            ]
            for info in infos:
                info.wait_for_publish(10)

        send(0, 100)
        wait_until(lambda: receiver.readings() == 100, 20, "first readings at the cloud")
        cloud.stop()  # the cloud is away; devices keep publishing to the edge broker
        send(100, 300)
        wait_until(
            lambda: metric(scrape(agent), "edgeloop_agent_readings_in_total") == 400,
            10,
            "agent keeps ingesting during the outage",
        )
        wait_until(
            lambda: metric(scrape(agent), "edgeloop_agent_outbox_rows") > 0,
            10,
            "summaries held in the outbox",
        )
        assert receiver.readings() == 100
        cloud.start()
        wait_until(lambda: receiver.readings() == 400, 30, "everything delivered after the outage")
        assert receiver.totals()["n1"].seq_gaps == 0
        assert agent.terminate() == 0
    finally:
        dev.loop_stop()
        dev.disconnect()
        agent.close()
        receiver.stop()
        cloud.stop()
