"""Render the configuration reference from the pydantic models themselves.

The reference in ``docs/configuration.md`` is generated (``edge-agent
config-reference``) and a test checks it is current, so the documentation
cannot drift from the code that parses the file.
"""

from __future__ import annotations

import types
import typing
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from edge_agent.config import AgentConfig

HEADER = """# Edge agent configuration reference

Generated from `edge_agent/config.py` by `edge-agent config-reference`; do not edit by hand.
A config file is YAML (`.yaml`, `.yml`) or TOML (`.toml`). `edge-agent check-config FILE`
prints every error with its field path. SIGHUP reloads the file: `mqtt`, `node_id` and
`outbox.path` need a restart, everything else applies live. The cloud can override the
pipeline sections through the node's desired state (an `EdgePipeline`).

| field | type | default | constraints |
|---|---|---|---|
"""


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is typing.Annotated:
        return _type_name(typing.get_args(tp)[0])
    if origin in (typing.Union, types.UnionType):
        return " \\| ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is typing.Literal:
        return " \\| ".join(repr(a) for a in typing.get_args(tp))
    if origin in (list, dict, tuple):
        return f"{origin.__name__}[{', '.join(_type_name(a) for a in typing.get_args(tp))}]"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _constraints(info: FieldInfo) -> str:
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


def _rows(model: type[BaseModel], prefix: str = "") -> list[str]:
    rows: list[str] = []
    for name, info in model.model_fields.items():
        path = f"{prefix}{name}"
        tp = info.annotation
        inner = [a for a in typing.get_args(tp) if isinstance(a, type) and issubclass(a, BaseModel)]
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            rows.extend(_rows(tp, f"{path}."))
            continue
        rows.append(f"| `{path}` | {_type_name(tp)} | {_default(info)} | {_constraints(info)} |")
        for sub in inner:
            rows.extend(_rows(sub, f"{path}."))
    return rows


def render() -> str:
    return HEADER + "\n".join(_rows(AgentConfig)) + "\n"
