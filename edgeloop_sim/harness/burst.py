"""A burst of summaries and hard examples from many simulated nodes, as fast as QoS 1 allows.

Why not the fleet simulator: the replica tests and the ingest bench need to
know, message by message, what the broker accepted (every PUBACK), so that
"sent" is a number and "counted" can be compared with it; and they want the
broker, not the publisher, to be the thing under load. A few connections
publish on behalf of many nodes (the test broker has no ACLs), each a
persistent MQTT 5 session, and the burst is deterministic: node ``n``'s batch
``s`` always has the same id, sequence number and readings, so the expected
totals are computed, not collected (:func:`expected_readings`).

Run in its own process (``python -m edgeloop_sim.harness.burst``) so the
publisher's GIL never competes with the caller's polling; it prints one JSON
line with what was acknowledged and how long it took.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from dataclasses import asdict, dataclass

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge_agent.protocol import messages as wire
from edge_agent.protocol import topics
from edgeloop_sim.sim_node import node_names

__all__ = ["BurstPlan", "BurstResult", "expected_readings", "hard_example", "publish_burst", "summary"]


@dataclass(frozen=True)
class BurstPlan:
    host: str
    port: int
    nodes: int = 50
    summaries_per_node: int = 40
    hard_per_node: int = 4
    connections: int = 4
    inflight: int = 200  # QoS 1 publishes awaiting PUBACK per connection
    rate: float = 0.0  # messages per second over all connections (0: as fast as the broker acks)
    prefix: str = "burst"
    timeout_s: float = 120.0

    @property
    def names(self) -> list[str]:
        return node_names(self.nodes, self.prefix)

    @property
    def summaries(self) -> int:
        return self.nodes * self.summaries_per_node

    @property
    def hard_examples(self) -> int:
        return self.nodes * self.hard_per_node


@dataclass
class BurstResult:
    summaries_acked: int = 0
    hard_acked: int = 0
    seconds: float = 0.0


def _windows(seq: int) -> int:
    return 1 + seq % 4


def summary(node: str, seq: int, created: float = 1_700_000_000.0) -> wire.SummaryBatch:
    """Batch ``seq`` of ``node``: ids unique per node only (the same id on every node, on purpose)."""
    windows = [
        wire.WindowSummary(device=f"dev-{i}", metric="temperature", start=created - 10, end=created,
                           count=5 + (seq + i) % 7, min=20.0, max=22.0, mean=21.0, std=0.5,
                           first=20.5, last=21.5, slope=0.01)
        for i in range(_windows(seq))
    ]
    return wire.SummaryBatch(id=f"batch-{seq:08d}", node=node, seq=seq, created=created + seq,
                             windows=windows)


def expected_readings(summaries_per_node: int) -> int:
    """Readings one node's burst carries (the same for every node)."""
    return sum(5 + (seq + i) % 7 for seq in range(summaries_per_node) for i in range(_windows(seq)))


def hard_example(node: str, i: int) -> wire.HardExample:
    return wire.HardExample(id=f"hard-{i:06d}", node=node, created=1_700_000_000.0 + i, task="chat",
                            text=f"where is my order number {i}",
                            student={"intent": "unknown", "confidence": 0.2})


def _messages(plan: BurstPlan, names: list[str]) -> list[tuple[str, bytes, bool]]:
    """(topic, payload, is_summary), interleaved across nodes as a fleet would send them."""
    out: list[tuple[str, bytes, bool]] = []
    for seq in range(max(plan.summaries_per_node, plan.hard_per_node)):
        for node in names:
            if seq < plan.summaries_per_node:
                out.append((topics.summaries(node), wire.encode_summary(summary(node, seq)), True))
            if seq < plan.hard_per_node:
                out.append((topics.hard_examples(node), wire.dumps(hard_example(node, seq)), False))
    return out


class _Connection:
    """One persistent-session publisher; ``run`` returns once every publish got its PUBACK.

    paho keeps at most ``inflight`` publishes unacknowledged and queues the rest itself.
    """

    def __init__(self, plan: BurstPlan, client_id: str, messages: list[tuple[str, bytes, bool]]) -> None:
        self.plan = plan
        self.messages = messages
        self.result = BurstResult()
        self._connected = threading.Event()
        self.c = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5)
        self.c.max_inflight_messages_set(plan.inflight)
        self.c.max_queued_messages_set(0)
        self.c.on_connect = lambda *_a: self._connected.set()

    def run(self, deadline: float) -> BurstResult:
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600
        self.c.connect(self.plan.host, self.plan.port, keepalive=30, clean_start=False, properties=props)
        self.c.loop_start()
        try:
            if not self._connected.wait(max(0.0, deadline - time.monotonic())):
                raise TimeoutError("publisher could not connect")
            sent = []
            interval = self.plan.connections / self.plan.rate if self.plan.rate else 0.0
            start = time.monotonic()
            for i, (topic, payload, is_summary) in enumerate(self.messages):
                if interval and (ahead := start + i * interval - time.monotonic()) > 0:
                    time.sleep(ahead)  # pacing: the burst spans a while, so a kill lands in its middle
                sent.append((self.c.publish(topic, payload, qos=1), is_summary))
            for info, is_summary in sent:
                info.wait_for_publish(max(0.1, deadline - time.monotonic()))
                if not info.is_published():
                    raise TimeoutError(f"no PUBACK for message {info.mid}")
                if is_summary:
                    self.result.summaries_acked += 1
                else:
                    self.result.hard_acked += 1
        finally:
            self.c.disconnect()
            self.c.loop_stop()
        return self.result


def publish_burst(plan: BurstPlan) -> BurstResult:
    """Publish the whole plan over ``plan.connections`` connections; raises unless all were acked."""
    names = plan.names
    groups = [names[i :: plan.connections] for i in range(plan.connections)]
    conns = [_Connection(plan, f"{plan.prefix}-pub-{i}", _messages(plan, g))
             for i, g in enumerate(groups) if g]
    deadline = time.monotonic() + plan.timeout_s
    errors: list[BaseException] = []

    def run(conn: _Connection) -> None:
        try:
            conn.run(deadline)
        except BaseException as exc:  # reported below, in the caller's thread
            errors.append(exc)

    start = time.monotonic()
    threads = [threading.Thread(target=run, args=(c,), daemon=True) for c in conns]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    total = BurstResult(seconds=time.monotonic() - start)
    for c in conns:
        total.summaries_acked += c.result.summaries_acked
        total.hard_acked += c.result.hard_acked
    return total


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--nodes", type=int, default=50)
    p.add_argument("--summaries", type=int, default=40, help="summaries per node")
    p.add_argument("--hard", type=int, default=4, help="hard examples per node")
    p.add_argument("--connections", type=int, default=4)
    p.add_argument("--rate", type=float, default=0.0, help="messages/s in total (0: unpaced)")
    p.add_argument("--prefix", default="burst")
    p.add_argument("--timeout", type=float, default=120.0)
    a = p.parse_args(argv)
    plan = BurstPlan(a.host, a.port, a.nodes, a.summaries, a.hard, a.connections, rate=a.rate,
                     prefix=a.prefix, timeout_s=a.timeout)
    print(json.dumps(asdict(publish_burst(plan))), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
