"""The CRDs in ``crds/`` as the single source of truth for the embedded store and the CLI.

The embedded store must refuse exactly what a kube-apiserver would refuse, and
``cloud-controller get`` must print the same columns as ``kubectl get``. Both
follow from the CRD files, so nothing here restates a field: schemas, names,
short names, categories and printer columns are all read from the YAML.

Validation uses ``jsonschema`` (Draft 4, the dialect OpenAPI v3.0 schemas are
closest to: boolean ``exclusiveMinimum``), with the API server's *strict field
validation* added (unknown fields are an error, as ``kubectl apply`` does by
default since 1.27) and the structural defaults applied before validation.
Not emulated: CEL rules (none are used), ``x-kubernetes-list-type`` uniqueness,
and pruning (unknown fields are refused rather than dropped).
"""

from __future__ import annotations

import copy
import datetime as dt
import functools
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from cloud_controller.resources.store_protocol import API_VERSION, Invalid, Obj

# DNS-1123 subdomain (object names) and label (namespaces), as the API server checks them.
_NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_LABEL_VALUE_RE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_LABEL_KEY_RE = re.compile(
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$"
)


class SchemaInvalid(Invalid):
    """``Invalid`` carrying every problem as ``(path, message)`` so a CLI can print them all."""

    def __init__(self, what: str, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        detail = "; ".join(f"{p or '<root>'}: {m}" for p, m in problems)
        super().__init__(f"{what} is invalid: {detail}")


@dataclass(frozen=True)
class PrinterColumn:
    name: str
    type: str
    json_path: str
    priority: int = 0
    description: str = ""
    format: str = ""


@dataclass(frozen=True)
class Crd:
    """What the store and the CLI need from one CustomResourceDefinition."""

    kind: str
    plural: str
    singular: str
    short_names: tuple[str, ...]
    categories: tuple[str, ...]
    group: str
    version: str
    schema: Mapping[str, Any]
    columns: tuple[PrinterColumn, ...]
    has_status_subresource: bool
    source: Path
    _validator: Any = field(default=None, compare=False, repr=False)

    @property
    def resource(self) -> str:
        """``edgenodes.edgeloop.io``: the name kubectl prints (``edgenode.edgeloop.io/n1``)."""
        return f"{self.plural}.{self.group}"

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}"


def default_crd_dir() -> Path:
    """``$EDGELOOP_CRDS`` or ``crds/`` at the repository root (next to the package in a checkout)."""
    env = os.environ.get("EDGELOOP_CRDS")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "crds"


def _strict(schema: Any) -> Any:
    """Copy of ``schema`` where objects with ``properties`` refuse unknown fields.

    This is the API server's strict field validation. Objects marked
    ``x-kubernetes-preserve-unknown-fields`` and maps (``additionalProperties``)
    are left open; ``metadata`` has no ``properties`` in a CRD, so it stays open.
    """
    if isinstance(schema, list):
        return [_strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _strict(v) for k, v in schema.items()}
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


def _check_date_time(value: object) -> bool:
    """RFC 3339 date-time (jsonschema only checks it when an optional package is installed)."""
    if not isinstance(value, str):
        return True
    if not re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$", value, re.IGNORECASE):
        return False
    try:
        dt.datetime.fromisoformat(value.upper().replace("Z", "+00:00"))
    except ValueError:
        return False
    return True


_FORMATS = jsonschema.FormatChecker(formats=())
_FORMATS.checks("date-time")(_check_date_time)


def _parse_crd(doc: Mapping[str, Any], source: Path) -> Crd:
    spec = doc["spec"]
    names = spec["names"]
    served = [v for v in spec["versions"] if v.get("storage")] or spec["versions"]
    ver = served[0]
    schema = ver["schema"]["openAPIV3Schema"]
    cols = tuple(
        PrinterColumn(
            name=c["name"],
            type=c["type"],
            json_path=c["jsonPath"],
            priority=int(c.get("priority", 0)),
            description=c.get("description", ""),
            format=c.get("format", ""),
        )
        for c in ver.get("additionalPrinterColumns", [])
    )
    validator = jsonschema.Draft4Validator(_strict(schema), format_checker=_FORMATS)
    return Crd(
        kind=names["kind"],
        plural=names["plural"],
        singular=names.get("singular", names["kind"].lower()),
        short_names=tuple(names.get("shortNames", [])),
        categories=tuple(names.get("categories", [])),
        group=spec["group"],
        version=ver["name"],
        schema=schema,
        columns=cols,
        has_status_subresource="status" in (ver.get("subresources") or {}),
        source=source,
        _validator=validator,
    )


