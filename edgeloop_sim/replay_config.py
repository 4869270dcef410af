"""What a replay is asked to do and what it reports: the settings, the result, and its errors."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

Source = Literal["skab", "nab", "snips"]
SOURCES: tuple[Source, ...] = ("skab", "nab", "snips")
MAX_BATCH = 10_000  # TelemetryBatch.readings max_length


class ReplayError(RuntimeError):
    """The replay could not connect, or the broker refused messages."""


class ReplayTimeout(ReplayError, TimeoutError):
    """Messages were still unacknowledged when the deadline passed."""


@dataclass(frozen=True)
class ReplayConfig:
    broker: str = "127.0.0.1:1883"
    # Data seconds per wall second (600 = 10 min of data per second); 0 = as fast as possible.
    speedup: float = 600.0
    batch: int = 1  # readings per telemetry message; 1 sends single-reading payloads
    limit: int | None = None  # rows (chat: messages) per device
    devices: int | Sequence[str] | None = None  # first N devices, or explicit ids
    device_prefix: str | None = None  # default: skab / nab / chat
    rebase_time: bool = True  # shift event time so each device's first row is "now"
    shard: tuple[int, int] = (0, 1)  # (i, n): publish only devices with index k % n == i
    root: str | Path | None = None  # dataset root (else EDGELOOP_DATA, else ../shared/datasets)
    turns: int = 3  # SNIPS: utterances per chat session
    chat_interval: float = 5.0  # SNIPS: data seconds between two turns of one device
    qos: int = 1
    max_outstanding: int = 1_000  # our window: unacknowledged messages (queued + in flight)
    max_inflight: int = 100  # paho's own in-flight limit (keep <= broker Receive Maximum)
    client_id: str | None = None
    session_expiry: int = 300  # seconds the broker keeps our session across a disconnect
    connect_timeout: float = 10.0
    ack_timeout: float = 60.0  # how long the final drain (and a stalled window) may wait
    progress_every: float | None = None  # seconds between progress lines on stderr; None = quiet
    start_time: float | None = None  # wall time for rebasing; None = time.time() at start
    # SKAB: replay the 2.6 h anomaly-free recording as pseudo-devices of this many rows each (the
    # pieces sensor training cuts it into, each with its own baseline); None = one device.
    skab_free_chunk_rows: int | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.batch <= MAX_BATCH:
            raise ValueError(f"batch must be in 1..{MAX_BATCH}, got {self.batch}")
        if self.speedup < 0 or not math.isfinite(self.speedup):
            raise ValueError(f"speedup must be a finite number >= 0, got {self.speedup}")
        if self.skab_free_chunk_rows is not None and self.skab_free_chunk_rows < 2:
            raise ValueError(f"skab_free_chunk_rows must be >= 2, got {self.skab_free_chunk_rows}")
        i, n = self.shard
        if n < 1 or not 0 <= i < n:
            raise ValueError(f"shard must be i/n with 0 <= i < n, got {i}/{n}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit must be >= 1, got {self.limit}")
        if not 1 <= self.max_outstanding <= 60_000:
            raise ValueError("max_outstanding must be in 1..60000 (16-bit packet ids)")
        if self.qos not in (0, 1, 2):
            raise ValueError(f"qos must be 0, 1 or 2, got {self.qos}")
        if self.turns < 1:
            raise ValueError("turns must be >= 1")

    @property
    def host_port(self) -> tuple[str, int]:
        host, sep, port = self.broker.rpartition(":")
        if not sep:
            return self.broker, 1883
        return host.strip("[]") or "127.0.0.1", int(port)


@dataclass
class ReplayResult:
    devices: int
    messages: int
    readings: int
    raw_json_bytes: int  # cost of forwarding every reading alone as {"device","metric","ts","value"}
    seconds: float
    payload_bytes: int = 0  # what the replay actually published (payload bytes only)
    rejected: int = 0  # PUBACKs with a failure reason code (e.g. 135 not authorized)
    reconnects: int = 0
    device_ids: list[str] = field(default_factory=list)

    @property
    def messages_per_second(self) -> float:
        return self.messages / self.seconds if self.seconds > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["messages_per_second"] = round(self.messages_per_second, 1)
        out["readings_per_second"] = round(self.readings / self.seconds, 1) if self.seconds > 0 else 0.0
        out["seconds"] = round(self.seconds, 3)
        return out
