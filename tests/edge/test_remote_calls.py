"""Calls from the cloud into a node, end to end: a real agent process, a real mosquitto with mutual TLS
and the shipped per-node ACL, the controller's identity calling through ``NodeCalls`` and the CLI.

The node runs as deployed: devices on a local broker, the cloud link (where calls arrive) on the
TLS broker under its own certificate. Every refusal has a positive control on the same connection.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from cloud_controller.calls.node_calls import CallBadRequest, CallDenied, CallTimeout, NodeCalls
from edge_agent.config import MqttConfig
from edge_agent.protocol import messages as wire
from edge_agent.protocol import topics
from edge_agent.protocol.calls import CallRequest, dumps_request
from edge_agent.protocol.errors import PublishDenied
from edge_agent.transport.mqtt import MqttClient
from edgeloop_sim.broker import Broker, BrokerError, find_mosquitto
from edgeloop_sim.harness.agent import AgentProcess, agent_config
from edgeloop_sim.harness.tls_broker import CONTROLLER, Pki, TlsBroker

try:
    find_mosquitto()
except BrokerError as exc:  # pragma: no cover - depends on the machine
    pytest.skip(str(exc), allow_module_level=True)

NODE, OTHER = "node-a", "node-b"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"), [NODE, OTHER, CONTROLLER])


@pytest.fixture(scope="module")
def cloud(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[TlsBroker]:
    b = TlsBroker(tmp_path_factory.mktemp("cloud-broker"), pki)
    b.start()
    yield b
    b.stop()


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    b = Broker(tmp_path_factory.mktemp("local-broker"))
    b.start()
    yield b
    b.stop()


def _node_config(tmp: Path, cloud: TlsBroker, local: Broker) -> dict[str, Any]:
    uplink = cloud.mqtt(NODE).model_dump(mode="json", exclude_none=True)
    return agent_config(tmp, NODE, local.port, uplink={"mqtt": uplink}, windows={"length_s": 3600.0})


@pytest.fixture(scope="module")
def agent(
    tmp_path_factory: pytest.TempPathFactory, cloud: TlsBroker, local: Broker
) -> Iterator[AgentProcess]:
    tmp = tmp_path_factory.mktemp("agent")
    proc = AgentProcess(tmp, _node_config(tmp, cloud, local))
    proc.start()
    yield proc
    if proc.proc is not None and proc.proc.poll() is None:
        proc.terminate()
    proc.close()


@pytest.fixture
async def controller(cloud: TlsBroker, agent: AgentProcess) -> AsyncIterator[tuple[MqttClient, NodeCalls]]:
    client = MqttClient(cloud.mqtt(CONTROLLER), f"ctl-{uuid.uuid4().hex[:8]}", clean_start=True, name="ctl")
    calls = NodeCalls(client)
    await client.start()
    await client.wait_connected(5)
    yield client, calls
    await client.stop()


async def _device(local: Broker) -> MqttClient:
    client = MqttClient(
        MqttConfig(host=local.host, port=local.port), f"dev-{uuid.uuid4().hex[:8]}", clean_start=True
    )
    await client.start()
    await client.wait_connected(5)
    return client


def _reading(value: float) -> bytes:
    return json.dumps({"ts": time.time(), "values": {"temp": value}}).encode()


# --------------------------------------------------------------------------- every method


async def test_each_method_answers(controller: tuple[MqttClient, NodeCalls], local: Broker) -> None:
    _, calls = controller
    dev = await _device(local)
    try:
        for i in range(5):
            await dev.publish(topics.device_telemetry("dev-1"), _reading(20.0 + i))
        chat = {"session_id": "s-42", "msg_id": "m-1", "text": "book a table for two", "ts": time.time()}
        await dev.publish(topics.device_chat_in("dev-1"), json.dumps(chat).encode())
    finally:
        await dev.stop()

    async def stats() -> dict[str, Any]:
        return await calls.call(NODE, "windows.stats", {"device": "dev-1"})

    deadline = time.monotonic() + 10
    while (w := await stats())["readings"] < 5:
        assert time.monotonic() < deadline, w
        await asyncio.sleep(0.05)  # polling the agent's state with a deadline
    assert w["readings"] >= 5 and w["open"][0]["device"] == "dev-1" and w["open"][0]["count"] >= 5

    while not (s := await calls.call(NODE, "session.state", {"device": "dev-1", "session": "s-42"}))["found"]:
        assert time.monotonic() < deadline, s
        await asyncio.sleep(0.05)
    assert s["state"]["session_id"] == "s-42" and s["state"]["step"] >= 1
    unknown = await calls.call(NODE, "session.state", {"device": "dev-1", "session": "nobody"})
    assert unknown["found"] is False

    info = await calls.call(NODE, "model.info")
    assert set(info) == {"models", "since_activation"} and "chat" in info["since_activation"]

    diag = await calls.call(NODE, "diagnostics")
    assert diag["node"] == NODE and diag["mqtt"]["cloud"]["connected"] is True
    assert diag["calls"]["ok"] >= 3 and diag["budget"]["mode"] == "budget"

    flushed = await calls.call(NODE, "outbox.flush", timeout=5)
    assert flushed["drained"] is True and flushed["rows_after"] == 0 and flushed["connected"] is True

    with pytest.raises(CallBadRequest, match="session"):
        await calls.call(NODE, "session.state", {"device": "dev-1", "session": "a/b"})
    with pytest.raises(CallBadRequest, match="unexpected argument"):
        await calls.call(NODE, "model.info", {"verbose": "1"})


# --------------------------------------------------------------------------- who may call


async def test_a_node_can_never_call_a_node(
    cloud: TlsBroker, controller: tuple[MqttClient, NodeCalls]
) -> None:
    """PUBACK 135 for a node calling another node, or itself; the controller's call still goes through."""
    other = MqttClient(cloud.mqtt(OTHER), f"{OTHER}-x", clean_start=True, name="other")
    await other.start()
    await other.wait_connected(5)
    try:
        request = dumps_request(CallRequest(caller=OTHER, method="diagnostics"))
        for target in (NODE, OTHER):
            with pytest.raises(PublishDenied) as denied:
                await other.publish(topics.call(target, "config.set"), request, qos=1, timeout=5)
            assert denied.value.reason_code == 135
        # Through NodeCalls the same refusal is a CallDenied (exit status 4 on the command line).
        with pytest.raises(CallDenied, match="broker refused"):
            await NodeCalls(other, OTHER).call(NODE, "diagnostics", timeout=2)
    finally:
        await other.stop()
    _, calls = controller
    assert (await calls.call(NODE, "diagnostics"))["node"] == NODE  # positive control


