"""Agent configuration: one pydantic model, loaded from YAML or TOML, with environment overrides.

Settings are passed in explicitly and never read at import time; loading
reports every problem with its field path at once, because a half-fixed config
that fails again on the next field wastes an operator's night.

The file is the primary source. Precedence, highest first: ``edge-agent run``
flags, ``EDGE_AGENT_*`` environment variables (``__`` between nested sections:
``EDGE_AGENT_MQTT__HOST``, ``EDGE_AGENT_OUTBOX__MAX_BYTES``; lists as JSON), the
file, the defaults. The variables are read by pydantic-settings, so a container
or a systemd drop-in can change one field without templating the file.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    StringConstraints,
    ValidationError,
    field_validator,
)

from edge_agent.protocol.errors import ConfigError
from edge_agent.protocol.topics import ID_PATTERN, NODE_ID_MAX, NODE_ID_PATTERN, NODE_ID_RULE, is_node_id


def _node_id(value: object) -> object:
    """Runs first, so a bad node id is reported with the rule in words, not only as a regex."""
    if isinstance(value, str) and not is_node_id(value):
        raise ValueError(f"{value[:80]!r} is not a valid node id: it must be {NODE_ID_RULE}")
    return value


# One rule on both sides (topics.NODE_ID_PATTERN): refused at load, not at the controller later.
# The constraints repeat it for the generated reference (docs/configuration.md).
NodeId = Annotated[
    str,
    StringConstraints(min_length=1, max_length=NODE_ID_MAX, pattern=NODE_ID_PATTERN.pattern),
    BeforeValidator(_node_id),
]


# Device ids are the devices' own topic levels (``devices/{device}/...``): any safe MQTT level,
# upper case and ``_`` included. Only node ids must also be Kubernetes resource names.
DeviceId = Annotated[str, StringConstraints(pattern=ID_PATTERN.pattern)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TlsConfig(_Section):
    ca_file: Path = Field(description="CA certificate that verifies the broker")
    cert_file: Path | None = Field(default=None, description="client certificate (mutual TLS)")
    key_file: Path | None = Field(default=None, description="private key of the client certificate")
    insecure_skip_hostname: bool = Field(
        default=False, description="accept a broker certificate issued for another host name"
    )


class MqttConfig(_Section):
    host: str = Field(default="127.0.0.1", description="broker host")
    port: Annotated[int, Field(ge=1, le=65535, description="broker port")] = 1883
    client_id: str | None = Field(
        default=None,
        description="MQTT client id; edge agent default: `edge-agent-{node_id}`; "
        "the controller names its connections after its own `client_id` instead",
    )
    username: str | None = Field(default=None, description="broker user name")
    password: SecretStr | None = Field(default=None, description="broker password")
    tls: TlsConfig | None = None
    keepalive_s: Annotated[int, Field(ge=5, le=3600, description="MQTT keepalive interval")] = 30
    # Persistent session: the broker keeps unacknowledged device messages while the agent restarts.
    session_expiry_s: Annotated[
        int,
        Field(
            ge=0,
            description="how long the broker keeps a persistent session (unacknowledged messages) "
            "while the client is away",
        ),
    ] = 7 * 24 * 3600
    reconnect_min_s: Annotated[float, Field(gt=0, le=60, description="first reconnect backoff")] = 0.2
    reconnect_max_s: Annotated[float, Field(gt=0, le=3600, description="reconnect backoff cap")] = 30.0
    connect_timeout_s: Annotated[float, Field(gt=0, le=120, description="seconds to wait for CONNACK")] = 10.0


class DevicesConfig(_Section):
    # Empty list and allow_unknown=True: accept any well-formed device id.
    allowed: list[DeviceId] = Field(default_factory=list)
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
    # At most this many (device, metric) streams open at once: beyond it, the streams touched
    # longest ago are closed early at the next tick, as idle close would later (nothing lost;
    # a partial window is summarised). Bounds memory against a device spraying new ids.
    max_streams: Annotated[int, Field(ge=1, le=10_000_000)] = 20_000


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
    # A request that timed out is sent again (same id) this many times before the turn degrades:
    # a lost response then costs one timeout, not the turn's answer and its dialogue state.
    retries: Annotated[int, Field(ge=0, le=5)] = 0
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


CallerRole = Literal["viewer", "operator"]
# A certificate name as deploy/pki/issue-node-cert.sh issues them (one topic level), not only node ids.
Identity = Annotated[str, StringConstraints(pattern=ID_PATTERN.pattern)]


def _default_callers() -> dict[str, CallerRole]:
    return {"edgeloop-controller": "operator"}


class CallsConfig(_Section):
    """Calls from the cloud into this node (``cloud-controller call``); the broker ACL is the first gate."""

    enabled: bool = Field(default=True, description="answer calls on `nodes/{node}/rpc/call/+`")
    # Identity (TLS certificate CN) -> role. A method names the roles that may call it; an identity
    # not listed here is refused even when the broker let its message through (a shared dev broker).
    callers: dict[Identity, CallerRole] = Field(
        default_factory=_default_callers,
        description="caller identity -> role (viewer: read-only methods; operator: all)",
    )
    max_inflight: Annotated[int, Field(ge=1, le=1000)] = Field(
        default=32, description="calls answered at once; more are refused as `busy`"
    )


class MetricsConfig(_Section):
    enabled: bool = True
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 9108  # 0: pick a free port


class TracingConfig(_Section):
    """Traces of chat turns, escalations and calls (docs/tracing.md); needs the `tracing` extra."""

    endpoint: str | None = Field(
        default=None,
        description="OTLP/HTTP collector, e.g. `http://127.0.0.1:4318` (or its full `/v1/traces` URL); "
        "unset: the standard `OTEL_EXPORTER_OTLP_ENDPOINT` if set, else tracing is off at no cost",
    )
    service_name: str = Field(default="edge-agent", description="the `service.name` of this node's spans")


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
    calls: CallsConfig = Field(default_factory=CallsConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    tracing: TracingConfig = Field(default_factory=TracingConfig)
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


ENV_PREFIX = "EDGE_AGENT_"
ENV_NESTED_DELIMITER = "__"


def env_var(path: str) -> str:
    """The variable that overrides the field at ``path``: ``mqtt.host`` -> ``EDGE_AGENT_MQTT__HOST``."""
    return ENV_PREFIX + path.replace(".", ENV_NESTED_DELIMITER).upper()


def env_overrides(environ: Mapping[str, str] = os.environ) -> dict[str, Any]:
    """The ``EDGE_AGENT_*`` variables of ``environ`` as a nested mapping of config values.

    pydantic-settings is imported only when such a variable is set: it costs the agent ~1.5 MB of
    resident memory, which a node configured by its file alone should not pay.
    """
    if not any(v and k.upper().startswith(ENV_PREFIX) for k, v in environ.items()):
        return {}
    from pydantic_settings import EnvSettingsSource

    class _EnvOverrides(EnvSettingsSource):
        """pydantic-settings' environment source over a given mapping (tests, the daemon's ``environ``)."""

        def __init__(self, environ: Mapping[str, str]) -> None:
            self._environ = environ
            super().__init__(
                AgentConfig,  # type: ignore[arg-type]  # a plain model: the file stays the primary source
                case_sensitive=False,
                env_prefix=ENV_PREFIX,
                env_nested_delimiter=ENV_NESTED_DELIMITER,
            )

        def _load_env_vars(self) -> Mapping[str, str | None]:
            # An empty variable is unset (also inside sections, which env_ignore_empty does not cover).
            return {k.lower(): v for k, v in self._environ.items() if v and k.upper().startswith(ENV_PREFIX)}

    try:
        return _EnvOverrides(environ)()
    except ValueError as exc:  # e.g. a list variable that is not JSON
        detail = str(exc).splitlines()[0]
        raise ConfigError("environment", [("", f"{detail} (a list is JSON: '[\"a\", \"b\"]')")]) from exc


def merge(base: Mapping[str, Any], *overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with each override laid over it, section by section."""
    out = dict(base)
    for over in overrides:
        for key, value in over.items():
            if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
                out[key] = merge(out[key], value)
            else:
                out[key] = value
    return out


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


def load_config(
    path: str | os.PathLike[str],
    environ: Mapping[str, str] = os.environ,
    overrides: Mapping[str, Any] | None = None,
) -> AgentConfig:
    """Load and validate a YAML (.yaml/.yml) or TOML (.toml) agent config.

    ``overrides`` (flags) win over ``EDGE_AGENT_*`` variables in ``environ``, which win over the file.
    """
    p = Path(path)
    data = merge(_read_mapping(p), env_overrides(environ), overrides or {})
    return parse_config(data, str(p))