class Schemas:
    """All CRDs of one directory, by kind, with name resolution as kubectl does it."""

    def __init__(self, crds: Iterable[Crd]) -> None:
        self.by_kind: dict[str, Crd] = {c.kind: c for c in crds}

    @classmethod
    def load(cls, path: str | os.PathLike[str] | None = None) -> Schemas:
        """Read every CustomResourceDefinition in ``path`` (a directory or one file)."""
        root = Path(path) if path is not None else default_crd_dir()
        files = sorted(root.glob("*.yaml")) + sorted(root.glob("*.yml")) if root.is_dir() else [root]
        if not files:
            raise FileNotFoundError(f"no CRD files in {root}")
        crds: list[Crd] = []
        for f in files:
            with f.open(encoding="utf-8") as fh:
                for doc in yaml.safe_load_all(fh):
                    if isinstance(doc, dict) and doc.get("kind") == "CustomResourceDefinition":
                        crds.append(_parse_crd(doc, f))
        return cls(crds)

    # ------------------------------------------------------------------ names

    def crd(self, kind: str) -> Crd:
        """The CRD of a Kind (exact); Invalid for kinds this API does not serve."""
        try:
            return self.by_kind[kind]
        except KeyError:
            raise Invalid(f"no kind {kind!r} is registered in {API_VERSION}") from None

    def resolve(self, name: str) -> list[Crd]:
        """``kubectl get NAME`` resolution: plural, singular, short name, kind, ``plural.group``,
        or a category (which yields several CRDs). Case-insensitive. Raises KeyError."""
        key = name.lower()
        for crd in self.by_kind.values():
            if key in {crd.plural, crd.singular, crd.kind.lower(), crd.resource,
                       f"{crd.singular}.{crd.group}", *crd.short_names}:
                return [crd]
        in_category = [c for c in self.by_kind.values() if key in c.categories]
        if in_category:
            return in_category
        raise KeyError(f'the server doesn\'t have a resource type "{name}"')

    # ------------------------------------------------------------ validation

    def apply_defaults(self, obj: Obj) -> Obj:
        """Fill schema ``default``s in place, as the API server does before validating."""
        _default(obj, self.crd(str(obj.get("kind"))).schema)
        return obj

    def validate(self, obj: Obj) -> None:
        """Raise SchemaInvalid listing every problem (metadata, spec and status)."""
        kind = obj.get("kind")
        if not isinstance(kind, str):
            raise SchemaInvalid("object", [("kind", "required")])
        crd = self.crd(kind)
        problems: list[tuple[str, str]] = []
        if obj.get("apiVersion") != crd.api_version:
            problems.append(("apiVersion", f"must be {crd.api_version}, got {obj.get('apiVersion')!r}"))
        problems += _metadata_problems(obj.get("metadata"))
        for err in crd._validator.iter_errors(obj):
            problems.append((_path(err.absolute_path), err.message))
        if problems:
            name = (obj.get("metadata") or {}).get("name", "?")
            raise SchemaInvalid(f"{kind} {name!r}", sorted(set(problems)))

    # -------------------------------------------------------------- printing

    def columns(self, kind: str, wide: bool = False) -> list[PrinterColumn]:
        return [c for c in self.crd(kind).columns if wide or c.priority == 0]

    def row(self, obj: Obj, wide: bool = False, now: dt.datetime | None = None) -> list[str]:
        """Cells for the printer columns (NAME first), rendered like kubectl renders them."""
        now = now or dt.datetime.now(dt.UTC)
        cells = [str(obj.get("metadata", {}).get("name", ""))]
        for col in self.columns(str(obj["kind"]), wide):
            cells.append(render_cell(col, json_path(obj, col.json_path), now))
        return cells


@functools.lru_cache(maxsize=8)
def _cached(path: str) -> Schemas:
    return Schemas.load(path)


def load_schemas(path: str | os.PathLike[str] | None = None) -> Schemas:
    """Schemas of ``path`` (default: the repository's ``crds/``), parsed once per process."""
    return _cached(str(Path(path) if path is not None else default_crd_dir()))


# ---------------------------------------------------------------------- helpers


