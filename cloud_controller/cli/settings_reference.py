"""``cloud-controller config-reference``: the controller's settings reference, from the model and the parser.

``docs/controller-configuration.md`` is this output, and a test checks it is
current. Every row comes from ``ControllerSettings`` (type, default,
constraints, description), ``settings.env_var`` (the variable) and the parser
``configure_run_args`` builds (the flags, whose ``dest`` is the field they set),
so nothing here can drift from what ``cloud-controller run`` reads.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from cloud_controller.cli.run import BROKER, CONFIG, configure_run_args
from cloud_controller.settings import STORE_VAR, ControllerSettings, env_var, setting_fields
from edge_agent.ops.cli_kit import Verb

# One rendering of types and constraints for both references, so they read alike.
from edge_agent.ops.config_reference import constraints, type_name
from edge_agent.ops.tables import markdown_table

HEADER = """# Controller configuration reference

Generated from `cloud_controller/settings.py` (`ControllerSettings`) and
`cloud_controller/cli/run.py` (the `run` flags) by `cloud-controller config-reference`;
do not edit by hand. `cloud-controller run` reads its settings from command-line flags,
`EDGELOOP_*` environment variables (the Deployment sets them, `deploy/README.md`) and an
optional settings file (`--config FILE`). It needs a resource store: `--store PATH` /
`EDGELOOP_STORE=PATH` (embedded SQLite) or `--kube` / `EDGELOOP_STORE=kubernetes`.

## Settings

"""

FLAGS_HEADER = """
## `cloud-controller run` flags

Every flag defaults to unset, which leaves the setting to its environment variable, the
settings file or the default.

"""

NOTES = f"""
## Notes

- Precedence, highest first: flag, environment variable, settings file, default. Sources
  merge field by field: `--broker` sets `mqtt.host` and `mqtt.port` and keeps the `mqtt.tls`
  the environment or the file gave.
- The settings file is YAML (`.yaml`, `.yml`) or TOML (`.toml`) with the fields above as keys,
  nested for `mqtt` (e.g. `mqtt: {{host: broker, port: 8883}}`).
- `kube` wins over `store_path` however each was set, so `{STORE_VAR}=kubernetes`
  with `--store PATH` still uses the API server, and no flag turns `kube` off.
- `{STORE_VAR}=kubernetes` sets `kube`; any other value is the `store_path`.
- An empty variable counts as unset.
- Setting any `mqtt.tls` variable turns TLS on and then needs `EDGELOOP_MQTT_CA_FILE`.
- A value the model rejects (type or constraint) stops `cloud-controller run` with exit
  status 2 and one line naming the field. `--broker` is checked for the `HOST:PORT` form first.
- The log level is an option of `cloud-controller` itself, before the verb:
  `cloud-controller --log-level DEBUG run ...`.
"""

_NO_VALUE = object()


def _value_at(obj: Any, path: str) -> Any:
    for part in path.split("."):
        if not isinstance(obj, BaseModel):
            return _NO_VALUE
        obj = getattr(obj, part)
    return obj


def _value(v: Any) -> str:
    if v is PydanticUndefined:
        return "**required**"
    return f"`{v}`" if isinstance(v, Path) else f"`{v!r}`"


def _default(defaults: ControllerSettings, path: str, info: FieldInfo) -> str:
    value = _value_at(defaults, path)  # the controller's default, e.g. its own MQTT reconnect cap
    if value is _NO_VALUE:  # inside an optional section that is unset by default
        value = info.default_factory() if info.default_factory is not None else info.default  # type: ignore[call-arg]
    return _value(value)


def description(path: str, info: FieldInfo) -> str:
    if info.description:
        return info.description
    if path.startswith("mqtt."):
        return f"the broker connection's `{path[5:]}`, as in the edge agent's `mqtt` section"
    raise ValueError(f"ControllerSettings field {path!r} has no Field(description=...)")


def run_actions() -> list[argparse.Action]:
    """The options of ``cloud-controller run``, from the parser the verb itself uses."""
    parser = argparse.ArgumentParser(prog="cloud-controller run", add_help=False)
    configure_run_args(parser)
    return [a for a in parser._actions if a.option_strings]


def flag_fields(action: argparse.Action) -> tuple[str, ...]:
    """The settings a flag sets: its dest, except the two flags that are not one field."""
    if action.dest == BROKER:
        return ("mqtt.host", "mqtt.port")
    if action.dest == CONFIG:
        return ()
    return (action.dest,)


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
    defaults = ControllerSettings()
    actions = run_actions()
    flags: dict[str, list[str]] = {}
    for a in actions:
        for path in flag_fields(a):
            flags.setdefault(path, []).append(f"`{a.option_strings[0]}`")
    rows = []
    for path, info in setting_fields():
        var = env_var(path)
        rows.append(
            [
                f"`{path}`",
                type_name(info.annotation),
                _default(defaults, path, info),
                constraints(info),
                f"`{var}`" if var else "",
                ", ".join(flags.get(path, [])),
                _cell(description(path, info)),
            ]
        )
    header = ["field", "type", "default", "constraints", "env var", "flag", "description"]
    flag_rows = [
        [
            f"`{', '.join(a.option_strings)}`",
            _argument(a),
            ", ".join(f"`{p}`" for p in flag_fields(a)),
            _cell(a.help or ""),
        ]
        for a in actions
    ]
    return (
        HEADER
        + markdown_table(header, rows)
        + "\n"
        + FLAGS_HEADER
        + markdown_table(["flag", "argument", "sets", "help"], flag_rows)
        + "\n"
        + NOTES
    )


def _print(args: argparse.Namespace) -> int:
    print(render(), end="")
    return 0


VERBS = (
    Verb(
        "config-reference",
        "print the controller configuration reference (Markdown; docs/controller-configuration.md)",
        _print,
    ),
)
