"""Secrets and raw PII never reach the agent's logs or anything it publishes.

A real agent authenticates to a real mosquitto with a password (password file,
``allow_anonymous false``); devices send chat utterances carrying an e-mail
address, a phone number, a Luhn-valid card number and an SSN, plus a malformed
chat payload carrying the same PII. The test captures the agent's JSON log and
everything it publishes (``edgeloop/v1/nodes/#`` with summaries inflated, and
``devices/+/chat/out``), and scans both.

Decision on dead letters: the malformed payload IS kept, truncated to 1 KiB, in
the device-local ``dead_letters`` table, by design (an operator debugging a
device needs the bytes). That table never leaves the device, is bounded
(``dead_letter_max_rows``) and lives in the agent's 0700 state dir; the test
asserts it is there so that this stays a visible, deliberate choice.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import zlib
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edgeloop_sim.broker import Broker, add_password
from edgeloop_sim.harness.agent import AgentProcess, agent_config, wait_until

PASSWORD = "S3cr3t-Broker-Pa55word!"
PII = {
    "email": "jane.roe@example.com",
    "phone": "+1 415 555 2671",
    "card": "4111 1111 1111 1111",  # Luhn-valid
    "card_compact": "4111111111111111",
    "ssn": "123-45-6789",
}


@pytest.mark.parametrize(
    "level",
    [
        "INFO",
        "DEBUG",
    ],
)
def test_no_secret_or_raw_pii_in_logs_or_uplink(tmp_path: Path, level: str) -> None:
    pwfile = tmp_path / "passwd"
    for user, pw in (("n1", PASSWORD), ("device", "device-pw"), ("watcher", "watcher-pw")):
        add_password(pwfile, user, pw)
    broker = Broker(tmp_path / "mosquitto", allow_anonymous=False, password_file=pwfile)
    broker.start()
    watcher = paho.Client(CallbackAPIVersion.VERSION2, client_id="watcher", protocol=paho.MQTTv5)
    device = paho.Client(CallbackAPIVersion.VERSION2, client_id="device", protocol=paho.MQTTv5)
    agent: AgentProcess | None = None
    seen: list[tuple[str, bytes]] = []
    try:
        watcher.username_pw_set("watcher", "watcher-pw")
        watcher.on_message = lambda _c, _u, m: seen.append((m.topic, bytes(m.payload)))
        subscribed: list[int] = []
        watcher.on_subscribe = lambda *_a: subscribed.append(1)
        watcher.connect(broker.host, broker.port)
        watcher.loop_start()
        watcher.subscribe([("edgeloop/v1/nodes/#", 1), ("devices/+/chat/out", 1)])
        wait_until(lambda: subscribed, 5, "watcher subscribed")

        cfg = agent_config(
            tmp_path,
            "n1",
            broker.port,
            mqtt={"username": "n1", "password": PASSWORD},
            windows={"length_s": 3600.0, "idle_close_s": 3600.0},
            log={"level": level, "format": "json"},
        )
        agent = AgentProcess(tmp_path, cfg)
        agent.start()
        device.username_pw_set("device", "device-pw")
        device.connect(broker.host, broker.port)
        device.loop_start()
        texts = [
            f"email me at {PII['email']} please",
            f"call {PII['phone']} tomorrow",
            f"my card is {PII['card']} and {PII['card_compact']}",
            f"ssn {PII['ssn']}",
        ]
        msgs = [
            json.dumps(
                {"session_id": f"s{i}", "msg_id": f"m{i}", "text": t, "ts": 1_700_000_000 + i}
            ).encode()
            for i, t in enumerate(texts)
        ]
        # Malformed (ts is a string): rejected and dead-lettered, the PII inside must not be logged.
        bad = json.dumps(
            {"session_id": "s9", "msg_id": "m9", "text": texts[0] + texts[3], "ts": "now"}
        ).encode()
        infos = [device.publish("devices/d1/chat/in", p, qos=1) for p in [*msgs, bad]]
        infos.append(device.publish("devices/d1/telemetry", b'{"ts": 1700000000, "values": {"x": 1}}', qos=1))
        for info in infos:
            info.wait_for_publish(10)
        wait_until(
            lambda: sum(1 for t, _ in seen if t == "devices/d1/chat/out") == len(msgs), 15, "chat replies"
        )
        wait_until(lambda: "rejected inbound message" in agent.log_text(), 10, "the reject logged")
        # SIGTERM flushes the open windows and chat statistics into a summary and sends it.
        assert agent.terminate() == 0
        wait_until(lambda: any(t.endswith("/summaries") for t, _ in seen), 10, "the final summary")
    finally:
        for c in (watcher, device):
            c.loop_stop()
            with contextlib.suppress(Exception):
                c.disconnect()
        if agent is not None:
            agent.close()
        broker.stop()

    uplink = []
    for topic, payload in seen:
        uplink.append(zlib.decompress(payload) if topic.endswith("/summaries") else payload)
    summary = next(json.loads(p) for (t, _), p in zip(seen, uplink, strict=True) if t.endswith("/summaries"))
    assert summary["chat"]["messages"] == len(msgs)  # the utterances were processed, not dropped
    log = agent.log_text()
    assert '"level": "INFO"' in log
    haystacks = {"agent log": log.encode(), "uplink": b"\n".join(uplink)}
    needles = {"broker password": PASSWORD, **{f"raw {k}": v for k, v in PII.items()}}
    for where, hay in haystacks.items():
        for what, needle in needles.items():
            assert needle.encode() not in hay, f"{what} found in {where}"
            assert json.dumps(needle)[1:-1].encode() not in hay, f"{what} (JSON-escaped) found in {where}"

    # Dead letters keep the raw payload locally, by design (see the module docstring).
    db = Path(cfg["state_dir"]) / "agent.db"
    with contextlib.closing(sqlite3.connect(db)) as conn:
        rows = conn.execute("SELECT reason, payload FROM dead_letters").fetchall()
    assert [r for r, _ in rows] == ["wrong_type"]
    assert PII["email"].encode() in bytes(rows[0][1])