async def test_the_agent_refuses_a_caller_it_does_not_know(controller: tuple[MqttClient, NodeCalls]) -> None:
    """The second gate: the broker let the message through, the agent still checks who is calling."""
    client, calls = controller
    with pytest.raises(CallDenied, match="may not call"):
        await NodeCalls(client, caller=OTHER).call(NODE, "diagnostics", timeout=3)
    before = (await calls.call(NODE, "diagnostics"))["calls"].get("dropped", 0)
    # A result topic outside the node's own inbox: no answer at all, counted.
    props = Properties(PacketTypes.PUBLISH)
    props.ResponseTopic = topics.rpc_response(NODE, "elsewhere")
    props.CorrelationData = b"x"
    await client.publish(
        topics.call(NODE, "diagnostics"),
        dumps_request(CallRequest(caller=CONTROLLER, method="diagnostics")),
        qos=1,
        properties=props,
        timeout=5,
    )
    deadline = time.monotonic() + 5
    while (await calls.call(NODE, "diagnostics"))["calls"].get("dropped", 0) != before + 1:
        assert time.monotonic() < deadline, "the misdirected call was not counted"
        await asyncio.sleep(0.05)


async def test_unknown_method_and_offline_node_fail_within_the_timeout(
    controller: tuple[MqttClient, NodeCalls],
) -> None:
    _, calls = controller
    t0 = time.monotonic()
    with pytest.raises(CallDenied, match=r"unknown method 'reboot'.*diagnostics"):
        await calls.call(NODE, "reboot", timeout=3)
    assert time.monotonic() - t0 < 3
    t0 = time.monotonic()
    with pytest.raises(CallTimeout, match=f"no answer from node '{OTHER}'.*offline"):
        await calls.call(OTHER, "diagnostics", timeout=1.0)
    assert 1.0 <= time.monotonic() - t0 < 2.0


