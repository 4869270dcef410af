"""What the agent tells a device whose message it refused: ``devices/{device}/errors``.

A device author cannot read the agent's logs or metrics, so a refused message is
answered on the device's own error topic with the stable reason label (the same
one the ``edgeloop_agent_rejected_total{reason}`` metric counts), where in the
payload it went wrong, and a hint on what to send instead. The payload itself is
never echoed (a chat line may hold personal data). ``docs/devices.md`` lists the
reasons; :data:`HINTS` is the source of that list.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from edge_agent.protocol import topics

__all__ = ["HINTS", "DeviceError", "device_error_payload"]

# reason -> what the device author should change. Keys are the RejectedMessage reasons a device
# message can get (messages.py, pipeline/core.py); "invalid" is pydantic's catch-all.
HINTS: dict[str, str] = {
    "malformed_json": "the payload must be one JSON object, UTF-8; raw CSV or text lines are not accepted",
    "wrong_type": "a field has the wrong JSON type; numbers must be JSON numbers, "
                  "not strings (21.5, not \"21.5\")",
    "missing_field": "a required field is missing: telemetry needs ts and values, chat needs "
                     "session_id, msg_id, text and ts",
    "non_finite": "NaN, Infinity and numbers beyond the float range are not readings; leave the metric out",
    "bad_id": "ids and metric names must match ^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$",
    "oversized": "the payload is larger than devices.max_payload_bytes; split the batch",
    "unknown_device": "this device id is not enrolled on the node (devices.allowed)",
    "invalid": "a value is out of range (ts in seconds since 1970 up to 2100, 1-64 metrics a reading, "
               "1-10000 readings a batch, chat text 1-2000 characters)",
}


class DeviceError(BaseModel):
    """The JSON on ``devices/{device}/errors``."""

    model_config = ConfigDict(frozen=True)

    reason: str
    detail: str  # where it failed, e.g. "values.temp: Input should be a valid number"
    hint: str
    topic: str  # the device topic leaf the refused message came on: telemetry | chat/in
    ts: float


def device_error_payload(device_topic: topics.DeviceTopic, reason: str, detail: str, now: float) -> bytes:
    err = DeviceError(reason=reason, detail=detail[:300], hint=HINTS.get(reason, HINTS["invalid"]),
                      topic=device_topic.kind, ts=round(now, 3))
    return err.model_dump_json().encode()
