"""docs/devices.md, executed: every ``mosquitto_pub`` example against a real mosquitto and agent process.

The examples under "Accepted payloads" must be taken (readings counted, chat
answered, no error answer); every example under "Refused payloads" must be
answered on the device's error topic with the reason its comment names and be
counted under that reason (issue 15, point 11). A device sending junk in a loop
gets a capped number of answers, the rest counted as suppressed.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edgeloop_sim.broker import Broker
from edgeloop_sim.harness.agent import AgentProcess, agent_config, metric, scrape, wait_until

DOC = Path(__file__).resolve().parents[2] / "docs" / "devices.md"

pytestmark = pytest.mark.skipif(shutil.which("mosquitto_pub") is None, reason="needs mosquitto_pub")


def sections() -> dict[str, list[str]]:
    """``## heading`` -> the ``sh`` code blocks under it that run mosquitto_pub."""
    out: dict[str, list[str]] = {}
    for part in re.split(r"^## ", DOC.read_text(encoding="utf-8"), flags=re.MULTILINE)[1:]:
        heading = part.splitlines()[0].strip()
        blocks = re.findall(r"^```sh\n(.*?)^```", part, flags=re.MULTILINE | re.DOTALL)
        out[heading] = [b for b in blocks if "mosquitto_pub" in b]
    return out


def arg(cmd: str, flag: str) -> str | None:
    words = shlex.split(cmd.replace("\\\n", " "), comments=True)
    return words[words.index(flag) + 1] if flag in words else None


class Device:
    """Listens to every device's answers (error topic and chat out) on the broker."""

    def __init__(self, broker: Broker) -> None:
        self.got: list[tuple[str, dict[str, object]]] = []
        self.lock = threading.Lock()
        self.c = paho.Client(CallbackAPIVersion.VERSION2, client_id="device-author", protocol=paho.MQTTv5)
        self.c.on_message = self._on_message
        subscribed = threading.Event()
        self.c.on_subscribe = lambda *a: subscribed.set()
        self.c.connect(broker.host, broker.port)
        self.c.loop_start()
        self.c.subscribe([("devices/+/errors", 1), ("devices/+/chat/out", 1)])
        assert subscribed.wait(5)

    def _on_message(self, client: object, userdata: object, msg: paho.MQTTMessage) -> None:
        with self.lock:
            self.got.append((msg.topic, json.loads(msg.payload)))

    def on(self, topic: str) -> list[dict[str, object]]:
        with self.lock:
            return [p for t, p in self.got if t == topic]

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


@pytest.fixture
def agent(tmp_path: Path, broker: Broker) -> Iterator[AgentProcess]:
    a = AgentProcess(tmp_path, agent_config(tmp_path, "n1", broker.port))
    a.start()
    yield a
    a.close()
    print("----- agent log -----\n" + "\n".join(a.log_text().splitlines()[-40:]))


@pytest.fixture
def device(broker: Broker) -> Iterator[Device]:
    d = Device(broker)
    yield d
    d.close()


def run_example(cmd: str, broker: Broker) -> None:
    local = cmd.replace("-h localhost -p 1883", f"-h {broker.host} -p {broker.port}")
    assert local != cmd, f"examples must use -h localhost -p 1883: {cmd}"
    subprocess.run(["bash", "-euo", "pipefail", "-c", local], check=True, timeout=20)


def test_every_accepted_example_is_taken(broker: Broker, agent: AgentProcess, device: Device) -> None:
    examples = sections()["Accepted payloads"]
    assert len(examples) >= 3
    readings = 0
    chats: list[tuple[str, str]] = []
    for cmd in examples:
        topic, payload = arg(cmd, "-t"), arg(cmd, "-m")
        assert topic is not None and payload is not None, cmd
        body = json.loads(payload)
        if topic.endswith("/telemetry"):
            readings += sum(len(r["values"]) for r in body.get("readings", [body]))
        else:
            chats.append((topic.removesuffix("/in") + "/out", body["msg_id"]))
        run_example(cmd, broker)
    assert readings >= 3 and chats
    wait_until(lambda: metric(scrape(agent), "edgeloop_agent_readings_in_total") == readings, 10, "readings")
    for out_topic, msg_id in chats:
        wait_until(lambda t=out_topic, m=msg_id: any(r.get("msg_id") == m for r in device.on(t)), 15,
                   "chat answer")
    time.sleep(1.5)  # a tick and a metrics sync: an error answer would be there by now
    assert not [t for t, _ in device.got if t.endswith("/errors")], device.got
    assert "edgeloop_agent_rejected_total{" not in scrape(agent)


def test_every_refused_example_is_answered_with_its_reason(
    broker: Broker, agent: AgentProcess, device: Device
) -> None:
    examples = sections()["Refused payloads"]
    expected: dict[str, str] = {}
    for cmd in examples:
        m = re.search(r"^# .*-> (\w+)$", cmd, flags=re.MULTILINE)
        topic = re.search(r"-t (devices/[^/\s]+)/", cmd)
        assert m and topic, f"a refused example needs '# ... -> reason' and a device topic: {cmd}"
        expected[topic.group(1) + "/errors"] = m.group(1)
        run_example(cmd, broker)
    reasons = set(expected.values())
    assert {"wrong_type", "malformed_json", "missing_field", "oversized"} <= reasons
    doc = DOC.read_text(encoding="utf-8")
    for err_topic, reason in expected.items():
        wait_until(lambda t=err_topic: bool(device.on(t)), 10, f"an answer on {err_topic}")
        (answer,) = device.on(err_topic)
        assert answer["reason"] == reason, (err_topic, answer)
        assert answer["hint"] and answer["detail"], answer
        assert f"| `{reason}` |" in doc  # the docs table lists every reason a device can get
    answered = "edgeloop_agent_device_errors_total"
    wait_until(lambda: metric(scrape(agent), answered, reason="missing_field") == 2, 10, "metrics sync")
    text = scrape(agent)
    for reason in reasons:
        n = list(expected.values()).count(reason)
        assert metric(text, "edgeloop_agent_rejected_total", reason=reason) == n, reason
        assert metric(text, "edgeloop_agent_device_errors_total", reason=reason) == n, reason


def test_a_device_sending_junk_in_a_loop_gets_a_capped_number_of_answers(
    broker: Broker, agent: AgentProcess, device: Device
) -> None:
    c = paho.Client(CallbackAPIVersion.VERSION2, client_id="broken-device", protocol=paho.MQTTv5)
    c.connect(broker.host, broker.port)
    c.loop_start()
    try:
        infos = [c.publish("devices/broken/telemetry", b"21.5,40.2", qos=1) for _ in range(40)]
        for i in infos:
            i.wait_for_publish(10)
    finally:
        c.loop_stop()
        c.disconnect()
    wait_until(lambda: metric(scrape(agent), "edgeloop_agent_rejected_total", reason="malformed_json") == 40,
               10, "all 40 counted")
    suppressed = "edgeloop_agent_device_errors_suppressed_total"
    wait_until(lambda: metric(scrape(agent), suppressed) == 35, 10, "metrics sync")
    assert len(device.on("devices/broken/errors")) == 5
