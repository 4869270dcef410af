"""Render the controller's configuration reference from its settings model and parser.

``docs/controller-configuration.md`` is generated (``cloud-controller
config-reference``) and a test checks it is current, like the edge agent's
``docs/configuration.md``. Types, defaults and constraints come from
``ControllerSettings`` and the flags from the parser ``configure_run_args``
builds, so they cannot drift. Which environment variable and which flag set
which field is written out below rather than parsed from source at run time;
tests compare those tables with ``from_env`` and ``settings_from_args``, so a
new variable or flag fails the build until it is documented here.
"""

from __future__ import annotations

import argparse
import typing
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from cloud_controller.app import ControllerSettings, configure_run_args

# One rendering of types and constraints for both references, so they read alike.
from edge_agent.config_reference import _constraints, _type_name

# Which setting each EDGELOOP_* variable read by ``ControllerSettings.from_env`` sets.
ENV_VARS: dict[str, tuple[str, ...]] = {
    "EDGELOOP_MQTT_HOST": ("mqtt.host",),
    "EDGELOOP_MQTT_PORT": ("mqtt.port",),
    "EDGELOOP_MQTT_RECONNECT_MIN_S": ("mqtt.reconnect_min_s",),
    "EDGELOOP_MQTT_RECONNECT_MAX_S": ("mqtt.reconnect_max_s",),
    "EDGELOOP_MQTT_CA_FILE": ("mqtt.tls.ca_file",),
    "EDGELOOP_MQTT_CERT_FILE": ("mqtt.tls.cert_file",),
    "EDGELOOP_MQTT_KEY_FILE": ("mqtt.tls.key_file",),
    "EDGELOOP_STORE": ("kube", "store_path"),
    "EDGELOOP_NAMESPACE": ("namespace",),
    "EDGELOOP_LEASE_NAME": ("lease_name",),
    "EDGELOOP_LEASE_NAMESPACE": ("lease_namespace",),
    "EDGELOOP_POD_NAME": ("pod_name",),
    "EDGELOOP_LEASE_DURATION_S": ("lease_duration_s",),
    "EDGELOOP_LEASE_RENEW_DEADLINE_S": ("lease_renew_deadline_s",),
    "EDGELOOP_LEASE_RETRY_PERIOD_S": ("lease_retry_period_s",),
    "EDGELOOP_MQTT_SHARED_GROUP": ("shared_group",),
    "EDGELOOP_JOB_SERVICE_ACCOUNT": ("job_service_account",),
    "EDGELOOP_HTTP_PORT": ("http_port",),
    "EDGELOOP_CACHE": ("data_dir",),
    "EDGELOOP_LOG_FORMAT": ("log_format",),
    "EDGELOOP_ENROLLMENT": ("enrollment",),
    "EDGELOOP_HEARTBEAT_TIMEOUT_S": ("heartbeat_timeout_s",),
    "EDGELOOP_STATUS_MIN_INTERVAL_S": ("status_min_interval_s",),
    "EDGELOOP_STATUS_MAX_WRITES_PER_S": ("status_max_writes_per_s",),
    "EDGELOOP_TEACHER": ("teacher",),
    "EDGELOOP_SENSOR_TEACHER": ("sensor_teacher",),
    "EDGELOOP_SIGNING_KEY": ("signing_key",),
    "EDGELOOP_ARTIFACTS": ("artifacts_dir",),
    "EDGELOOP_DISTILLATION_CONFIG": ("distillation_config",),
    "EDGELOOP_JOB_IMAGE": ("job_image",),
    "EDGELOOP_DATA": ("data_root",),
    "EDGELOOP_LEADER_ELECTION": ("leader_election",),
}

