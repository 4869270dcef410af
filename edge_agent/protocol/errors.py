"""Exception types of the edge boundary.

Transient failures (the broker is away, a publish timed out) are worth retrying
with backoff; permanent ones (a payload that will never parse, a config that is
wrong) are not. Callers branch on the class, never on message text.
"""

from __future__ import annotations

from typing import Literal

ModelRejectedReason = Literal[
    "bad_signature", "unknown_key", "digest_mismatch", "file_hash_mismatch", "not_newer", "malformed"
]


class EdgeLoopError(Exception):
    """Root of every error EdgeLoop raises on purpose."""


class TransientError(EdgeLoopError):
    """Retrying later may succeed."""


class PermanentError(EdgeLoopError):
    """Retrying the same thing will fail the same way."""


class ConfigError(PermanentError):
    """A configuration file is missing, unreadable or invalid.

    ``problems`` holds one ``(field_path, message)`` pair per error so a CLI can
    print every error at once instead of the first one.
    """

    def __init__(self, source: str, problems: list[tuple[str, str]]) -> None:
        self.source = source
        self.problems = problems
        lines = "\n".join(f"  {path or '<root>'}: {msg}" for path, msg in problems)
        super().__init__(f"invalid config {source}:\n{lines}")


class RejectedMessage(PermanentError):
    """An inbound payload was refused; ``reason`` is a short stable label for metrics."""

    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}")


class MqttError(TransientError):
    """The MQTT connection failed or was lost."""


class ConnectRefused(PermanentError):
    """The broker refused the CONNECT for a reason retrying will not fix (e.g. bad credentials)."""

    def __init__(self, reason_code: int, reason: str) -> None:
        self.reason_code = reason_code
        super().__init__(f"broker refused connection: {reason_code} {reason}")


class PublishDenied(PermanentError):
    """The broker refused a publish (MQTT 5 reason code >= 0x80, e.g. 135 not authorized)."""

    def __init__(self, topic: str, reason_code: int, reason: str = "") -> None:
        self.topic = topic
        self.reason_code = reason_code
        super().__init__(f"publish to {topic!r} refused by broker: {reason_code} {reason}".rstrip())


class OutboxError(EdgeLoopError):
    """The durable outbox could not store or read a record."""


class ModelRejected(PermanentError):
    """A model release was refused; fetching the same release again would be refused again.

    ``reason`` is one of :data:`ModelRejectedReason`, reported in the node's status and metrics.
    """

    def __init__(self, reason: ModelRejectedReason, detail: str) -> None:
        self.reason: ModelRejectedReason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}")
