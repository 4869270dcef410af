"""Calls from the cloud into a node: the request and result payloads both sides parse.

A call travels as an MQTT 5 request (``topics.call``) with a ResponseTopic and
CorrelationData; the node answers with a :class:`CallResult` on the caller's
inbox under its own subtree (``topics.call_result``). Both payloads are small
and strictly bounded, because a node parses requests on the same event loop
that handles its telemetry: junk is refused with a reason, never a traceback.

Arguments are flat ``key=value`` strings (what a command line gives); each
method parses its own values, so the wire format does not change when a
method gains an argument.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import Field, StringConstraints, model_validator

from edge_agent.protocol.errors import RejectedMessage
from edge_agent.protocol.messages import Id, _Strict, parse_json

__all__ = [
    "CALL_VERSION",
    "ERROR_CODES",
    "MAX_CALL_BYTES",
    "MAX_RESULT_BYTES",
    "CallError",
    "CallRequest",
    "CallResult",
    "ErrorCode",
    "Role",
    "encode_result",
    "error_result",
    "parse_request",
    "parse_result",
]

CALL_VERSION: Literal[1] = 1
MAX_CALL_BYTES = 16 * 1024
MAX_RESULT_BYTES = 256 * 1024
MAX_ARGS = 16
MAX_TIMEOUT_S = 120.0

# viewer: read-only methods; operator: every method. A method names the roles that may call it.
Role = Literal["viewer", "operator"]
ROLES: tuple[Role, ...] = ("viewer", "operator")
# What went wrong, as the caller can branch on it (the CLI maps these to exit codes).
ErrorCode = Literal["unknown_method", "denied", "bad_request", "busy", "failed"]
ERROR_CODES: tuple[ErrorCode, ...] = ("unknown_method", "denied", "bad_request", "busy", "failed")

ArgKey = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_.]{0,63}$")]
ArgValue = Annotated[str, StringConstraints(max_length=256)]


class CallRequest(_Strict):
    """One call: who calls (the identity the node's ``calls.callers`` knows), what, with which arguments."""

    v: Literal[1] = CALL_VERSION
    caller: Id
    method: Id
    args: Annotated[dict[ArgKey, ArgValue], Field(max_length=MAX_ARGS)] = Field(default_factory=dict)
    # How long the caller waits: work a method does (e.g. a flush) stops before it.
    timeout_s: Annotated[float, Field(gt=0, le=MAX_TIMEOUT_S, allow_inf_nan=False)] = 5.0


class CallError(_Strict):
    code: ErrorCode
    message: Annotated[str, StringConstraints(max_length=500)]


class CallResult(_Strict):
    """The answer: ``ok`` with a JSON object, or an error with a code and one line."""

    v: Literal[1] = CALL_VERSION
    node: Id
    method: Annotated[str, StringConstraints(max_length=64)]
    ok: bool
    result: dict[str, Any] | None = None
    error: CallError | None = None

    @model_validator(mode="after")
    def _one_of(self) -> CallResult:
        if self.ok != (self.error is None):
            raise ValueError("ok must be true without error, false with one")
        return self


def parse_request(payload: bytes) -> CallRequest:
    """Size bound, strict JSON, bounded arguments; RejectedMessage with a reason otherwise."""
    return parse_json(CallRequest, payload, max_bytes=MAX_CALL_BYTES)


def parse_result(payload: bytes) -> CallResult:
    return parse_json(CallResult, payload, max_bytes=MAX_RESULT_BYTES)


def error_result(node: str, method: str, code: ErrorCode, message: str) -> CallResult:
    return CallResult(
        node=node, method=method[:64], ok=False, error=CallError(code=code, message=message[:500])
    )


def encode_result(result: CallResult) -> bytes:
    """JSON bytes; a result over :data:`MAX_RESULT_BYTES` becomes a ``failed`` error saying so."""
    data = result.model_dump_json(exclude_none=True).encode()
    if len(data) > MAX_RESULT_BYTES:
        too_big = error_result(
            result.node, result.method, "failed", f"result of {len(data)} bytes exceeds {MAX_RESULT_BYTES}"
        )
        data = too_big.model_dump_json(exclude_none=True).encode()
    return data


def dumps_request(request: CallRequest) -> bytes:
    data = request.model_dump_json().encode()
    if len(data) > MAX_CALL_BYTES:
        raise RejectedMessage("oversized", f"call of {len(data)} bytes > limit {MAX_CALL_BYTES}")
    return data


def plain(value: Any) -> Any:
    """A value as JSON carries it: mappings with string keys (a tuple key joined by '/'), lists, scalars."""
    if isinstance(value, Mapping):
        return {_key(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [plain(v) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


def _key(key: object) -> str:
    return "/".join(map(str, key)) if isinstance(key, tuple) else str(key)