# Which setting each ``cloud-controller run`` flag (by argparse dest) sets in ``settings_from_args``.
FLAGS: dict[str, tuple[str, ...]] = {
    "broker": ("mqtt.host", "mqtt.port"),
    "store": ("store_path",),
    "kube": ("kube",),
    "enrollment": ("enrollment",),
    "namespace": ("namespace",),
    "data_dir": ("data_dir",),
    "http_port": ("http_port",),
    "client_id": ("client_id",),
    "shared_group": ("shared_group",),
    "heartbeat_timeout": ("heartbeat_timeout_s",),
    "status_interval": ("status_min_interval_s",),
    "status_max_writes": ("status_max_writes_per_s",),
    "teacher": ("teacher",),
    "sensor_teacher": ("sensor_teacher",),
    "signing_key": ("signing_key",),
    "artifacts": ("artifacts_dir",),
    "distillation_config": ("distillation_config",),
}

# What each setting is for, where the model gives no ``Field(description=...)``
# (it has none today: app.py explains fields in comments next to them).
DESCRIPTIONS: dict[str, str] = {
    "mqtt.host": "broker host",
    "mqtt.port": "broker port",
    "mqtt.client_id": "not used by the controller: its connections are named after `client_id`",
    "mqtt.username": "broker user name",
    "mqtt.password": "broker password",
    "mqtt.tls": "TLS to the broker; set when `EDGELOOP_MQTT_CA_FILE` is",
    "mqtt.tls.ca_file": "CA certificate that verifies the broker",
    "mqtt.tls.cert_file": "client certificate (mutual TLS)",
    "mqtt.tls.key_file": "private key of the client certificate",
    "mqtt.tls.insecure_skip_hostname": "accept a broker certificate issued for another host name",
    "mqtt.keepalive_s": "MQTT keepalive interval",
    "mqtt.session_expiry_s": "how long the broker keeps a persistent session (unacknowledged messages) "
    "while the client is away",
    "mqtt.reconnect_min_s": "first reconnect backoff",
    "mqtt.reconnect_max_s": "reconnect backoff cap; kept low so the controller is back soon after a "
    "broker restart",
    "mqtt.connect_timeout_s": "seconds to wait for CONNACK",
    "store_path": "embedded SQLite resource store; this or `kube` is required",
    "kube": "resources in the Kubernetes API server; wins over `store_path` when both are set",
    "namespace": "namespace of the EdgeLoop resources the controller watches and creates",
    "enrollment": "auto: new nodes are approved; manual: they stay Pending until approved",
    "data_dir": "summaries, fleet and hard-example databases, DistillationJob work directories",
    "client_id": "MQTT client id (connections add `-desired`, `-teacher`); "
    "unset: `edgeloop-controller-{pod_name or host name}`",
    "shared_group": "subscribe to summaries via `$share/GROUP/` so replicas split them; "
    "node traffic then comes from node status",
    "http_host": "address of `/healthz` `/readyz` `/metrics`",
    "http_port": "port of `/healthz` `/readyz` `/metrics` (0: any free port)",
    "leader_election": "unset: on with `kube`; false: this replica reconciles without a Lease; "
    "the embedded store always leads",
    "lease_name": "Lease used for leader election",
    "lease_namespace": "namespace of the Lease; unset: `namespace`",
    "pod_name": "holder identity in the Lease and part of the default `client_id`; unset: host name",
    "lease_duration_s": "others take over a Lease not renewed for this long "
    "(leader election needs duration > renew deadline > retry period > 0)",
    "lease_renew_deadline_s": "the leader stops leading when it cannot renew for this long",
    "lease_retry_period_s": "interval between renewals and between attempts to acquire",
    "job_service_account": "service account of DistillationJob pods (with `kube`)",
    "heartbeat_timeout_s": "seconds until a silent node is Offline",
    "status_min_interval_s": "minimum seconds between two status writes of one EdgeNode",
    "status_max_writes_per_s": "EdgeNode status writes per second, total",
    "poll_s": "requeue interval while a pipeline, rollout or DistillationJob is in progress",
    "resync_s": "requeue interval of settled pipelines and rollouts",
    "node_workers": "EdgeNodes reconciled concurrently",
    "shutdown_timeout_s": "time in-flight reconciles get on SIGTERM",
    "log_format": "json: one JSON object per log line",
    "teacher": "`KIND:PATH` (e.g. `onnx-chat:var/teacher-bundle`) of a teacher that answers escalations",
    "sensor_teacher": "sensor bundle directory that labels the sensor hard examples nodes send, on ingest",
    "signing_key": "Ed25519 private key (PEM) the controller signs releases with; "
    "DistillationJobs run only with it",
    "artifacts_dir": "artifact store; unset: `{data_dir}/artifacts`",
    "distillation_config": "training recipe of the re-distillation runner",
    "job_image": "container image of DistillationJob pods (with `kube`); unset: the Job template's",
    "data_root": "dataset root of the re-distillation runner; unset: the runner's own "
    "(`EDGELOOP_DATA` in its environment, else `../shared/datasets` beside the repository)",
}

