"""The per-device answer cap on refused messages is bounded in time, per device, globally and in memory."""

from __future__ import annotations

from edge_agent.pipeline.limits import PerDeviceCap


def test_per_device_burst_then_a_new_window() -> None:
    cap = PerDeviceCap(burst=3, window_s=10.0)
    assert [cap.allow("d1", 0.0) for _ in range(5)] == [True, True, True, False, False]
    assert cap.allow("d2", 1.0)  # another device has its own budget
    assert not cap.allow("d1", 9.9)
    assert cap.allow("d1", 10.0)  # the window moved on
    assert cap.suppressed == 3


def test_many_devices_cannot_turn_the_agent_into_an_amplifier() -> None:
    cap = PerDeviceCap(burst=5, window_s=10.0, global_per_s=50, max_devices=100)
    answered = sum(cap.allow(f"dev-{i}", 0.5) for i in range(1000))
    assert answered == 50  # the global cap, whatever the number of device ids
    assert len(cap._seen) <= 100  # memory bounded: the least recently seen devices are forgotten
