"""The shipped broker config enforces node isolation, against a real mosquitto.

The broker runs deploy/kubernetes/broker/mosquitto.conf and its acl, the files
the ConfigMap is generated from, with only file paths and the port rewritten.
Certificates come from deploy/pki/issue-node-cert.sh, so the script is tested
too. Clients are paho 2.x over MQTT 5 and mutual TLS: a denied QoS 1 publish
is visible as PUBACK reason 135.

Every "did not arrive" check has a positive control: the test waits for a
message that must arrive, published after (or alongside) the one that must
not, and only then asserts the other is absent. Without that, an absence
would prove nothing.

mosquitto started as root drops to user "mosquitto", which cannot read
pytest's 0700 tmp dirs or the 0600 keys the script writes; the test config
adds ``user root`` when the test runs as root (a loopback-only test broker).
The deployed pod instead runs as uid 1883 with the Secret mounted readable
by its fsGroup.
"""

from __future__ import annotations

import os
import re
import socket
import ssl
import subprocess
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from edgeloop_sim.broker import Broker, BrokerError, find_mosquitto

REPO = Path(__file__).resolve().parents[2]
CONF = REPO / "deploy" / "kubernetes" / "broker" / "mosquitto.conf"
ACL = REPO / "deploy" / "kubernetes" / "broker" / "acl"
ISSUE = REPO / "deploy" / "pki" / "issue-node-cert.sh"
NODES = "edgeloop/v1/nodes"
CONTROLLER = "edgeloop-controller"
NOT_AUTHORIZED = 135
TIMEOUT = 5.0

try:
    find_mosquitto()
except BrokerError as exc:  # pragma: no cover - depends on the machine
    pytest.skip(str(exc), allow_module_level=True)


# --------------------------------------------------------------------------- PKI


@dataclass(frozen=True)
class Pki:
    dir: Path
    foreign: Path

    def cert(self, name: str) -> tuple[Path, Path]:
        return self.dir / f"{name}.crt", self.dir / f"{name}.key"


def _issue(*args: str) -> None:
    subprocess.run(["bash", str(ISSUE), *args], check=True, capture_output=True, timeout=30)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    root = tmp_path_factory.mktemp("pki")
    ca, foreign = root / "ca", root / "foreign"
    _issue("init-ca", str(ca))
    _issue("issue", str(ca), "broker", "--server", "--san", "IP:127.0.0.1", "--san", "DNS:localhost")
    for name in ("node-a", "node-b", CONTROLLER, "dev-1"):
        _issue("issue", str(ca), name)
    # Another CA issuing a certificate with a name our ACL knows: must not get in.
    _issue("init-ca", str(foreign), "--cn", "Somebody Else CA")
    _issue("issue", str(foreign), "node-b")
    return Pki(ca, foreign)


# --------------------------------------------------------------------------- broker


def deploy_config(text: str, replacements: dict[str, str]) -> str:
    """Replace the value of each ``key`` line; fail if a key is not there exactly once.

    Failing on a missing key keeps the test honest: if the deploy config is
    restructured, the test must be updated rather than silently running a
    different configuration.
    """
    for key, value in replacements.items():
        pattern = re.compile(rf"^{re.escape(key)}\s.*$", re.MULTILINE)
        found = pattern.findall(text)
        assert len(found) == 1, f"expected one {key!r} line in {CONF}, found {found}"
        # A plain replacement string would interpret backslashes in paths.
        text = pattern.sub(lambda _m: f"{key} {value}", text)  # noqa: B023 - used right here
    return text


class DeployBroker(Broker):
    """The shared Broker lifecycle (start, port wait, stop, log) with the deploy/ config."""

    def __init__(self, directory: Path, pki: Pki) -> None:
        super().__init__(directory)
        self.pki = pki

    def config_text(self) -> str:
        crt, key = self.pki.cert("broker")
        text = deploy_config(
            CONF.read_text(encoding="utf-8"),
            {
                "listener": f"{self.port} {self.host}",
                "cafile": str(self.pki.dir / "ca.crt"),
                "certfile": str(crt),
                "keyfile": str(key),
                "acl_file": str(ACL),
                "persistence_location": f"{self.directory}/",
                "log_dest": f"file {self.log_path}",
            },
        )
        if os.geteuid() == 0:
            text += "\n# test only: read the root-owned 0600 keys in pytest's tmp dir\nuser root\n"
        return text


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[DeployBroker]:
    b = DeployBroker(tmp_path_factory.mktemp("mosquitto"), pki)
    b.start()
    try:
        yield b
    finally:
        b.stop()


