"""Prometheus metrics over real HTTP, and structured, redacted logs."""

from __future__ import annotations

import io
import json
import logging
import os
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from edge_agent.config import AgentConfig, LogConfig
from edge_agent.daemon import Agent
from edge_agent.ops.logs import redact, redact_text, setup_logging, under_journal
from edge_agent.ops.metrics import AgentMetrics


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        assert resp.status == 200
        return resp.read().decode()


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


@pytest.fixture
def metrics() -> Iterator[AgentMetrics]:
    m = AgentMetrics(version="1.2.3")
    yield m
    m.stop_http()


def test_http_endpoint_serves_counters(metrics: AgentMetrics) -> None:
    port = metrics.start_http("127.0.0.1", 0)
    assert port > 0 and metrics.port == port
    metrics.messages_in.labels(kind="telemetry").inc(3)
    metrics.messages_in.labels(kind="chat").inc()
    metrics.readings_in.inc(42)
    metrics.rejected.labels(reason="schema").inc()
    metrics.outbox_dropped.labels(reason="full").inc(2)
    metrics.outbox_rows.set(7)
    metrics.uplink_bytes.inc(1000)
    metrics.raw_equivalent_bytes.inc(25000)
    metrics.mqtt_connected.set(1)
    metrics.inference_seconds.labels(model="intent").observe(0.003)

    samples = _samples(_scrape(port))
    assert samples[("edgeloop_agent_messages_in_total", (("kind", "telemetry"),))] == 3
    assert samples[("edgeloop_agent_messages_in_total", (("kind", "chat"),))] == 1
    assert samples[("edgeloop_agent_readings_in_total", ())] == 42
    assert samples[("edgeloop_agent_rejected_total", (("reason", "schema"),))] == 1
    assert samples[("edgeloop_agent_outbox_dropped_total", (("reason", "full"),))] == 2
    assert samples[("edgeloop_agent_outbox_rows", ())] == 7
    assert samples[("edgeloop_agent_uplink_bytes_total", ())] == 1000
    assert samples[("edgeloop_agent_raw_equivalent_bytes_total", ())] == 25000
    assert samples[("edgeloop_agent_mqtt_connected", ())] == 1
    assert samples[("edgeloop_agent_inference_seconds_count", (("model", "intent"),))] == 1
    assert samples[("edgeloop_agent_build_info", (("version", "1.2.3"),))] == 1
    # Only our registry is served: no process/platform collectors from the global one.
    assert not any(name.startswith("python_gc") for name, _ in samples)


def test_every_documented_metric_is_exported(metrics: AgentMetrics) -> None:
    names = {f.name for f in text_string_to_metric_families(metrics.render().decode())}
    expected = {
        "messages_in", "readings_in", "rejected", "dead_letters", "windows_emitted", "summaries_enqueued",
        "outbox_dropped", "outbox_rows", "outbox_bytes", "outbox_oldest_age_seconds", "uplink_published",
        "uplink_acked", "uplink_bytes", "uplink_inflight", "uplink_errors", "raw_equivalent_bytes",
        "mqtt_connected", "mqtt_reconnects", "chat_messages", "escalations", "inference_seconds",
        "model_loaded", "build_info", "config_reload_failures", "sensor_windows_scored", "sensor_uncertain",
        "hard_examples", "sensor_hard_examples_dropped",
    }  # fmt: skip
    assert {f"edgeloop_agent_{n}" for n in expected} <= names


def test_two_agents_coexist_with_separate_registries() -> None:
    a, b = AgentMetrics(), AgentMetrics()
    try:
        pa, pb = a.start_http("127.0.0.1", 0), b.start_http("127.0.0.1", 0)
        assert pa != pb
        a.dead_letters.inc(5)
        b.dead_letters.inc(1)
        assert _samples(_scrape(pa))[("edgeloop_agent_dead_letters_total", ())] == 5
        assert _samples(_scrape(pb))[("edgeloop_agent_dead_letters_total", ())] == 1
    finally:
        a.stop_http()
        b.stop_http()


