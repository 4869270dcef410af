"""Render the configuration reference from the pydantic models themselves.

The reference in ``docs/configuration.md`` is generated (``edge-agent
config-reference``) and a test checks it is current, so the documentation
cannot drift from the code that parses the file and the environment.
"""

from __future__ import annotations

import types
import typing
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from edge_agent.config import AgentConfig, env_var
from edge_agent.ops.tables import markdown_table

HEADER = """# Edge agent configuration reference

Generated from `edge_agent/config.py` by `edge-agent config-reference`; do not edit by hand.
A config file is YAML (`.yaml`, `.yml`) or TOML (`.toml`). `edge-agent check-config FILE`
prints every error with its field path. SIGHUP reloads the file: `mqtt`, `node_id` and
`outbox.path` need a restart, everything else applies live. The cloud can override the
pipeline sections through the node's desired state (an `EdgePipeline`).

Precedence, highest first: `edge-agent run` flags (`edge-agent --log-level LEVEL run` sets
`log.level`), `EDGE_AGENT_*` environment variables, the config file, the defaults. Each
field's variable is in the table: `EDGE_AGENT_` and the field path in capitals with `__`
between sections; a list or pair is JSON (`EDGE_AGENT_DEVICES__ALLOWED='["d1", "d2"]'`); an
empty variable is unset. A SIGHUP reload reads the file and the environment again; flags
keep applying only from the start.

"""


def type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is typing.Annotated:
        return type_name(typing.get_args(tp)[0])
    if origin in (typing.Union, types.UnionType):
        return " \\| ".join(type_name(a) for a in typing.get_args(tp))
    if origin is typing.Literal:
        return " \\| ".join(repr(a) for a in typing.get_args(tp))
    if origin in (list, dict, tuple):
        return f"{origin.__name__}[{', '.join(type_name(a) for a in typing.get_args(tp))}]"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def constraints(info: FieldInfo) -> str:
    parts: list[str] = []
    for m in info.metadata:
        for attr in ("gt", "ge", "lt", "le", "min_length", "max_length", "pattern"):
            v = getattr(m, attr, None)
            if v is not None:
                parts.append(f"{attr} {v}")
    return ", ".join(parts).replace("|", "\\|")


def _default(info: FieldInfo) -> str:
    if info.default_factory is not None:
        try:
            value = info.default_factory()  # type: ignore[call-arg]
        except TypeError:
            return ""
        if isinstance(value, BaseModel):
            return "(section)"
        return f"`{value!r}`"
    if info.default is PydanticUndefined:
        return "**required**"
    return f"`{info.default!r}`" if not isinstance(info.default, BaseModel) else "(section)"


def _rows(model: type[BaseModel], prefix: str = "") -> list[list[str]]:
    rows: list[list[str]] = []
    for name, info in model.model_fields.items():
        path = f"{prefix}{name}"
        tp = info.annotation
        inner = [a for a in typing.get_args(tp) if isinstance(a, type) and issubclass(a, BaseModel)]
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            rows.extend(_rows(tp, f"{path}."))
            continue
        var = f"`{env_var(path)}`" if not inner else ""
        rows.append([f"`{path}`", type_name(tp), _default(info), constraints(info), var])
        for sub in inner:
            rows.extend(_rows(sub, f"{path}."))
    return rows


def render() -> str:
    header = ["field", "type", "default", "constraints", "env var"]
    return HEADER + markdown_table(header, _rows(AgentConfig)) + "\n"