@pytest.fixture(autouse=True)
def _broker_log_on_failure(request: pytest.FixtureRequest, broker: DeployBroker) -> Iterator[None]:
    yield
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed:
        print(f"\n----- mosquitto log ({broker.log_path}) -----\n{broker.tail_log(60)}")


# --------------------------------------------------------------------------- client


class Connect(Protocol):
    def __call__(self, name: str, *, username: str | None = None) -> Client: ...


class Client:
    """A paho MQTT 5 client over mutual TLS whose callbacks feed waitable state."""

    def __init__(
        self,
        broker: DeployBroker,
        cert: tuple[Path, Path] | None,
        ca: Path,
        *,
        username: str | None = None,
    ) -> None:
        self.broker = broker
        self.cond = threading.Condition()
        self.messages: list[tuple[str, bytes]] = []
        self.acks: dict[int, ReasonCode] = {}
        self.subacks: dict[int, list[ReasonCode]] = {}
        self.connack: ReasonCode | None = None
        self.disconnected: ReasonCode | str | None = None
        self.paho = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"t-{uuid.uuid4().hex[:12]}", protocol=mqtt.MQTTv5
        )
        self.paho.tls_set(
            ca_certs=str(ca),
            certfile=str(cert[0]) if cert else None,
            keyfile=str(cert[1]) if cert else None,
            cert_reqs=ssl.CERT_REQUIRED,
        )
        if username is not None:
            self.paho.username_pw_set(username, "ignored-by-the-broker")
        self.paho.on_connect = self._on_connect
        self.paho.on_disconnect = self._on_disconnect
        self.paho.on_message = self._on_message
        self.paho.on_publish = self._on_publish
        self.paho.on_subscribe = self._on_subscribe

    # callbacks run on paho's network thread
    def _on_connect(self, _c: object, _u: object, _f: object, rc: ReasonCode, _p: object) -> None:
        with self.cond:
            self.connack = rc
            self.cond.notify_all()

    def _on_disconnect(self, _c: object, _u: object, _f: object, rc: ReasonCode, _p: object) -> None:
        with self.cond:
            self.disconnected = rc
            self.cond.notify_all()

    def _on_message(self, _c: object, _u: object, msg: mqtt.MQTTMessage) -> None:
        with self.cond:
            self.messages.append((msg.topic, bytes(msg.payload)))
            self.cond.notify_all()

    def _on_publish(self, _c: object, _u: object, mid: int, rc: ReasonCode, _p: object) -> None:
        with self.cond:
            self.acks[mid] = rc
            self.cond.notify_all()

    def _on_subscribe(self, _c: object, _u: object, mid: int, rcs: list[ReasonCode], _p: object) -> None:
        with self.cond:
            self.subacks[mid] = rcs
            self.cond.notify_all()

    def _wait(self, pred: Callable[[], object], what: str, timeout: float = TIMEOUT) -> None:
        with self.cond:
            if not self.cond.wait_for(pred, timeout):
                raise AssertionError(f"timed out after {timeout}s waiting for {what}")

    def will(self, topic: str, payload: bytes) -> Client:
        self.paho.will_set(topic, payload, qos=1, retain=True)
        return self

    def drop(self) -> None:
        """Vanish without DISCONNECT (a crash or a lost link): the broker publishes the will."""
        sock = self.paho.socket()
        assert isinstance(sock, socket.socket)  # an ssl.SSLSocket
        sock.shutdown(socket.SHUT_RDWR)
        self.wait_disconnected()
        self.paho.loop_stop()

    def try_connect(self) -> bool:
        """Connect; True on CONNACK success, False if TLS or the broker refused us."""
        try:
            self.paho.connect(self.broker.host, self.broker.port, keepalive=30)
        except (ssl.SSLError, OSError):
            return False
        self.paho.loop_start()
        self._wait(lambda: self.connack is not None or self.disconnected is not None, "CONNACK or close")
        return self.connack is not None and not self.connack.is_failure and self.disconnected is None

    def connect(self) -> Client:
        assert self.try_connect(), f"connect failed: connack={self.connack} disconnect={self.disconnected}"
        return self

    def close(self) -> None:
        self.paho.disconnect()
        self.paho.loop_stop()

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> int:
        """QoS 1 publish; return the PUBACK reason code (0/16 success, 135 not authorized)."""
        info = self.paho.publish(topic, payload, qos=1, retain=retain)
        self._wait(lambda: info.mid in self.acks, f"PUBACK for {topic}")
        return int(self.acks[info.mid].value)

    def subscribe(self, *filters: str) -> list[int]:
        result, mid = self.paho.subscribe([(f, 1) for f in filters])
        assert result == mqtt.MQTT_ERR_SUCCESS and mid is not None
        self._wait(lambda: mid in self.subacks, f"SUBACK for {filters}")
        return [int(rc.value) for rc in self.subacks[mid]]

    def wait_message(self, topic: str, payload: bytes) -> None:
        self._wait(lambda: (topic, payload) in self.messages, f"{payload!r} on {topic}")

    def got(self, topic: str, payload: bytes | None = None) -> bool:
        with self.cond:
            return any(t == topic and (payload is None or p == payload) for t, p in self.messages)

    def wait_disconnected(self) -> ReasonCode | str:
        self._wait(lambda: self.disconnected is not None, "the broker to close the connection")
        assert self.disconnected is not None
        return self.disconnected


