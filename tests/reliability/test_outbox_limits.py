"""Outbox limits on the real agent process: byte cap (both policies), age limit, full disk.

The uplink outage is real: the broker is stopped (SIGTERM, it saves its sessions)
after the agent absorbed the telemetry and before its windows close, so the
summaries are committed while nothing can be delivered. The windows close by
``idle_close_s`` on the agent's wall clock, no inbound message is needed. The
broker is then started again on the same port and the agent's survivors arrive
at a persistent-session subscriber.

Exact accounting needs the size of records that were dropped and so are gone
from the database. A test-only SQLite trigger (created before the agent starts,
on the agent's own file) logs ``(seq, size, kind)`` of every row inserted into
the outbox; it observes the real store and changes nothing it does.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties

from edge_agent.config import OutboxConfig
from edge_agent.outbox.agent_store import AgentStore
from edge_agent.protocol import messages as wire
from edge_agent.protocol import topics
from edgeloop_sim.broker import Broker
from edgeloop_sim.harness.agent import AgentProcess, agent_config, wait_until

NODE = "n1"
DEVICES = 40
SUMMARIES = topics.summaries(NODE)


# --------------------------------------------------------------------------- helpers


def prepare_db(db: Path) -> None:
    """Create the agent's database with the real store, then add the audit trigger."""

    async def create() -> None:
        async with AgentStore(db, OutboxConfig()):
            pass

    asyncio.run(create())
    with contextlib.closing(sqlite3.connect(db)) as c:
        c.executescript(
            """
            CREATE TABLE test_audit (seq INTEGER PRIMARY KEY, size INTEGER NOT NULL, kind TEXT NOT NULL);
            CREATE TRIGGER test_audit_insert AFTER INSERT ON outbox
            BEGIN INSERT INTO test_audit VALUES (NEW.seq, NEW.size, NEW.kind); END;
            """
        )


class DbView:
    """Read-only look at the agent's SQLite file while the agent runs (WAL allows a reader)."""

    def __init__(self, db: Path) -> None:
        self.db = db

    def _q(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        with contextlib.closing(sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=5)) as c:
            return c.execute(sql, args).fetchall()

    def counts(self) -> dict[str, int]:
        """Store counters summed over record kinds, e.g. ``enqueued``, ``dropped_full_bytes``."""
        out: dict[str, int] = {}
        for key, value in self._q("SELECT key, value FROM meta WHERE key LIKE 'store.count.%'"):
            name = str(key).removeprefix("store.count.").split(".", 1)[0]
            if name != "dead_letters":
                out[name] = out.get(name, 0) + int(value)
        return out

    def c(self, name: str) -> int:
        return self.counts().get(name, 0)

    def outbox(self) -> list[tuple[int, int]]:
        return [(int(s), int(z)) for s, z in self._q("SELECT seq, size FROM outbox ORDER BY seq")]

    def audit(self) -> dict[int, int]:
        return {int(s): int(z) for s, z in self._q("SELECT seq, size FROM test_audit")}

    def window_states(self) -> int:
        return int(self._q("SELECT COUNT(*) FROM state WHERE key LIKE 'win:%'")[0][0])

    def next_seq(self) -> int:
        rows = self._q("SELECT value FROM meta WHERE key = 'store.next_seq'")
        return int(rows[0][0]) if rows else 1


