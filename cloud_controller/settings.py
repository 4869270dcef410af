"""The controller's settings: one pydantic-settings model, read from flags, environment and a file.

Precedence, highest first: ``cloud-controller run`` flags, ``EDGELOOP_*``
environment variables (the Deployment sets them, ``deploy/README.md``), the
optional settings file (``--config FILE``, YAML or TOML, keys as the field
names), the model's defaults. Sources are merged field by field, so a flag
that sets ``mqtt.host`` keeps the ``mqtt.tls`` the environment gave.

Building ``ControllerSettings(...)`` directly takes only the values given (tests
and embedders stay independent of the process environment); ``load()`` is the
path that reads the world. Every field has an environment variable: by default
``EDGELOOP_`` + its dotted path in capitals with ``_`` for ``.``; the names the
Deployment has always used where they differ are in ``_ENV_NAMES``. The
reference in ``docs/controller-configuration.md`` is generated from this module.
"""

from __future__ import annotations

import os
import socket
import tomllib
import typing
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, InitSettingsSource, PydanticBaseSettingsSource, SettingsConfigDict

from edge_agent.config import MqttConfig

ENV_PREFIX = "EDGELOOP_"
# One variable, two fields: "kubernetes" sets kube, any other value is the store path.
STORE_VAR = "EDGELOOP_STORE"
# Where a field's variable is not the derived EDGELOOP_{PATH}: the names deployments already use.
_ENV_NAMES: dict[str, str | None] = {
    "mqtt.client_id": None,  # the controller names its connections after client_id
    "mqtt.tls.ca_file": "EDGELOOP_MQTT_CA_FILE",
    "mqtt.tls.cert_file": "EDGELOOP_MQTT_CERT_FILE",
    "mqtt.tls.key_file": "EDGELOOP_MQTT_KEY_FILE",
    "mqtt.tls.insecure_skip_hostname": "EDGELOOP_MQTT_INSECURE_SKIP_HOSTNAME",
    "store_path": STORE_VAR,
    "kube": STORE_VAR,
    "shared_group": "EDGELOOP_MQTT_SHARED_GROUP",
    "data_dir": "EDGELOOP_CACHE",
    "artifacts_dir": "EDGELOOP_ARTIFACTS",
    "data_root": "EDGELOOP_DATA",
}
# A controller should come back quickly after a broker restart: cap the reconnect backoff low.
_MQTT_DEFAULTS = {"reconnect_min_s": 0.2, "reconnect_max_s": 2.0}
_TRUE = ("1", "true", "yes", "on")