HEADER = """# Controller configuration reference

Generated from `cloud_controller/app.py` (`ControllerSettings`, `ControllerSettings.from_env`,
`configure_run_args`) by `cloud-controller config-reference`; do not edit by hand.
`cloud-controller run` reads its settings from `EDGELOOP_*` environment variables (the
Deployment sets them, `deploy/README.md`) and its command-line flags. It needs a resource
store: `--store PATH` / `EDGELOOP_STORE=PATH` (embedded SQLite) or `--kube` /
`EDGELOOP_STORE=kubernetes`.

## Settings

The default is what `cloud-controller run` uses when neither variable nor flag is given;
where that differs from the model's own default, the model's follows in parentheses.

| field | type | default | constraints | env var | flag | description |
|---|---|---|---|---|---|---|
"""

FLAGS_HEADER = """
## `cloud-controller run` flags

Every flag defaults to unset, which leaves the setting to its environment variable or default.

| flag | argument | sets | help |
|---|---|---|---|
"""

NOTES = """
## Notes

- Precedence: a flag overrides the environment variable, which overrides the default.
  `settings_from_args` hands the flags given to `from_env` as overrides applied after the
  variables (an absent flag is unset and changes nothing); `--broker` replaces `mqtt.host` and
  `mqtt.port` after that.
- Exception: `kube` wins over `store_path` however each was set, so `EDGELOOP_STORE=kubernetes`
  with `--store PATH` still uses the API server, and no flag turns `kube` off.
- An empty variable counts as unset, except `EDGELOOP_MQTT_HOST` (taken as given) and
  `EDGELOOP_MQTT_PORT`, `EDGELOOP_MQTT_RECONNECT_MIN_S`, `EDGELOOP_MQTT_RECONNECT_MAX_S`,
  which are converted to numbers before validation (empty or not a number: a `ValueError`).
- `EDGELOOP_STORE=kubernetes` sets `kube`; any other value is the `store_path`.
- `EDGELOOP_MQTT_CERT_FILE` and `EDGELOOP_MQTT_KEY_FILE` are read only when
  `EDGELOOP_MQTT_CA_FILE` is set.
- `EDGELOOP_LEADER_ELECTION`: `1`, `true`, `yes`, `on` (any case) turn it on, any other
  value turns it off.
- A value the model rejects (type or constraint) stops `cloud-controller run` with a
  validation error naming the field. `--broker` is only checked for the `HOST:PORT` form.
- The log level is an option of `cloud-controller` itself, before the subcommand:
  `cloud-controller --log-level DEBUG run ...`.
"""


def _fields(model: type[BaseModel], prefix: str = "") -> list[tuple[str, FieldInfo]]:
    """Every setting as (dotted path, field); a nested section is flattened, an optional one
    also gets a row of its own (whether it is set at all)."""
    out: list[tuple[str, FieldInfo]] = []
    for name, info in model.model_fields.items():
        path = f"{prefix}{name}"
        tp = info.annotation
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            out.extend(_fields(tp, f"{path}."))
            continue
        out.append((path, info))
        for sub in typing.get_args(tp):
            if isinstance(sub, type) and issubclass(sub, BaseModel):
                out.extend(_fields(sub, f"{path}."))
    return out