@pytest.fixture
def connect(broker: DeployBroker, pki: Pki) -> Iterator[Connect]:
    clients: list[Client] = []

    def make(name: str, *, username: str | None = None) -> Client:
        c = Client(broker, pki.cert(name), pki.dir / "ca.crt", username=username).connect()
        clients.append(c)
        return c

    yield make
    for c in clients:
        c.close()


def token() -> bytes:
    return uuid.uuid4().hex.encode()


UPLINK = ("summaries", "hard-examples", "status", "rpc/request/teacher", "models/request", "rpc/result/ctl-1")
# rpc/call/: a node may not write it for any node (itself included), so a node can never call a node.
DOWNLINK = ("desired", "rpc/response/teacher/42", "models/chunks/intent-v3/0", "rpc/call/diagnostics")


# --------------------------------------------------------------------------- tests


def test_node_publishes_its_own_uplink_and_the_controller_reads_every_node(connect: Connect) -> None:
    controller = connect(CONTROLLER)
    # Ingest replicas use a shared subscription; status and the rest a plain one.
    filters = [f"$share/ingest/{NODES}/+/summaries"] + [f"{NODES}/+/{leaf}" for leaf in UPLINK[1:]]
    assert all(rc < 128 for rc in controller.subscribe(*filters))
    a, b = connect("node-a"), connect("node-b")
    for node, client in (("node-a", a), ("node-b", b)):
        for leaf in UPLINK:
            payload = token()
            assert client.publish(f"{NODES}/{node}/{leaf}", payload) < 128, (node, leaf)
            controller.wait_message(f"{NODES}/{node}/{leaf}", payload)


def test_node_cannot_publish_as_another_node(connect: Connect) -> None:
    controller = connect(CONTROLLER)
    controller.subscribe(f"{NODES}/+/summaries", f"{NODES}/+/status", f"{NODES}/+/rpc/request/#")
    a = connect("node-a")
    forged = token()
    for leaf in UPLINK:
        assert a.publish(f"{NODES}/node-b/{leaf}", forged) == NOT_AUTHORIZED, leaf
    # Positive control, published after the forgeries on the same connection.
    own = token()
    assert a.publish(f"{NODES}/node-a/summaries", own) < 128
    controller.wait_message(f"{NODES}/node-a/summaries", own)
    assert not any(p == forged for _, p in controller.messages)