def test_stop_http_releases_the_port(metrics: AgentMetrics) -> None:
    port = metrics.start_http("127.0.0.1", 0)
    with pytest.raises(RuntimeError):
        metrics.start_http("127.0.0.1", 0)
    metrics.stop_http()
    assert metrics.port is None
    with pytest.raises(urllib.error.URLError):
        _scrape(port)
    metrics.stop_http()  # idempotent
    # Restartable, e.g. after a reload changed metrics.port.
    assert metrics.start_http("127.0.0.1", 0) > 0


def test_model_loaded_switches_versions(metrics: AgentMetrics) -> None:
    metrics.set_model_loaded("intent", "v1")
    metrics.set_model_loaded("anomaly", "v7")
    metrics.set_model_loaded("intent", "v2")
    loaded = {
        labels: value
        for (name, labels), value in _samples(metrics.render().decode()).items()
        if name == "edgeloop_agent_model_loaded"
    }
    assert loaded == {
        (("model", "anomaly"), ("version", "v7")): 1,
        (("model", "intent"), ("version", "v2")): 1,
    }


async def test_agent_sync_mirrors_sensor_and_hard_example_counters(tmp_path: Path) -> None:
    """The daemon's once-a-second sync moves the new counters, and survives a sensor model swap.

    The sensor model's counters restart at zero with each model while a Prometheus
    counter must only grow: the swap below is what a plain delta-from-last-value sync
    would get wrong (it would stall until the new model passed the old one's count).
    """
    agent = Agent(AgentConfig(node_id="n1", state_dir=tmp_path / "agent"), environ={})
    await agent.store.open()  # the sync reads the outbox totals too
    names = ("sensor_windows_scored", "sensor_uncertain", "hard_examples", "sensor_hard_examples_dropped")

    def exported() -> tuple[float, ...]:
        samples = _samples(agent.metrics.render().decode())
        return tuple(samples[(f"edgeloop_agent_{n}_total", ())] for n in names)

    try:
        p, c = agent.pipeline, agent.pipeline.counters
        await agent.housekeeping.sync_metrics()
        assert exported() == (0, 0, 0, 0)

        p.model_counters["sensor"].samples = 10
        c.sensor_uncertain, c.hard_examples, c.sensor_hard_examples_dropped = 3, 4, 1
        await agent.housekeeping.sync_metrics()
        assert exported() == (10, 3, 4, 1)
        await agent.housekeeping.sync_metrics()  # nothing moved: nothing counted twice
        assert exported() == (10, 3, 4, 1)

        p.set_sensor_model(None)  # a model swap: a fresh ModelCounters from zero
        p.model_counters["sensor"].samples = 2
        c.sensor_uncertain, c.hard_examples, c.sensor_hard_examples_dropped = 5, 6, 2
        await agent.housekeeping.sync_metrics()
        assert exported() == (12, 5, 6, 2)
        p.model_counters["sensor"].samples = 15
        await agent.housekeeping.sync_metrics()
        assert exported() == (25, 5, 6, 2)
    finally:
        await agent.store.close()


# --- logs -------------------------------------------------------------------


@pytest.fixture
def restore_root_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for h in list(root.handlers):
        if h not in handlers:
            root.removeHandler(h)
    root.setLevel(level)


def _lines(stream: io.StringIO) -> list[str]:
    return [line for line in stream.getvalue().splitlines() if line]


def test_json_lines_carry_fields_and_extras(restore_root_logging: None) -> None:
    out = io.StringIO()
    setup_logging(LogConfig(level="DEBUG", format="json"), "edge-7", stream=out, environ={})
    log = logging.getLogger("edge_agent.test")
    log.info("batch %s sent", "b-1", extra={"device": "dev-3", "count": 12, "ratio": 0.5})
    log.debug("debug works")
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("failed")
    entries = [json.loads(line) for line in _lines(out)]
    assert len(entries) == 3
    first = entries[0]
    assert first["msg"] == "batch b-1 sent"
    assert first["level"] == "INFO" and first["logger"] == "edge_agent.test" and first["node"] == "edge-7"
    assert first["device"] == "dev-3" and first["count"] == 12 and first["ratio"] == 0.5
    assert first["ts"].endswith("+00:00")
    assert entries[1]["level"] == "DEBUG"
    assert "ValueError: boom" in entries[2]["exc"]