class ControllerSettings(BaseSettings):
    model_config = SettingsConfigDict(extra="forbid")

    mqtt: MqttConfig = Field(default_factory=lambda: MqttConfig(**_MQTT_DEFAULTS))  # type: ignore[arg-type]
    store_path: Path | None = Field(
        default=None, description="embedded SQLite resource store; this or `kube` is required"
    )
    store_dsn: str | None = Field(
        default=None,
        description="`postgresql://...`: summaries, hard examples, the fleet cache, model releases and "
        "(with `kube`) distillation work in this shared PostgreSQL (what replicas need); unset: SQLite "
        "files under `data_dir` and releases under `artifacts_dir`",
    )
    kube: bool = Field(
        default=False,
        description="resources in the Kubernetes API server; wins over `store_path` when both are set",
    )
    namespace: str = Field(
        default="default",
        description="namespace of the EdgeLoop resources the controller watches and creates",
    )
    enrollment: Literal["auto", "manual"] = Field(
        default="auto", description="auto: new nodes are approved; manual: they stay Pending until approved"
    )
    data_dir: Path = Field(
        default=Path("var/controller"),
        description="summaries, fleet and hard-example databases, DistillationJob work directories",
    )
    client_id: str | None = Field(
        default=None,
        description="MQTT client id (connections add `-desired`, `-teacher`); "
        "unset: `edgeloop-controller-{pod_name or host name}`",
    )
    shared_group: str | None = Field(
        default=None,
        description="subscribe to summaries via `$share/GROUP/` so replicas split them; "
        "node traffic then comes from node status",
    )
    http_host: str = Field(default="0.0.0.0", description="address of `/healthz` `/readyz` `/metrics`")
    http_port: int = Field(
        default=8080, ge=0, le=65535, description="port of `/healthz` `/readyz` `/metrics` (0: any free port)"
    )
    leader_election: bool | None = Field(
        default=None,
        description="unset: on with `kube`; false: this replica reconciles without a Lease; "
        "the embedded store always leads (variable: `1`, `true`, `yes`, `on` in any case turn it on, "
        "anything else off)",
    )
    lease_name: str = Field(default="edgeloop-controller", description="Lease used for leader election")
    lease_namespace: str | None = Field(
        default=None, description="namespace of the Lease; unset: `namespace`"
    )
    pod_name: str | None = Field(
        default=None,
        description="holder identity in the Lease and part of the default `client_id`; unset: host name",
    )
    lease_duration_s: float = Field(
        default=15.0,
        description="others take over a Lease not renewed for this long "
        "(leader election needs duration > renew deadline > retry period > 0)",
    )
    lease_renew_deadline_s: float = Field(
        default=10.0, description="the leader stops leading when it cannot renew for this long"
    )
    lease_retry_period_s: float = Field(
        default=2.0, description="interval between renewals and between attempts to acquire"
    )
    job_service_account: str | None = Field(
        default=None, description="service account of DistillationJob pods (with `kube`)"
    )
    heartbeat_timeout_s: float = Field(
        default=90.0, gt=0, description="seconds until a silent node is Offline"
    )
    status_min_interval_s: float = Field(
        default=10.0, ge=0, description="minimum seconds between two status writes of one EdgeNode"
    )
    status_max_writes_per_s: float = Field(
        default=100.0, gt=0, description="EdgeNode status writes per second, total"
    )
    poll_s: float = Field(
        default=2.0,
        gt=0,
        description="requeue interval while a pipeline, rollout or DistillationJob is in progress",
    )
    resync_s: float = Field(
        default=300.0, gt=0, description="requeue interval of settled pipelines and rollouts"
    )
    node_workers: int = Field(default=4, ge=1, le=64, description="EdgeNodes reconciled concurrently")
    shutdown_timeout_s: float = Field(
        default=10.0, gt=0, description="time in-flight reconciles get on SIGTERM"
    )
    log_format: Literal["json", "text"] = Field(
        default="text", description="json: one JSON object per log line"
    )
    teacher: str | None = Field(
        default=None,
        description="`KIND:PATH` (e.g. `onnx-chat:var/teacher-bundle`) of a teacher that answers escalations",
    )
    sensor_teacher: Path | None = Field(
        default=None,
        description="sensor bundle directory that labels the sensor hard examples nodes send, on ingest",
    )
    signing_key: Path | None = Field(
        default=None,
        description="Ed25519 private key (PEM) the controller signs releases with; "
        "DistillationJobs run only with it",
    )
    artifacts_dir: Path | None = Field(
        default=None, description="artifact store; unset: `{data_dir}/artifacts`"
    )
    distillation_config: Literal["tiny", "full"] = Field(
        default="full", description="training recipe of the re-distillation runner"
    )
    job_image: str | None = Field(
        default=None,
        description="container image of DistillationJob pods (with `kube`); unset: the Job template's",
    )
    data_root: str | None = Field(
        default=None,
        description="dataset root of the re-distillation runner; unset: the runner's own "
        "(`EDGELOOP_DATA` in its environment, else `../shared/datasets` beside the repository)",
    )

    otlp_endpoint: str | None = Field(
        default=None,
        description="OTLP/HTTP collector of the teacher's and the calls' spans, "
        "e.g. `http://127.0.0.1:4318`; unset: the standard `OTEL_EXPORTER_OTLP_ENDPOINT` if set, "
        "else no tracing (docs/tracing.md)",
    )

    @property
    def identity(self) -> str:
        return self.pod_name or socket.gethostname()

    @model_validator(mode="before")
    @classmethod
    def _controller_mqtt_defaults(cls, data: Any) -> Any:
        """An ``mqtt`` section given in parts (env, file, flags) keeps the controller's reconnect caps."""
        if isinstance(data, dict) and isinstance(data.get("mqtt"), dict):
            data = {**data, "mqtt": {**_MQTT_DEFAULTS, **data["mqtt"]}}
        return data

    @field_validator("leader_election", mode="before")
    @classmethod
    def _loose_bool(cls, value: Any) -> Any:
        return value.strip().lower() in _TRUE if isinstance(value, str) else value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)  # direct construction: only what is given; load() adds env and file

    @classmethod
    def load(
        cls,
        *,
        environ: Mapping[str, str] = os.environ,
        file: Path | None = None,
        **flags: Any,
    ) -> ControllerSettings:
        """Flags (None: not given) over ``environ`` over ``file`` over the defaults."""
        given = {k: v for k, v in flags.items() if v is not None}
        sources: list[PydanticBaseSettingsSource] = [InitSettingsSource(cls, given), EnvSource(cls, environ)]
        if file is not None:
            sources.append(FileSource(cls, file))
        # pydantic-settings' documented hook for pre-built sources (its own CLI source uses it).
        return cls(_build_sources=(tuple(sources), given))  # type: ignore[call-arg]


