"""Shared fixtures: a real mosquitto per test, on a free port, in tmp_path."""

from __future__ import annotations

from collections.abc import Generator, Iterator
from pathlib import Path

import pytest

from edge_agent.config import MqttConfig
from edgeloop_sim.broker import Broker


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    # Remember each phase's outcome so fixtures can add context (the broker log) on failure.
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


@pytest.fixture
def broker(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Broker]:
    b = Broker(tmp_path / "mosquitto")
    b.start()
    try:
        yield b
    finally:
        b.stop()
        rep = getattr(request.node, "rep_call", None)
        if rep is not None and rep.failed:
            print(f"\n----- mosquitto log ({b.log_path}) -----\n{b.tail_log(80)}")


@pytest.fixture
def mqtt_cfg(broker: Broker) -> MqttConfig:
    return MqttConfig(
        host=broker.host,
        port=broker.port,
        keepalive_s=10,
        reconnect_min_s=0.05,
        reconnect_max_s=0.5,
        connect_timeout_s=5.0,
    )