def test_setup_is_idempotent(restore_root_logging: None) -> None:
    first, second = io.StringIO(), io.StringIO()
    setup_logging(LogConfig(format="json"), "n1", stream=first, environ={})
    setup_logging(LogConfig(format="json"), "n1", stream=second, environ={})
    logging.getLogger("edge_agent.x").warning("once")
    assert _lines(first) == []
    assert len(_lines(second)) == 1


def test_secrets_never_reach_the_log(restore_root_logging: None) -> None:
    out = io.StringIO()
    setup_logging(LogConfig(level="DEBUG", format="json"), "edge-1", stream=out, environ={})
    log = logging.getLogger("paho.client")  # a child logger: the handler filter still applies
    log.info("connecting with password=hunter2 to mqtts://bob:s3cr3tpw@broker:8883")
    log.info("config %s", {"username": "bob", "password": "hunter2", "nested": {"api_key": "AKIA123"}})
    log.info("auth", extra={"token": "tok-abc123", "mqtt": {"password": "hunter2"}, "tokens": 17})
    log.warning('payload {"secret": "xyzzy"} rejected')
    log.info("header Authorization: Bearer abcdefghijklmnop")
    text = out.getvalue()
    for secret in ("hunter2", "s3cr3tpw", "AKIA123", "tok-abc123", "xyzzy", "abcdefghijklmnop"):
        assert secret not in text, secret
    entries = [json.loads(line) for line in _lines(out)]
    assert entries[2]["token"] == "***" and entries[2]["mqtt"] == {"password": "***"}
    assert entries[2]["tokens"] == 17  # a count, not a credential
    assert "username" in entries[1]["msg"] and "bob" in entries[1]["msg"]


def test_text_mode_plain_and_under_journal(restore_root_logging: None) -> None:
    plain = io.StringIO()
    setup_logging(LogConfig(format="text"), "edge-2", stream=plain, environ={})
    logging.getLogger("edge_agent.t").warning("disk low", extra={"free_mb": 12, "password": "pw-xyz"})
    line = _lines(plain)[0]
    assert line[:4].isdigit()  # starts with a timestamp
    assert "WARNING edge_agent.t [edge-2] disk low" in line and "free_mb=12" in line
    assert "pw-xyz" not in line

    journal = io.StringIO()
    setup_logging(LogConfig(format="text"), "edge-2", stream=journal, environ={"JOURNAL_STREAM": "8:1234"})
    logging.getLogger("edge_agent.t").error("broker gone")
    line = _lines(journal)[0]
    # No timestamp (journald adds one); a syslog priority prefix journald strips.
    assert line == "<3>ERROR edge_agent.t [edge-2] broker gone"


def test_journal_stream_must_match_the_real_stream() -> None:
    """A child whose stderr was redirected inherits JOURNAL_STREAM but is not on the journal."""
    with open(__file__) as f:
        assert not under_journal(f, {"JOURNAL_STREAM": "1:2"})
        st = os.fstat(f.fileno())
        assert under_journal(f, {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"})
        assert not under_journal(f, {})


def test_redact_helpers() -> None:
    assert redact_text("user=bob password=hunter2") == "user=bob password=***"
    assert redact_text("tokens=5 monkey=3 key_file=/etc/k.pem") == "tokens=5 monkey=3 key_file=/etc/k.pem"
    assert redact({"tls": {"key_file": "/etc/k.pem", "private_key": "-----BEGIN"}}) == {
        "tls": {"key_file": "/etc/k.pem", "private_key": "***"}
    }