def _leaves(model: type[BaseModel], prefix: str = "") -> Iterator[tuple[str, FieldInfo]]:
    for name, info in model.model_fields.items():
        path = f"{prefix}{name}"
        nested = [
            a
            for a in (info.annotation, *typing.get_args(info.annotation))
            if isinstance(a, type) and issubclass(a, BaseModel)
        ]
        if nested:
            yield from _leaves(nested[0], f"{path}.")
        else:
            yield path, info


def setting_fields() -> list[tuple[str, FieldInfo]]:
    """Every setting as (dotted path, field), nested sections flattened."""
    return list(_leaves(ControllerSettings))


def env_var(path: str) -> str | None:
    """The environment variable that sets the setting at ``path`` (None: none does)."""
    if path in _ENV_NAMES:
        return _ENV_NAMES[path]
    return ENV_PREFIX + path.replace(".", "_").upper()


def _set(data: dict[str, Any], path: str, value: Any) -> None:
    *parents, leaf = path.split(".")
    for p in parents:
        data = data.setdefault(p, {})
    data[leaf] = value


class EnvSource(PydanticBaseSettingsSource):
    """``EDGELOOP_*`` variables of ``environ`` as nested setting values; an empty variable is unset."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        super().__init__(settings_cls)
        self.environ = environ

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        raise NotImplementedError("EnvSource resolves every field at once in __call__")

    def __call__(self) -> dict[str, Any]:
        data: dict[str, Any] = {}
        for path, _ in _leaves(self.settings_cls):
            var = env_var(path)
            if var is None or var == STORE_VAR or not self.environ.get(var):
                continue
            _set(data, path, self.environ[var])
        store = self.environ.get(STORE_VAR)
        if store == "kubernetes":
            data["kube"] = True
        elif store:
            data["store_path"] = store
        return data


class FileSource(PydanticBaseSettingsSource):
    """A YAML (``.yaml``/``.yml``) or TOML (``.toml``) settings file, keys as the field names."""

    def __init__(self, settings_cls: type[BaseSettings], path: Path) -> None:
        super().__init__(settings_cls)
        self.path = path

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        raise NotImplementedError("FileSource reads the whole file in __call__")

    def __call__(self) -> dict[str, Any]:
        try:
            text = self.path.read_text(encoding="utf-8")
            data = tomllib.loads(text) if self.path.suffix == ".toml" else yaml.safe_load(text)
        except (OSError, tomllib.TOMLDecodeError, yaml.YAMLError) as exc:
            raise ValueError(f"settings file {self.path}: {exc}") from exc
        if data is None:
            return {}
        if not isinstance(data, dict):
            raise ValueError(f"settings file {self.path}: top level must be a mapping")
        return data