def test_node_cannot_publish_cloud_only_topics(connect: Connect) -> None:
    a = connect("node-a")
    for node in ("node-a", "node-b"):
        for leaf in DOWNLINK:
            assert a.publish(f"{NODES}/{node}/{leaf}", token(), retain=leaf == "desired") == NOT_AUTHORIZED
    assert a.publish("edgeloop/v1/models/intent/v9/manifest.json", token()) == NOT_AUTHORIZED
    # Nor anything outside the layout.
    assert a.publish("edgeloop/v1/broadcast", token()) == NOT_AUTHORIZED


def test_node_reads_only_its_own_downlink(connect: Connect) -> None:
    a, b = connect("node-a"), connect("node-b")
    # A asks for B's downlink in every way a topic filter allows.
    a.subscribe(
        f"{NODES}/node-a/desired",
        f"{NODES}/node-a/rpc/response/#",
        f"{NODES}/node-a/models/chunks/#",
        f"{NODES}/node-a/rpc/call/+",
        f"{NODES}/node-b/desired",
        f"{NODES}/node-b/rpc/response/#",
        f"{NODES}/node-b/rpc/call/+",
        f"{NODES}/+/models/chunks/#",
        f"{NODES}/#",
        f"$share/spy/{NODES}/node-b/desired",
    )
    b.subscribe(
        *(f"{NODES}/node-b/{f}" for f in ("desired", "rpc/response/#", "models/chunks/#", "rpc/call/+"))
    )
    controller = connect(CONTROLLER)
    sent: dict[str, dict[str, bytes]] = {"node-a": {}, "node-b": {}}
    # B's messages first, A's last: once A has all of its own, B's had their chance.
    for node in ("node-b", "node-a"):
        for leaf in DOWNLINK:
            payload = sent[node][leaf] = token()
            assert controller.publish(f"{NODES}/{node}/{leaf}", payload, retain=leaf == "desired") < 128
    for leaf, payload in sent["node-b"].items():
        b.wait_message(f"{NODES}/node-b/{leaf}", payload)
    for leaf, payload in sent["node-a"].items():
        a.wait_message(f"{NODES}/node-a/{leaf}", payload)
    assert not [t for t, _ in a.messages if t.startswith(f"{NODES}/node-b/")]

    # Retained desired state is delivered on subscribe: a new A session gets its own only.
    a2 = connect("node-a")
    a2.subscribe(f"{NODES}/+/desired")
    a2.wait_message(f"{NODES}/node-a/desired", sent["node-a"]["desired"])
    assert not a2.got(f"{NODES}/node-b/desired")


def test_last_will_only_on_own_status(broker: DeployBroker, pki: Pki, connect: Connect) -> None:
    controller = connect(CONTROLLER)
    controller.subscribe(f"{NODES}/+/status")
    ca = pki.dir / "ca.crt"
    # A will naming another node's status: mosquitto 2.0.11 accepts the CONNECT
    # but checks the will against the ACL when it would publish it: never routed.
    forged = token()
    liar = Client(broker, pki.cert("node-a"), ca).will(f"{NODES}/node-b/status", forged)
    if liar.try_connect():
        liar.drop()
    else:  # a broker that refuses it at CONNECT is just as good
        liar.paho.loop_stop()
    # Positive control: a will on its own status is published when the node vanishes.
    offline = token()
    a = Client(broker, pki.cert("node-a"), ca).will(f"{NODES}/node-a/status", offline).connect()
    a.drop()
    controller.wait_message(f"{NODES}/node-a/status", offline)
    assert not controller.got(f"{NODES}/node-b/status", forged)


def test_shared_model_artifacts_readable_by_nodes_written_by_controller(connect: Connect) -> None:
    a = connect("node-a")
    a.subscribe("edgeloop/v1/models/#")
    controller = connect(CONTROLLER)
    payload = token()
    assert controller.publish("edgeloop/v1/models/intent/v3/manifest.json", payload) < 128
    a.wait_message("edgeloop/v1/models/intent/v3/manifest.json", payload)