async def test_many_calls_in_flight_while_telemetry_flows(
    controller: tuple[MqttClient, NodeCalls], local: Broker
) -> None:
    _, calls = controller
    dev = await _device(local)
    stop = asyncio.Event()

    async def telemetry() -> int:
        sent = 0
        while not stop.is_set():
            await dev.publish(topics.device_telemetry("dev-2"), _reading(float(sent)))
            sent += 1
        return sent

    start = (await calls.call(NODE, "windows.stats"))["readings"]
    feeder = asyncio.create_task(telemetry())
    # The calls go out once telemetry is flowing: they are answered faster than the first reading can
    # arrive otherwise, and the race, not the agent, would decide the assertion below.
    deadline = time.monotonic() + 10
    while (flowing := (await calls.call(NODE, "windows.stats"))["readings"]) <= start:
        assert time.monotonic() < deadline, "no telemetry absorbed"
    try:
        sessions = [f"s-{i}" for i in range(64)]
        results = await asyncio.gather(
            *(calls.call(NODE, "session.state", {"device": "d2", "session": s}, timeout=9) for s in sessions),
            *(calls.call(NODE, "windows.stats", timeout=10) for _ in range(64)),
        )
    finally:
        stop.set()
        sent = await feeder
        await dev.stop()
    # Every answer is the answer to its own request (correlation), none lost.
    assert [r["session"] for r in results[:64]] == sessions
    readings = [r["readings"] for r in results[64:]]
    assert sent > 0 and min(readings) >= flowing > start, (start, flowing, readings)
    # The agent kept absorbing telemetry while it answered.
    deadline = time.monotonic() + 10
    while (await calls.call(NODE, "windows.stats"))["readings"] < start + sent:
        assert time.monotonic() < deadline, "telemetry sent during the calls was not all absorbed"
        await asyncio.sleep(0.05)


# --------------------------------------------------------------------------- config.set


async def _status(client: MqttClient, node: str, pred: Any, timeout: float = 10) -> wire.Status:
    """The retained status of ``node`` until ``pred(status)`` holds (a fresh subscription each time)."""
    probe = MqttClient(client.cfg, f"probe-{uuid.uuid4().hex[:8]}", clean_start=True, name="probe")
    await probe.start()
    await probe.wait_connected(5)
    try:
        await probe.subscribe(topics.status(node), 1)
        deadline = time.monotonic() + timeout
        while True:
            msg = await probe.receive(max(0.1, deadline - time.monotonic()))
            probe.ack(msg)
            status = wire.parse_json(wire.Status, msg.payload)
            if pred(status):
                return status
            assert time.monotonic() < deadline, status
    finally:
        await probe.stop()