def _default(value: Any, schema: Mapping[str, Any]) -> None:
    if isinstance(value, dict):
        for key, sub in (schema.get("properties") or {}).items():
            if key not in value and "default" in sub:
                value[key] = copy.deepcopy(sub["default"])
            if key in value:
                _default(value[key], sub)
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            for key, item in value.items():
                if key not in (schema.get("properties") or {}):
                    _default(item, extra)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for item in value:
            _default(item, schema["items"])


def _metadata_problems(meta: Any) -> list[tuple[str, str]]:
    if not isinstance(meta, dict):
        return [("metadata", "required")]
    out: list[tuple[str, str]] = []
    name = meta.get("name")
    if not isinstance(name, str) or not name:
        out.append(("metadata.name", "required"))
    elif len(name) > 253 or not _NAME_RE.match(name):
        out.append(("metadata.name", f"{name!r} is not a lowercase RFC 1123 subdomain"))
    ns = meta.get("namespace")
    if ns is not None and (not isinstance(ns, str) or len(ns) > 63 or not _LABEL_RE.match(ns)):
        out.append(("metadata.namespace", f"{ns!r} is not a lowercase RFC 1123 label"))
    for fld in ("labels", "annotations"):
        m = meta.get(fld)
        if m is None:
            continue
        if not isinstance(m, dict) or not all(isinstance(v, str) for v in m.values()):
            out.append((f"metadata.{fld}", "must be a map of strings"))
            continue
        for k, v in m.items():
            if not _LABEL_KEY_RE.match(k) or len(k.rpartition("/")[2]) > 63:
                out.append((f"metadata.{fld}.{k}", "invalid key"))
            if fld == "labels" and (len(v) > 63 or not _LABEL_VALUE_RE.match(v)):
                out.append((f"metadata.labels.{k}", f"invalid label value {v!r}"))
    fins = meta.get("finalizers")
    if fins is not None and (not isinstance(fins, list) or not all(isinstance(f, str) for f in fins)):
        out.append(("metadata.finalizers", "must be a list of strings"))
    return out


def _path(parts: Iterable[Any]) -> str:
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


_SEGMENT_RE = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


def json_path(obj: Any, path: str) -> Any:
    """Evaluate the simple JSONPaths printer columns use (``.status.phase``, ``.a.b[0].c``).

    Filters and wildcards are not supported: the CRDs here do not use them, and
    a test keeps it that way. Returns None when any step is missing.
    """
    value = obj
    for name, index in _SEGMENT_RE.findall(path.strip().lstrip("{").rstrip("}")):
        if name:
            if not isinstance(value, dict) or name not in value:
                return None
            value = value[name]
        else:
            i = int(index)
            if not isinstance(value, list) or i >= len(value):
                return None
            value = value[i]
    return value


def human_duration(seconds: float) -> str:
    """kubectl's ``HumanDuration`` (``5s``, ``3m20s``, ``2d4h``, ``400d``)."""
    s = int(seconds)
    if s < 0:
        return "<invalid>"
    if s < 120:
        return f"{s}s"
    m = s // 60
    if m < 10:
        return f"{m}m{s % 60}s" if s % 60 else f"{m}m"
    if m < 180:
        return f"{m}m"
    h = s // 3600
    if h < 8:
        return f"{h}h{m % 60}m" if m % 60 else f"{h}h"
    if h < 48:
        return f"{h}h"
    d = h // 24
    if h < 24 * 8:
        return f"{d}d{h % 24}h" if h % 24 else f"{d}d"
    if d < 365 * 2:
        return f"{d}d"
    if d < 365 * 8:
        return f"{d // 365}y{d % 365}d" if d % 365 else f"{d // 365}y"
    return f"{d // 365}y"


def parse_time(value: str) -> dt.datetime:
    t = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    return t if t.tzinfo else t.replace(tzinfo=dt.UTC)


def render_cell(col: PrinterColumn, value: Any, now: dt.datetime) -> str:
    """A missing value prints as an empty cell; ``date`` columns print as an age."""
    if value is None:
        return ""
    if col.type == "date" and isinstance(value, str):
        try:
            return human_duration((now - parse_time(value)).total_seconds())
        except ValueError:
            return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer() and col.type == "integer":
        return str(int(value))
    if isinstance(value, dict | list):
        import json

        return json.dumps(value, separators=(",", ":"), sort_keys=True)
    return str(value)
