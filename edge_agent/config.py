"""Agent configuration: one pydantic model, loaded from YAML or TOML.

Settings are passed in explicitly and never read at import time; loading
reports every problem with its field path at once, because a half-fixed config
that fails again on the next field wastes an operator's night.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    StringConstraints,
    ValidationError,
    field_validator,
)

from edge_agent.protocol.errors import ConfigError
from edge_agent.protocol.topics import ID_PATTERN

NodeId = Annotated[str, StringConstraints(pattern=ID_PATTERN.pattern)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TlsConfig(_Section):
    ca_file: Path
    cert_file: Path | None = None
    key_file: Path | None = None
    insecure_skip_hostname: bool = False


class MqttConfig(_Section):
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=1, le=65535)] = 1883
    client_id: str | None = None  # default: edge-agent-{node_id}
    username: str | None = None
    password: SecretStr | None = None
    tls: TlsConfig | None = None
    keepalive_s: Annotated[int, Field(ge=5, le=3600)] = 30
    # Persistent session: the broker keeps unacknowledged device messages while the agent restarts.
    session_expiry_s: Annotated[int, Field(ge=0)] = 7 * 24 * 3600
    reconnect_min_s: Annotated[float, Field(gt=0, le=60)] = 0.2
    reconnect_max_s: Annotated[float, Field(gt=0, le=3600)] = 30.0
    connect_timeout_s: Annotated[float, Field(gt=0, le=120)] = 10.0


class DevicesConfig(_Section):
    # Empty list and allow_unknown=True: accept any well-formed device id.
    allowed: list[NodeId] = Field(default_factory=list)
    allow_unknown: bool = True
    # Subscribe only to the enrolled devices' topics (several agents sharing one broker);
    # otherwise subscribe to all devices and reject unknown ones with a counted reason.
    subscribe_enrolled_only: bool = False
    max_payload_bytes: Annotated[int, Field(ge=64, le=16 * 1024 * 1024)] = 256 * 1024


class WindowConfig(_Section):
    length_s: Annotated[float, Field(gt=0, le=86400)] = 10.0
    # A window whose mean, min and max stay within this absolute band of the last
    # sent window is merged into the next one instead of being sent (counts stay exact).
    deadband: Annotated[float, Field(ge=0)] = 0.0
    # Send at least every N windows even when steady, so the cloud sees liveness.
    deadband_max_hold: Annotated[int, Field(ge=1, le=10_000)] = 30
    # Close a window after this much wall time without new data (event time may stall).
    idle_close_s: Annotated[float, Field(gt=0)] = 15.0


class PiiRule(_Section):
    name: Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,31}$")]
    pattern: str
    replacement: str | None = None  # default: <NAME>

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"not a valid regular expression: {exc}") from exc
        return value


PiiKind = Literal["email", "card", "phone", "id_number", "ip"]
PII_KINDS: tuple[PiiKind, ...] = ("email", "card", "phone", "id_number", "ip")


class EscalationConfig(_Section):
    enabled: bool = True
    # budget: escalate the least confident inputs, at most max_rate of the last `window` utterances.
    # threshold: escalate whenever confidence < threshold (still capped by max_rate).
    mode: Literal["budget", "threshold"] = "budget"
    max_rate: Annotated[float, Field(ge=0, le=1)] = 0.10
    window: Annotated[int, Field(ge=10, le=100_000)] = 200
    threshold: Annotated[float, Field(ge=0, le=1)] = 0.8
    timeout_s: Annotated[float, Field(gt=0, le=120)] = 5.0
    cache_max_entries: Annotated[int, Field(ge=0)] = 10_000
    cache_ttl_s: Annotated[float, Field(gt=0)] = 3600.0
    # Escalated inputs (redacted) with the teacher's answers go upstream as hard examples.
    hard_examples: bool = True


class ChatConfig(_Section):
    enabled: bool = True
    # Utterances answered concurrently (an escalation may wait for the cloud up to its timeout).
    workers: Annotated[int, Field(ge=1, le=64)] = 4
    escalation: EscalationConfig = Field(default_factory=EscalationConfig)
    pii_builtin: list[PiiKind] = Field(default_factory=lambda: list(PII_KINDS))
    pii_rules: list[PiiRule] = Field(default_factory=list)
    session_ttl_s: Annotated[float, Field(gt=0)] = 1800.0
    max_sessions: Annotated[int, Field(ge=1)] = 10_000


Probability = Annotated[float, Field(ge=0, le=1)]


class SensorConfig(_Section):
    # Windows the sensor student scores strictly inside (lo, hi) are "uncertain": each counts as an
    # escalation of the sensor model (the rollout analysis' escalation rate) and, when enabled, goes
    # upstream as a hard example with its model input, for the cloud teacher to label.
    hard_examples: bool = True
    uncertain_band: tuple[Probability, Probability] = (0.35, 0.65)
    # At most this many sensor hard examples in any 60 s (0: none); the excess is only counted,
    # so a drifting sensor cannot fill the outbox and the uplink with near-identical windows.
    max_hard_examples_per_minute: Annotated[int, Field(ge=0, le=100_000)] = 30

    @field_validator("uncertain_band")
    @classmethod
    def _ordered(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not value[0] < value[1]:
            raise ValueError(f"need lo < hi, got {value!r}")
        return value


class ModelsConfig(_Section):
    # Bundles to load at start when the cloud has not delivered any yet (e.g. baked into the image).
    chat_bundle: Path | None = None
    sensor_bundle: Path | None = None
    intra_op_threads: Annotated[int, Field(ge=1, le=64)] = 1
    # Ed25519 public keys (PEM) that model manifests must be signed with.
    trusted_keys: list[Path] = Field(default_factory=list)


class OutboxConfig(_Section):
    path: Path | None = None  # default: {state_dir}/agent.db
    max_bytes: Annotated[int, Field(ge=4096)] = 64 * 1024 * 1024
    max_age_s: Annotated[float, Field(gt=0)] = 7 * 24 * 3600.0
    # drop_oldest keeps the freshest data (what an operator acts on); reject_new keeps history.
    when_full: Literal["drop_oldest", "reject_new"] = "drop_oldest"
    batch_max_windows: Annotated[int, Field(ge=1, le=100_000)] = 500
    batch_max_delay_s: Annotated[float, Field(gt=0, le=3600)] = 1.0
    # How often buffered work is committed (and inbound QoS 1 messages acknowledged).
    commit_interval_s: Annotated[float, Field(gt=0, le=60)] = 0.05
    dead_letter_max_rows: Annotated[int, Field(ge=1)] = 1000


class UplinkConfig(_Section):
    mqtt: MqttConfig | None = None  # None: the same connection as the devices
    # paho keys in-flight QoS 1 messages by a 16-bit id: stay far below 65,535.
    max_inflight: Annotated[int, Field(ge=1, le=10_000)] = 64
    publish_timeout_s: Annotated[float, Field(gt=0)] = 30.0
    status_interval_s: Annotated[float, Field(gt=0)] = 30.0


class MetricsConfig(_Section):
    enabled: bool = True
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 9108  # 0: pick a free port


class LogConfig(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["json", "text"] = "json"


class AgentConfig(_Section):
    node_id: NodeId
    state_dir: Path = Path("/var/lib/edge-agent")
    mqtt: MqttConfig = Field(default_factory=MqttConfig)
    devices: DevicesConfig = Field(default_factory=DevicesConfig)
    windows: WindowConfig = Field(default_factory=WindowConfig)
    chat: ChatConfig = Field(default_factory=ChatConfig)
    sensor: SensorConfig = Field(default_factory=SensorConfig)
    models: ModelsConfig = Field(default_factory=ModelsConfig)
    outbox: OutboxConfig = Field(default_factory=OutboxConfig)
    uplink: UplinkConfig = Field(default_factory=UplinkConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    log: LogConfig = Field(default_factory=LogConfig)
    shutdown_timeout_s: Annotated[float, Field(gt=0, le=600)] = 10.0
    watchdog_interval_s: Annotated[float, Field(gt=0)] | None = None  # default: from WATCHDOG_USEC
    # After a burst, give freed heap pages back to the OS at most this often (glibc); 0 = never.
    heap_trim_interval_s: Annotated[float, Field(ge=0, le=3600)] = 10.0

    @property
    def db_path(self) -> Path:
        return self.outbox.path or self.state_dir / "agent.db"

    @property
    def client_id(self) -> str:
        return self.mqtt.client_id or f"edge-agent-{self.node_id}"


def _read_mapping(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(str(path), [("", f"cannot read: {exc.strerror or exc}")]) from exc
    try:
        if path.suffix == ".toml":
            data: Any = tomllib.loads(text)
        else:
            data = yaml.safe_load(text)
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(str(path), [("", f"syntax error: {exc}")]) from exc
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(str(path), [("", f"top level must be a mapping, got {type(data).__name__}")])
    return data


def parse_config(data: dict[str, Any], source: str = "<config>") -> AgentConfig:
    try:
        return AgentConfig.model_validate(data)
    except ValidationError as exc:
        problems = [(".".join(str(p) for p in e["loc"]), e["msg"]) for e in exc.errors()]
        raise ConfigError(source, problems) from exc


def load_config(path: str | os.PathLike[str]) -> AgentConfig:
    """Load and validate a YAML (.yaml/.yml) or TOML (.toml) agent config."""
    p = Path(path)
    return parse_config(_read_mapping(p), str(p))