def test_config_set_survives_a_restart_and_shows_in_the_status(
    agent: AgentProcess, cloud: TlsBroker, pki: Pki
) -> None:
    async def set_and_check() -> None:
        client = MqttClient(cloud.mqtt(CONTROLLER), "ctl-config", clean_start=True, name="ctl")
        calls = NodeCalls(client)
        await client.start()
        await client.wait_connected(5)
        try:
            with pytest.raises(CallBadRequest, match="not in"):
                await calls.call(
                    NODE, "config.set", {"escalation.threshold": "0.42", "escalation.max_rate": "7"}
                )
            with pytest.raises(CallBadRequest, match="unknown key"):
                await calls.call(NODE, "config.set", {"windows.length_s": "1"})
            assert (await calls.call(NODE, "diagnostics"))["overrides"] == {}  # all or nothing
            out = await calls.call(
                NODE, "config.set", {"escalation.threshold": "0.42", "escalation.max_rate": "0.05"}
            )
            assert out["overrides"] == {"escalation.threshold": 0.42, "escalation.max_rate": 0.05}
            await _status(
                client, NODE, lambda s: s.online and s.overrides.get("escalation.threshold") == 0.42
            )
        finally:
            await client.stop()

    async def after_restart() -> None:
        client = MqttClient(cloud.mqtt(CONTROLLER), "ctl-config", clean_start=True, name="ctl")
        calls = NodeCalls(client)
        await client.start()
        await client.wait_connected(5)
        try:
            diag = await calls.call(NODE, "diagnostics")
            assert diag["overrides"] == {"escalation.threshold": 0.42, "escalation.max_rate": 0.05}
            assert diag["budget"]["max_rate"] == 0.05 and diag["budget"]["threshold"] == 0.42
            status = await _status(client, NODE, lambda s: s.online)
            assert status.overrides == {"escalation.threshold": 0.42, "escalation.max_rate": 0.05}
        finally:
            await client.stop()

    async def while_offline() -> None:
        """A call to a node that is down times out, and expires at the broker: the node never acts on it."""
        client = MqttClient(cloud.mqtt(CONTROLLER), "ctl-offline", clean_start=True, name="ctl")
        calls = NodeCalls(client)
        await client.start()
        await client.wait_connected(5)
        try:
            t0 = time.monotonic()
            with pytest.raises(CallTimeout, match=r"the node is offline \(last status"):
                await calls.call(NODE, "config.set", {"escalation.threshold": "0.1"}, timeout=1.0)
            assert time.monotonic() - t0 < 2.0
            await asyncio.sleep(1.5)  # past the call's expiry (1 s): the broker must drop it now
        finally:
            await client.stop()

    asyncio.run(set_and_check())
    assert agent.terminate() == 0
    asyncio.run(while_offline())
    agent.start()
    asyncio.run(after_restart())


# --------------------------------------------------------------------------- the command line


def _cli(cloud: TlsBroker, pki: Pki, *argv: str) -> subprocess.CompletedProcess[str]:
    crt, key = pki.cert(CONTROLLER)
    env = {
        **os.environ,
        "EDGELOOP_MQTT_HOST": cloud.host,
        "EDGELOOP_MQTT_PORT": str(cloud.port),
        "EDGELOOP_MQTT_CA_FILE": str(pki.ca),
        "EDGELOOP_MQTT_CERT_FILE": str(crt),
        "EDGELOOP_MQTT_KEY_FILE": str(key),
    }
    return subprocess.run(
        [sys.executable, "-m", "cloud_controller.cli", "call", *argv],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_cli_call_exit_codes(cloud: TlsBroker, pki: Pki, agent: AgentProcess) -> None:
    ok = _cli(cloud, pki, NODE, "diagnostics", "-o", "json")
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["node"] == NODE
    text = _cli(cloud, pki, NODE, "session.state", "--arg", "device=d1", "--arg", "session=nobody")
    assert text.returncode == 0 and "found: false" in text.stdout
    cases = [
        ((NODE, "reboot"), 4, "unknown method 'reboot'"),
        ((NODE, "diagnostics", "--caller", OTHER), 4, "may not call"),
        ((OTHER, "diagnostics", "--timeout", "1"), 3, "no answer from node 'node-b'"),
        ((NODE, "config.set", "--arg", "escalation.mode=sometimes"), 2, "not 'budget' or 'threshold'"),
        ((NODE, "diagnostics", "--arg", "novalue"), 2, "expected KEY=VALUE"),
    ]
    for argv, code, message in cases:
        res = _cli(cloud, pki, *argv)
        assert res.returncode == code, (argv, res.returncode, res.stderr)
        assert message in res.stderr, res.stderr
        if code != 2 or "--arg" not in argv[-2:-1]:
            assert len(res.stderr.strip().splitlines()) == 1, res.stderr
