"""The compiled topic-filter test of the RPC router agrees with paho's ``topic_matches_sub``."""

from __future__ import annotations

import paho.mqtt.client as paho
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.transport.rpc import topic_filter_matcher

_LEVEL = st.sampled_from(["a", "b", "", "$SYS", "dev-1", "x.y", "+", "#", "a+", "#b", "é"])


@st.composite
def _filter_and_topic(draw: st.DrawFn) -> tuple[str, str]:
    flt = draw(st.lists(_LEVEL, min_size=1, max_size=5))
    if "#" in flt:  # a valid filter has '#' only as its last level
        flt = flt[: flt.index("#") + 1]
    topic = draw(st.lists(_LEVEL.filter(lambda x: x not in ("+", "#")), min_size=1, max_size=6))
    if draw(st.booleans()):  # often a topic built from the filter itself, so matches are common
        topic = [draw(st.sampled_from(["a", "", "$x"])) if lv == "+" else lv for lv in flt if lv != "#"]
        topic += draw(st.lists(st.sampled_from(["a", "b", ""]), max_size=2)) if flt[-1] == "#" else []
        topic = topic or ["a"]
    return "/".join(flt), "/".join(topic)


@settings(max_examples=1000, deadline=None)
@given(_filter_and_topic())
def test_matches_like_paho(case: tuple[str, str]) -> None:
    flt, topic = case
    assert topic_filter_matcher(flt)(topic) == paho.topic_matches_sub(flt, topic), case


def test_known_cases() -> None:
    assert topic_filter_matcher("nodes/n1/rpc/call/+")("nodes/n1/rpc/call/status")
    assert not topic_filter_matcher("nodes/n1/rpc/call/+")("nodes/n1/rpc/call/a/b")
    assert topic_filter_matcher("a/#")("a")
    assert topic_filter_matcher("#")("devices/d/telemetry")
    assert not topic_filter_matcher("#")("$SYS/broker")
    assert not topic_filter_matcher("+/x")("$SYS/x")
    assert topic_filter_matcher("$SYS/#")("$SYS/x")
    assert not topic_filter_matcher("a.b")("axb")  # literal levels are escaped