def setting_paths() -> list[str]:
    """Dotted paths of every documented setting (the rows of the settings table)."""
    return [path for path, _ in _fields(ControllerSettings)]


def _model_default(info: FieldInfo) -> Any:
    if info.default_factory is not None:
        return info.default_factory()  # type: ignore[call-arg]
    return info.default


_NO_VALUE = object()


def _run_default(settings: ControllerSettings, path: str) -> Any:
    """The value at ``path`` in ``settings``, or _NO_VALUE under an unset optional section."""
    obj: Any = settings
    for part in path.split("."):
        if not isinstance(obj, BaseModel):
            return _NO_VALUE
        obj = getattr(obj, part)
    return obj


def _value(v: Any) -> str:
    if v is PydanticUndefined:
        return "**required**"
    return f"`{v}`" if isinstance(v, Path) else f"`{v!r}`"


def _default(settings: ControllerSettings, path: str, info: FieldInfo) -> str:
    model = _model_default(info)
    run = _run_default(settings, path)
    if run is _NO_VALUE or run == model:
        return _value(model)
    return f"{_value(run)} ({_value(model)})"


def description(path: str, info: FieldInfo) -> str:
    """The model's own description if it has one, else the one written in DESCRIPTIONS."""
    if info.description:
        return info.description
    if path not in DESCRIPTIONS:
        raise ValueError(
            f"ControllerSettings field {path!r} has no description: give it Field(description=...) "
            "or add it to DESCRIPTIONS in cloud_controller/cli/config_reference.py"
        )
    return DESCRIPTIONS[path]


def _options(actions: list[argparse.Action]) -> dict[str, str]:
    """Field path -> the flags that set it, as table cells."""
    out: dict[str, list[str]] = {}
    for action in actions:
        for path in FLAGS.get(action.dest, ()):
            out.setdefault(path, []).append(f"`{action.option_strings[0]}`")
    return {path: ", ".join(flags) for path, flags in out.items()}


def run_actions() -> list[argparse.Action]:
    """The options of ``cloud-controller run``, from the parser the command itself uses."""
    parser = argparse.ArgumentParser(prog="cloud-controller run", add_help=False)
    configure_run_args(parser)
    return [a for a in parser._actions if a.option_strings]


def _argument(action: argparse.Action) -> str:
    if action.nargs == 0:
        return ""
    if action.choices is not None:
        return "`" + " \\| ".join(str(c) for c in action.choices) + "`"
    metavar = action.metavar if isinstance(action.metavar, str) else action.dest.upper()
    return f"`{metavar}`"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def render() -> str:
    settings = ControllerSettings.from_env({})
    actions = run_actions()
    flags = _options(actions)
    env: dict[str, list[str]] = {}
    for var, paths in ENV_VARS.items():
        for path in paths:
            env.setdefault(path, []).append(f"`{var}`")
    rows = [
        f"| `{path}` | {_type_name(info.annotation)} | {_default(settings, path, info)} | "
        f"{_constraints(info)} | {', '.join(env.get(path, []))} | {flags.get(path, '')} | "
        f"{_cell(description(path, info))} |"
        for path, info in _fields(ControllerSettings)
    ]
    flag_rows = [
        f"| `{', '.join(a.option_strings)}` | {_argument(a)} | "
        f"{', '.join(f'`{p}`' for p in FLAGS.get(a.dest, ()))} | {_cell(a.help or '')} |"
        for a in actions
    ]
    given = [*env, *flags]
    fixed = [
        f"`{path}`"
        for path in setting_paths()
        if not any(g == path or g.startswith(f"{path}.") for g in given)
    ]
    notes = NOTES + (
        "- No variable or flag sets "
        + ", ".join(fixed)
        + ": `cloud-controller run` keeps their defaults; code that builds `ControllerSettings`"
        " itself can set them.\n"
    )
    return HEADER + "\n".join(rows) + "\n" + FLAGS_HEADER + "\n".join(flag_rows) + "\n" + notes
