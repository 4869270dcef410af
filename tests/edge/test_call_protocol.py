"""The call payloads and topics refuse junk with a reason, at the size and shape bounds."""

from __future__ import annotations

import json

import pytest

from edge_agent.protocol import topics
from edge_agent.protocol.calls import (
    MAX_ARGS,
    MAX_CALL_BYTES,
    MAX_RESULT_BYTES,
    CallRequest,
    CallResult,
    encode_result,
    error_result,
    parse_request,
    parse_result,
    plain,
)
from edge_agent.protocol.errors import RejectedMessage


def test_call_topics_stay_under_the_node() -> None:
    assert topics.call("n-1", "config.set") == "edgeloop/v1/nodes/n-1/rpc/call/config.set"
    assert topics.calls_filter("n-1") == "edgeloop/v1/nodes/n-1/rpc/call/+"
    assert topics.call_result("n-1", "ctl") == "edgeloop/v1/nodes/n-1/rpc/result/ctl"
    assert topics.parse_call("edgeloop/v1/nodes/n-1/rpc/call/diagnostics") == ("n-1", "diagnostics")
    for bad in ("a/b", "+", "#", "", "x" * 65):
        with pytest.raises(RejectedMessage):
            topics.call("n-1", bad)
    for topic in (
        "edgeloop/v1/nodes/n-1/rpc/call/a/b",
        "edgeloop/v1/nodes/n-1/status",
        "devices/d/rpc/call/x",
    ):
        with pytest.raises(RejectedMessage):
            topics.parse_call(topic)


def _req(**fields: object) -> bytes:
    return json.dumps({"v": 1, "caller": "edgeloop-controller", "method": "diagnostics", **fields}).encode()


def test_request_parses_and_refuses_with_a_reason() -> None:
    req = parse_request(_req(args={"session": "s-1"}, timeout_s=2))
    assert req.args == {"session": "s-1"} and req.timeout_s == 2
    cases = {
        b"{not json": "malformed_json",
        _req(v=2): "invalid",
        _req(caller="a/b"): "bad_id",
        _req(args={"Key": "x"}): "bad_id",
        _req(args={"k": 1}): "wrong_type",
        _req(args={f"k{i}": "v" for i in range(MAX_ARGS + 1)}): "invalid",
        _req(args={"k": "v" * 257}): "invalid",
        _req(timeout_s=0): "invalid",
        _req(timeout_s=121): "invalid",
        b"x" * (MAX_CALL_BYTES + 1): "oversized",
    }
    for payload, reason in cases.items():
        with pytest.raises(RejectedMessage) as exc:
            parse_request(payload)
        assert exc.value.reason == reason, (payload[:80], exc.value)
    with pytest.raises(RejectedMessage):
        parse_request(json.dumps({"v": 1, "method": "diagnostics"}).encode())  # no caller


def test_result_is_ok_xor_error_and_bounded() -> None:
    ok = CallResult(node="n", method="m", ok=True, result={"a": 1})
    assert parse_result(encode_result(ok)) == ok
    err = error_result("n", "m", "unknown_method", "no such method")
    assert parse_result(encode_result(err)).error == err.error
    with pytest.raises(ValueError):
        CallResult(node="n", method="m", ok=False)
    big = CallResult(node="n", method="m", ok=True, result={"x": "y" * MAX_RESULT_BYTES})
    shrunk = parse_result(encode_result(big))
    assert not shrunk.ok and shrunk.error is not None and shrunk.error.code == "failed"
    assert "exceeds" in shrunk.error.message
    with pytest.raises(RejectedMessage):
        parse_result(
            b'{"v": 1, "node": "n", "method": "m", "ok": true, "error": {"code": "nope", "message": ""}}'
        )


def test_plain_makes_counters_json() -> None:
    from collections import Counter

    assert plain({("a", "b"): Counter(x=1), "s": {1, 2} - {2}, "p": object.__name__}) == {
        "a/b": {"x": 1},
        "s": [1],
        "p": "object",
    }
    assert CallRequest(caller="c", method="m").timeout_s == 5.0