class Cloud:
    """A persistent-session subscriber to the node's summaries: survives the broker restart."""

    def __init__(self, broker: Broker) -> None:
        self.batches: list[wire.SummaryBatch] = []
        self.c = paho.Client(CallbackAPIVersion.VERSION2, client_id="test-cloud", protocol=paho.MQTTv5)
        self.c.on_message = lambda _c, _u, m: self.batches.append(wire.decode_summary(bytes(m.payload)))
        self.c.reconnect_delay_set(1, 1)
        props = Properties(paho.PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600
        self.c.connect(broker.host, broker.port, clean_start=False, properties=props)
        subscribed: list[int] = []
        self.c.on_subscribe = lambda *_a: subscribed.append(1)
        self.c.loop_start()
        self.c.subscribe(SUMMARIES, qos=1)
        wait_until(lambda: subscribed, 5, "subscription")

    def seqs(self) -> list[int]:
        return sorted({b.seq for b in self.batches})

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


def publish_readings(broker: Broker, devices: int, now: float) -> None:
    c = paho.Client(CallbackAPIVersion.VERSION2, client_id="test-devices", protocol=paho.MQTTv5)
    c.connect(broker.host, broker.port)
    c.loop_start()
    infos = [
        c.publish(f"devices/d{i}/telemetry", json.dumps({"ts": now, "values": {"x": i}}).encode(), qos=1)
        for i in range(devices)
    ]
    for info in infos:
        info.wait_for_publish(10)
    c.loop_stop()
    c.disconnect()


@pytest.fixture
def cloud(broker: Broker) -> Iterator[Cloud]:
    cl = Cloud(broker)
    yield cl
    cl.close()


@pytest.fixture
def agents() -> Iterator[list[AgentProcess]]:
    started: list[AgentProcess] = []
    yield started
    for a in started:
        a.close()
        print(f"----- agent {a.name} log -----\n" + "\n".join(a.log_text().splitlines()[-30:]))


def alive(agent: AgentProcess) -> bool:
    return agent.proc is not None and agent.proc.poll() is None


def outage_run(
    tmp_path: Path, broker: Broker, agents: list[AgentProcess], **outbox: Any
) -> tuple[AgentProcess, DbView]:
    """Start the agent, feed one reading per device, stop the broker, let the windows close."""
    cfg = agent_config(
        tmp_path,
        NODE,
        broker.port,
        windows={"length_s": 3600.0, "idle_close_s": 3.0},
        outbox={"batch_max_windows": 1, "batch_max_delay_s": 0.05, **outbox},
    )
    db = Path(cfg["state_dir"]) / "agent.db"
    prepare_db(db)
    agent = AgentProcess(tmp_path, cfg)
    agents.append(agent)
    agent.start()
    view = DbView(db)
    publish_readings(broker, DEVICES, time.time())
    wait_until(lambda: view.window_states() == DEVICES, 10, "readings absorbed and committed")
    assert view.c("enqueued") + view.c("rejected_full") == 0, "windows closed before the outage began"
    broker.stop()
    wait_until(
        lambda: view.c("enqueued") + view.c("rejected_full") == DEVICES,
        20,
        "summaries made during the outage",
    )
    assert alive(agent)
    return agent, view


# --------------------------------------------------------------------------- byte cap


@pytest.mark.parametrize("policy", ["drop_oldest", "reject_new"])
def test_byte_cap_policy_counts_exactly_and_survivors_arrive(
    tmp_path: Path, broker: Broker, cloud: Cloud, agents: list[AgentProcess], policy: str
) -> None:
    max_bytes = 4096  # the smallest the config allows: ~13 summaries of ~300 bytes
    agent, view = outage_run(tmp_path, broker, agents, max_bytes=max_bytes, when_full=policy)
    counts, rows, audit = view.counts(), view.outbox(), view.audit()
    stored = [s for s, _ in rows]
    kept_bytes = sum(z for _, z in rows)
    assert counts.get("acked", 0) == 0 and cloud.batches == []
    assert kept_bytes <= max_bytes
    if policy == "drop_oldest":
        dropped = sorted(set(audit) - set(stored))
        assert counts["enqueued"] == DEVICES and counts.get("rejected_full", 0) == 0
        assert len(rows) + counts["dropped_full"] == counts["enqueued"]
        assert counts["dropped_full"] == len(dropped) > 0
        assert counts["dropped_full_bytes"] == sum(audit[s] for s in dropped)
        assert max(dropped) < min(stored), "the oldest were dropped, the newest kept"
        # The drop stopped as soon as the rest fit: one more record would not have.
        assert kept_bytes + audit[max(dropped)] > max_bytes
    else:
        refused = counts["rejected_full"]
        assert counts.get("dropped_full", 0) == 0 and counts["enqueued"] == len(rows) == len(audit)
        assert counts["enqueued"] + refused == DEVICES and refused > 0
        # The oldest were kept: stored seqs come first, every seq after them was refused.
        first = min(stored)
        assert stored == list(range(first, first + len(stored)))
        assert view.next_seq() == first + DEVICES
    before_restart = stored
    broker.start()
    wait_until(lambda: cloud.seqs() == before_restart, 20, "the surviving records at the cloud")
    wait_until(lambda: view.c("acked") == len(before_restart) and not view.outbox(), 10, "outbox drained")
    readings = sum(b.readings for b in cloud.batches if b.seq in set(before_restart))
    assert readings == len(before_restart)  # one reading per window, one window per record
    assert alive(agent)
    assert "outbox full: dropped records by policy" in agent.log_text() or policy == "reject_new"


# --------------------------------------------------------------------------- age limit


def test_age_limit_expires_exactly(
    tmp_path: Path, broker: Broker, cloud: Cloud, agents: list[AgentProcess]
) -> None:
    agent, view = outage_run(tmp_path, broker, agents, max_age_s=1.0)
    wait_until(lambda: view.c("dropped_age") == DEVICES, 10, "every record expired by age")
    counts = view.counts()
    assert counts["enqueued"] == DEVICES and view.outbox() == []
    assert counts.get("dropped_full", 0) == 0 and counts.get("acked", 0) == 0
    broker.start()
    agent.notify.wait_for("STATUS=connected*", timeout=20)
    assert alive(agent) and view.c("acked") == 0
    assert "outbox records expired by age" in agent.log_text()
    assert cloud.batches == []


# --------------------------------------------------------------------------- full disk


def _mount_tmpfs(path: Path, size: str) -> bool:
    if os.geteuid() != 0:
        return False
    path.mkdir(parents=True, exist_ok=True)
    res = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True
    )
    return res.returncode == 0


