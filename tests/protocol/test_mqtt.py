"""MqttClient against a real mosquitto: delivery, acks, sessions, reconnects, denials, wills."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import textwrap
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from edge_agent.config import MqttConfig
from edge_agent.protocol.errors import ConnectRefused, MqttError, PublishDenied
from edge_agent.transport.mqtt import Message, MqttClient, Will
from edge_agent.transport.rpc import Rpc
from edgeloop_sim.broker import Broker, add_password

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
async def make_client(mqtt_cfg: MqttConfig) -> AsyncIterator[Callable[..., MqttClient]]:
    """Build and start clients; every one is stopped at the end of the test."""
    clients: list[MqttClient] = []

    def make(client_id: str, cfg: MqttConfig | None = None, **kw: object) -> MqttClient:
        c = MqttClient(cfg or mqtt_cfg, client_id, name=client_id, **kw)  # type: ignore[arg-type]
        clients.append(c)
        return c

    yield make
    for c in clients:
        await c.stop()


async def started(c: MqttClient) -> MqttClient:
    await c.start()
    await c.wait_connected(5)
    return c


async def test_round_trip_qos0_and_qos1(make_client: Callable[..., MqttClient]) -> None:
    sub = await started(make_client("sub", subscriptions=[("t/#", 1)]))
    pub = await started(make_client("pub"))
    await pub.publish("t/0", b"zero", qos=0)
    await pub.publish("t/1", b"one", qos=1, timeout=5)  # returns once the PUBACK is in
    got = [await sub.receive(5), await sub.receive(5)]
    assert sorted((m.topic, m.payload, m.qos) for m in got) == [("t/0", b"zero", 0), ("t/1", b"one", 1)]
    assert pub.stats.published == 2 and sub.stats.received == 2


async def test_many_qos1_in_flight(make_client: Callable[..., MqttClient]) -> None:
    sub = await started(make_client("sub", subscriptions=[("n/#", 1)]))
    pub = await started(make_client("pub"))
    await asyncio.gather(*(pub.publish("n/x", str(i).encode(), qos=1, timeout=10) for i in range(500)))
    got = [int((await sub.receive(5)).payload) for _ in range(500)]
    assert got == list(range(500))  # one publisher, one topic: order kept


async def test_reconnects_after_broker_restart(
    broker: Broker, make_client: Callable[..., MqttClient]
) -> None:
    reconnected = asyncio.Event()
    c = make_client("agent", subscriptions=[("r/#", 1)])
    calls = 0

    async def on_connect() -> None:
        nonlocal calls
        calls += 1
        if calls == 2:
            reconnected.set()

    c.add_on_connect(on_connect)
    await started(c)
    await asyncio.to_thread(broker.restart)
    await asyncio.wait_for(reconnected.wait(), 10)
    assert c.connected and c.stats.connects == 2 and c.stats.disconnects == 1
    # Publishing works again and the subscription was restored.
    await c.publish("r/x", b"again", qos=1, timeout=5)
    assert (await c.receive(5)).payload == b"again"


async def test_publish_while_disconnected_fails_fast(
    broker: Broker, make_client: Callable[..., MqttClient]
) -> None:
    c = await started(make_client("agent"))
    await asyncio.to_thread(broker.stop)
    await c.wait_disconnected(10)
    async with asyncio.timeout(0.5):
        with pytest.raises(MqttError):
            await c.publish("x/y", b"nope", qos=1, timeout=5)
        with pytest.raises(MqttError):
            await c.publish("x/y", b"nope", qos=0)


async def test_publish_never_connected_fails_fast(make_client: Callable[..., MqttClient]) -> None:
    cfg = MqttConfig(host="127.0.0.1", port=1, reconnect_min_s=0.05, reconnect_max_s=0.1)
    c = make_client("lonely", cfg)
    await c.start()
    with pytest.raises(MqttError):
        await c.publish("x", b"y")
    with pytest.raises(MqttError, match="not connected"):
        await c.wait_connected(0.3)


async def test_unacked_message_is_redelivered_to_same_client_id(
    make_client: Callable[..., MqttClient],
) -> None:
    """The exactly-once design rests on this: no PUBACK, no loss."""
    a1 = await started(make_client("receiver", subscriptions=[("s/#", 1)], manual_ack=True))
    pub = await started(make_client("pub"))
    await pub.publish("s/1", b"first", qos=1, timeout=5)
    m = await a1.receive(5)
    assert m.payload == b"first" and not m.dup
    await a1.stop()  # never acked

    a2 = await started(make_client("receiver", subscriptions=[("s/#", 1)], manual_ack=True))
    again = await a2.receive(5)
    assert again.payload == b"first" and again.dup
    a2.ack(again)
    await pub.publish("s/2", b"second", qos=1, timeout=5)
    assert (await a2.receive(5)).payload == b"second"
    await a2.stop()  # "second" not acked, "first" acked

    a3 = await started(make_client("receiver", subscriptions=[("s/#", 1)], manual_ack=True))
    assert (await a3.receive(5)).payload == b"second"
    with pytest.raises(MqttError):
        await a3.receive(0.3)  # "first" is gone for good


async def test_ack_from_an_old_connection_is_ignored(
    broker: Broker, make_client: Callable[..., MqttClient]
) -> None:
    c = await started(make_client("receiver", subscriptions=[("s/#", 1)], manual_ack=True))
    pub = await started(make_client("pub"))
    await pub.publish("s/1", b"m", qos=1, timeout=5)
    old = await c.receive(5)
    reconnected = asyncio.Event()

    async def on_connect() -> None:
        reconnected.set()

    c.add_on_connect(on_connect)
    await asyncio.to_thread(broker.restart)
    await asyncio.wait_for(reconnected.wait(), 10)
    c.ack(old)  # its packet id belongs to the dead connection
    assert c.stats.stale_acks == 1
    redelivered = await c.receive(5)
    assert redelivered.payload == b"m" and redelivered.generation != old.generation


async def test_messages_published_while_offline_arrive_on_reconnect(
    make_client: Callable[..., MqttClient],
) -> None:
    first = await started(make_client("agent", subscriptions=[("o/#", 1)]))
    await first.stop()
    pub = await started(make_client("pub"))
    for i in range(200):
        await pub.publish("o/x", str(i).encode(), qos=1, timeout=5)
    again = await started(make_client("agent", subscriptions=[("o/#", 1)]))
    got = [int((await again.receive(5)).payload) for _ in range(200)]
    assert got == list(range(200))


async def test_acl_denial_raises_publish_denied(tmp_path: Path) -> None:
    acl = tmp_path / "acl"
    # Lines before any "user" line apply to anonymous clients (mosquitto 2.0).
    acl.write_text("topic readwrite allowed/#\ntopic read #\n")
    with Broker(tmp_path / "b", acl_file=acl) as b:
        cfg = MqttConfig(host=b.host, port=b.port, reconnect_min_s=0.05, reconnect_max_s=0.5)
        c = MqttClient(cfg, "acl-test")
        await c.start()
        try:
            await c.wait_connected(5)
            await c.publish("allowed/x", b"ok", qos=1, timeout=5)
            with pytest.raises(PublishDenied) as info:
                await c.publish("forbidden/x", b"no", qos=1, timeout=5)
            assert info.value.reason_code == 135
            assert c.stats.denied == 1 and c.connected
        finally:
            await c.stop()


async def test_bad_credentials_are_reported_as_permanent(tmp_path: Path) -> None:
    pw = tmp_path / "passwd"
    add_password(pw, "alice", "right")
    with Broker(tmp_path / "b", allow_anonymous=False, password_file=pw) as b:
        base = {"host": b.host, "port": b.port, "reconnect_min_s": 0.05, "reconnect_max_s": 5.0}
        bad = MqttClient(MqttConfig(**base, username="alice", password="wrong"), "bad")  # type: ignore[arg-type]
        good = MqttClient(MqttConfig(**base, username="alice", password="right"), "good")  # type: ignore[arg-type]
        await bad.start()
        await good.start()
        try:
            await good.wait_connected(5)
            with pytest.raises(ConnectRefused) as info:
                await bad.wait_connected(1.0)
            assert info.value.reason_code in (0x86, 0x87)  # mosquitto 2.0 answers 135
            assert bad.stats.connect_failures == 1  # waits reconnect_max_s, does not spin
        finally:
            await bad.stop()
            await good.stop()


WILL_CHILD = textwrap.dedent(
    """
    import asyncio, sys
    from edge_agent.config import MqttConfig
    from edge_agent.transport.mqtt import MqttClient, Will

    async def main():
        c = MqttClient(MqttConfig(host="127.0.0.1", port=int(sys.argv[1])), "doomed",
                       will=Will("w/doomed/status", b"offline"))
        await c.start()
        await c.wait_connected(5)
        print("ready", flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())
    """
)


async def test_last_will_published_when_client_is_killed(
    broker: Broker, make_client: Callable[..., MqttClient]
) -> None:
    watcher = await started(make_client("watcher", subscriptions=[("w/#", 1)]))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", WILL_CHILD, str(broker.port),
        stdout=asyncio.subprocess.PIPE, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 15)
        assert line.strip() == b"ready"
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
        m = await watcher.receive(10)
        assert (m.topic, m.payload) == ("w/doomed/status", b"offline")
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_clean_stop_sends_no_will(make_client: Callable[..., MqttClient]) -> None:
    watcher = await started(make_client("watcher", subscriptions=[("w/#", 1)]))
    c = await started(make_client("polite", will=Will("w/polite/status", b"offline", retain=False)))
    await c.stop()
    await c.stop()  # idempotent
    leftover = [t for t in asyncio.all_tasks() if (t.get_name() or "").startswith("polite-")]
    assert leftover == []
    await watcher.publish("w/marker", b"m", qos=1, timeout=5)
    assert (await watcher.receive(5)).topic == "w/marker"  # the will would have come first


async def test_request_response(make_client: Callable[..., MqttClient]) -> None:
    server = await started(make_client("server"))
    client = await started(make_client("client"))

    async def upper(msg: Message) -> bytes:
        return msg.payload.upper()

    await Rpc(server).serve("rpc/upper/#", upper)
    rpc = Rpc(client)
    replies = await asyncio.gather(*(rpc.request(f"rpc/upper/{i}", b"abc%d" % i, 5) for i in range(20)))
    assert [r.payload for r in replies] == [b"ABC%d" % i for i in range(20)]
    with pytest.raises(MqttError):
        await rpc.request("rpc/nobody", b"x", 0.3)


async def test_backpressure_pauses_and_resumes(make_client: Callable[..., MqttClient]) -> None:
    sub = await started(make_client("slow", subscriptions=[("bp/#", 0)], max_incoming=50))
    pub = await started(make_client("pub"))
    for i in range(300):
        await pub.publish("bp/x", str(i).encode(), qos=1, timeout=5)
    got = [int((await sub.receive(5)).payload) for _ in range(300)]
    assert got == list(range(300))
    assert sub.stats.paused >= 1