def test_foreign_ca_and_missing_certificate_fail_the_handshake(broker: DeployBroker, pki: Pki) -> None:
    # A certificate named like a real node, from another CA.
    foreign = Client(broker, (pki.foreign / "node-b.crt", pki.foreign / "node-b.key"), pki.dir / "ca.crt")
    no_cert = Client(broker, None, pki.dir / "ca.crt")
    try:
        assert not foreign.try_connect()
        assert not no_cert.try_connect()
    finally:
        foreign.close()
        no_cert.close()
    # Positive control: the same broker accepts a certificate from our CA.
    ok = Client(broker, pki.cert("node-b"), pki.dir / "ca.crt")
    try:
        assert ok.try_connect()
    finally:
        ok.close()


def test_username_sent_by_the_client_is_ignored(connect: Connect) -> None:
    controller = connect(CONTROLLER)
    controller.subscribe(f"{NODES}/+/summaries")
    # node-a's certificate claiming to be node-b, then the controller.
    for claimed in ("node-b", CONTROLLER):
        a = connect("node-a", username=claimed)
        assert a.publish(f"{NODES}/node-b/summaries", token()) == NOT_AUTHORIZED
        assert a.publish(f"{NODES}/node-a/desired", token()) == NOT_AUTHORIZED
        own = token()
        assert a.publish(f"{NODES}/node-a/summaries", own) < 128
        controller.wait_message(f"{NODES}/node-a/summaries", own)


def test_devices_publish_only_their_own_topics(connect: Connect) -> None:
    dev = connect("dev-1")
    assert dev.publish("devices/dev-1/telemetry", token()) < 128
    assert dev.publish("devices/dev-1/chat/in", token()) < 128
    assert dev.publish("devices/dev-2/telemetry", token()) == NOT_AUTHORIZED
    assert dev.publish("devices/dev-1/chat/out", token()) == NOT_AUTHORIZED
    assert dev.publish("devices/dev-1/errors", token()) == NOT_AUTHORIZED  # only the agent answers there
    assert dev.publish(f"{NODES}/node-a/summaries", token()) == NOT_AUTHORIZED


def test_oversized_publish_is_refused(broker: DeployBroker, pki: Pki, connect: Connect) -> None:
    found = re.search(r"^max_packet_size\s+(\d+)", CONF.read_text(encoding="utf-8"), re.MULTILINE)
    assert found, "max_packet_size must be set"
    limit = int(found.group(1))
    controller = connect(CONTROLLER)
    controller.subscribe(f"{NODES}/node-a/summaries")
    topic = f"{NODES}/node-a/summaries"

    # Just under the limit (header and topic included) goes through ...
    near = token() + b"x" * (limit - 1024)
    assert connect("node-a").publish(topic, near) < 128
    controller.wait_message(topic, near)

    # ... just over it closes the connection and is not routed.
    big = Client(broker, pki.cert("node-a"), pki.dir / "ca.crt").connect()
    try:
        oversized = token() + b"x" * limit
        big.paho.publish(topic, oversized, qos=1)
        big.wait_disconnected()
        assert not big.acks
    finally:
        big.paho.loop_stop()
    after = token()  # positive control, from a fresh session (paho would resend the big one)
    assert connect("node-a").publish(topic, after) < 128
    controller.wait_message(topic, after)
    assert not controller.got(topic, oversized)
    assert "oversize packet" in broker.tail_log(200)


def test_retained_desired_survives_a_broker_restart(broker: DeployBroker, pki: Pki) -> None:
    """persistence is on: a node that reconnects after a broker restart still finds its desired state."""
    controller = Client(broker, pki.cert(CONTROLLER), pki.dir / "ca.crt").connect()
    payload = token()
    try:
        assert controller.publish(f"{NODES}/node-b/desired", payload, retain=True) < 128
    finally:
        controller.close()
    broker.restart()
    b = Client(broker, pki.cert("node-b"), pki.dir / "ca.crt").connect()
    try:
        b.subscribe(f"{NODES}/node-b/desired")
        b.wait_message(f"{NODES}/node-b/desired", payload)
    finally:
        b.close()