def _fill(path: Path) -> Path:
    """Write a filler file until the file system says ENOSPC (unbuffered: no flush fails later)."""
    filler = path / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for block in (65536, 512, 1):
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"\0" * block)
    finally:
        os.close(fd)
    return filler


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a tmpfs")
    mnt = tmp_path / "smalldisk"
    if not _mount_tmpfs(mnt, "3m"):
        pytest.skip("cannot mount a tmpfs here")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_full_disk_agent_stays_up_and_recovers(
    tmp_path: Path, small_disk: Path, broker: Broker, cloud: Cloud, agents: list[AgentProcess]
) -> None:
    cfg = agent_config(
        tmp_path,
        NODE,
        broker.port,
        windows={"length_s": 3600.0, "idle_close_s": 0.5},
        outbox={"batch_max_delay_s": 0.05},
    )
    cfg["state_dir"] = str(small_disk / "state")
    agent = AgentProcess(tmp_path, cfg)
    agents.append(agent)
    agent.start()
    view = DbView(small_disk / "state" / "agent.db")
    filler = _fill(small_disk)
    publish_readings(broker, DEVICES, time.time())
    wait_until(lambda: "commit failed" in agent.log_text(), 15, "a commit failing on ENOSPC")
    assert alive(agent), "the agent died on a full disk"
    # Nothing was acknowledged: the device messages wait at the broker (or in memory) for the retry.
    filler.unlink()
    wait_until(
        lambda: sum(b.readings for b in cloud.batches) >= DEVICES, 30, "every reading after the disk freed"
    )
    assert sum(b.readings for b in cloud.batches) == DEVICES, "no reading lost or counted twice"
    assert alive(agent)
    wait_until(lambda: view.c("acked") == view.c("enqueued") > 0, 10, "outbox drained")
