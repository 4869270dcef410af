"""``cloud-controller apply|get|describe|delete``: the kubectl experience over the embedded store.

A user without a cluster should not have to learn a second tool: the verbs,
the resource names (plural, singular, short name, kind, the ``edgeloop``
category), the printer columns and the output lines (``edgenode.edgeloop.io/n1
created``) are kubectl's, and the columns come from the same CRDs, so what
``kubectl get edgenodes`` shows on a cluster is what ``cloud-controller get en``
shows here. It talks to the store file directly, so it works while the
controller runs (SQLite WAL: the CLI's reads never block it).

The four verbs are ``VERBS`` for the ``cloud-controller`` registry
(``cloud_controller/cli/main.py``); ``python -m cloud_controller.cli.kubectl``
runs them standalone with the same CLI kit.

Differences from kubectl: ``apply`` is an update of spec, labels and
annotations (no last-applied three-way merge, finalizers the file does not
mention are kept); ``delete`` does not wait for finalizers; ``status`` in a
file is ignored, as with a real status subresource.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import re
import sys
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

import yaml

from cloud_controller.resources.schema import Crd, Schemas, human_duration, load_schemas, parse_time
from cloud_controller.resources.sqlite_store import SqliteResourceStore
from cloud_controller.resources.store_protocol import Conflict, Invalid, NotFound, Obj, StoreError
from edge_agent.ops.cli_kit import Cli, Verb
from edge_agent.ops.tables import text_table

DEFAULT_STORE = "var/controller/resources.db"


def default_store_path() -> Path:
    return Path(os.environ.get("EDGELOOP_STORE") or DEFAULT_STORE)


class CliError(Exception):
    """A user error: print the message (kubectl-style) and exit 1."""


# --------------------------------------------------------------------------- input


def read_manifests(paths: Sequence[str], stdin: TextIO | None = None) -> list[Obj]:
    """Objects from files, directories (``*.yaml``/``*.yml``/``*.json``, sorted) or ``-`` (stdin)."""
    docs: list[Obj] = []
    for p in paths:
        if p == "-":
            texts = [(p, (stdin or sys.stdin).read())]
        else:
            path = Path(p)
            if path.is_dir():
                files = sorted(f for f in path.iterdir() if f.suffix in (".yaml", ".yml", ".json"))
            elif path.exists():
                files = [path]
            else:
                raise CliError(f'error: the path "{p}" does not exist')
            texts = [(str(f), f.read_text(encoding="utf-8")) for f in files]
        for source, text in texts:
            try:
                loaded = list(yaml.safe_load_all(text))
            except yaml.YAMLError as exc:
                raise CliError(f"error: {source}: {exc}") from exc
            for doc in loaded:
                if doc is None:
                    continue
                if not isinstance(doc, dict):
                    raise CliError(f"error: {source}: a document is not an object")
                if doc.get("kind") == "List":
                    docs.extend(doc.get("items") or [])
                else:
                    docs.append(doc)
    return docs


def _crd_of(schemas: Schemas, obj: Obj) -> Crd:
    kind = obj.get("kind")
    crd = schemas.by_kind.get(str(kind))
    if crd is None or obj.get("apiVersion") != crd.api_version:
        raise CliError(
            f'error: resource mapping not found for kind "{kind}" in version "{obj.get("apiVersion")}"'
        )
    return crd


def _ref(crd: Crd, name: str) -> str:
    return f"{crd.singular}.{crd.group}/{name}"


# --------------------------------------------------------------------------- verbs


async def apply(store: SqliteResourceStore, schemas: Schemas, objs: Iterable[Obj], namespace: str,
                out: TextIO, err: TextIO) -> int:
    """Create or update each object; report created / configured / unchanged per object."""
    rc = 0
    for obj in objs:
        try:
            crd = _crd_of(schemas, obj)
            meta = obj.setdefault("metadata", {})
            meta.setdefault("namespace", namespace)
            outcome = await _apply_one(store, crd, obj)
            print(f"{_ref(crd, meta.get('name', '?'))} {outcome}", file=out)
        except (CliError, StoreError) as exc:
            print(_message(exc), file=err)
            rc = 1
    return rc


async def _apply_one(store: SqliteResourceStore, crd: Crd, obj: Obj) -> str:
    meta = obj["metadata"]
    for _ in range(5):  # a controller may write between our read and our update
        try:
            cur = await store.get(crd.kind, meta["namespace"], str(meta.get("name")))
        except NotFound:
            await store.create(obj)
            return "created"
        desired = {
            "apiVersion": obj["apiVersion"],
            "kind": obj["kind"],
            "metadata": {
                **cur["metadata"],
                "labels": meta.get("labels") or {},
                "annotations": meta.get("annotations") or {},
                "finalizers": meta.get("finalizers", cur["metadata"].get("finalizers") or []),
            },
            "spec": obj.get("spec"),
        }
        try:
            new = await store.replace(desired)
        except Conflict:
            continue
        same = new["metadata"]["resourceVersion"] == cur["metadata"]["resourceVersion"]
        return "unchanged" if same else "configured"
    raise CliError(f"error: {_ref(crd, meta['name'])}: kept conflicting with concurrent writers")


async def get(store: SqliteResourceStore, schemas: Schemas, kind: str, names: Sequence[str],
              namespace: str | None, output: str, selector: dict[str, str], out: TextIO,
              err: TextIO, now: dt.datetime | None = None) -> int:
    crds = _resolve(schemas, kind)
    multi = len(crds) > 1
    found: list[tuple[Crd, list[Obj]]] = []
    rc = 0
    for crd in crds:
        if names:
            objs = []
            for n in names:
                try:
                    objs.append(await store.get(crd.kind, namespace or "default", n))
                except NotFound:
                    print(f'Error from server (NotFound): {crd.resource} "{n}" not found', file=err)
                    rc = 1
        else:
            objs, _ = await store.list(crd.kind, namespace, selector or None)
        if objs:
            found.append((crd, objs))

    if output in ("yaml", "json"):
        if names and not found:
            return rc
        items = [o for _, objs in found for o in objs]
        doc: Any = items[0] if names and len(items) == 1 and not multi else {
            "apiVersion": "v1", "kind": "List", "items": items, "metadata": {"resourceVersion": ""}}
        if output == "json":
            print(json.dumps(doc, indent=4), file=out)
        else:
            print(yaml.safe_dump(doc, sort_keys=False).rstrip(), file=out)
        return rc
    if output == "name":
        for crd, objs in found:
            for o in objs:
                print(_ref(crd, o["metadata"]["name"]), file=out)
        return rc

    if not found and not names:
        where = "any namespace" if namespace is None else f"{namespace} namespace"
        print(f"No resources found in {where}.", file=err)
    wide = output == "wide"
    first = True
    for crd, objs in found:
        if not first:
            print(file=out)
        first = False
        header = ["NAME"] + [c.name.upper() for c in schemas.columns(crd.kind, wide)]
        rows = []
        for o in objs:
            row = schemas.row(o, wide=wide, now=now)
            if multi:
                row[0] = _ref(crd, row[0])
            rows.append(row)
        if namespace is None:
            header.insert(0, "NAMESPACE")
            rows = [[o["metadata"]["namespace"], *r] for o, r in zip(objs, rows, strict=True)]
        print(text_table(header, rows, gap=3), file=out)  # kubectl's tabwriter layout
    return rc


async def describe(store: SqliteResourceStore, schemas: Schemas, kind: str, names: Sequence[str],
                   namespace: str, out: TextIO, err: TextIO, now: dt.datetime | None = None) -> int:
    now = now or dt.datetime.now(dt.UTC)
    rc = 0
    crds = _resolve(schemas, kind)
    targets: list[tuple[Crd, Obj]] = []
    for crd in crds:
        if names:
            for n in names:
                try:
                    targets.append((crd, await store.get(crd.kind, namespace, n)))
                except NotFound:
                    print(f'Error from server (NotFound): {crd.resource} "{n}" not found', file=err)
                    rc = 1
        else:
            objs, _ = await store.list(crd.kind, namespace)
            targets += [(crd, o) for o in objs]
    for i, (_crd, obj) in enumerate(targets):
        if i:
            print(file=out)
        events = await store.list_events(obj["kind"], obj["metadata"]["namespace"], obj["metadata"]["name"])
        print(describe_text(obj, events, now), file=out)
    return rc


def _title(key: str) -> str:
    """``lastTransitionTime`` -> ``Last Transition Time``, as kubectl describe prints CR fields."""
    words = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", " ", key).split(" ")
    return " ".join(w[:1].upper() + w[1:] for w in words)


def _describe_lines(value: Any, indent: int) -> Iterator[str]:
    pad = "  " * indent
    if isinstance(value, dict):
        for k, v in value.items():
            if isinstance(v, dict | list) and v:
                yield f"{pad}{_title(str(k))}:"
                yield from _describe_lines(v, indent + 1)
            else:
                yield f"{pad}{_title(str(k))}:  {_scalar(v)}"
    elif isinstance(value, list):
        for item in value:
            if isinstance(item, dict) and item:
                yield from _describe_lines(item, indent)  # kubectl prints list items' fields in place
            else:
                yield f"{pad}{_scalar(item)}"


def _scalar(v: Any) -> str:
    if v is None or v == {} or v == []:
        return "<none>"
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def describe_text(obj: Obj, events: list[Obj], now: dt.datetime) -> str:
    meta = obj.get("metadata", {})

    def kv(m: dict[str, str] | None) -> list[str]:
        return [f"{k}={v}" for k, v in sorted((m or {}).items())] or ["<none>"]

    lines = [f"Name:         {meta.get('name')}", f"Namespace:    {meta.get('namespace')}"]
    labels, annotations = kv(meta.get("labels")), kv(meta.get("annotations"))
    lines.append(f"Labels:       {labels[0]}")
    lines += [f"              {x}" for x in labels[1:]]
    lines.append(f"Annotations:  {annotations[0]}")
    lines += [f"              {x}" for x in annotations[1:]]
    lines += [f"API Version:  {obj.get('apiVersion')}", f"Kind:         {obj.get('kind')}", "Metadata:"]
    shown = {k: v for k, v in meta.items() if k not in ("name", "namespace", "labels", "annotations")}
    lines += list(_describe_lines(shown, 1))
    for section in ("spec", "status"):
        if obj.get(section):
            lines.append(f"{_title(section)}:")
            lines += list(_describe_lines(obj[section], 1))
    if not events:
        lines.append("Events:       <none>")
    else:
        lines.append("Events:")
        rows = []
        for e in events:
            age = human_duration((now - parse_time(e["lastTimestamp"])).total_seconds())
            if e.get("count", 1) > 1:
                first = human_duration((now - parse_time(e["firstTimestamp"])).total_seconds())
                age = f"{age} (x{e['count']} over {first})"
            rows.append([e["type"], e["reason"], age, "edgeloop-controller", e["message"]])
        table = text_table(["Type", "Reason", "Age", "From", "Message"],
                           [["----", "------", "----", "----", "-------"], *rows], gap=3)
        lines += ["  " + x for x in table.splitlines()]
    return "\n".join(lines)


async def delete(store: SqliteResourceStore, schemas: Schemas, targets: Sequence[tuple[Crd, str, str]],
                 out: TextIO, err: TextIO, ignore_not_found: bool = False) -> int:
    rc = 0
    for crd, ns, name in targets:
        try:
            await store.delete(crd.kind, ns, name)
            print(f'{crd.singular}.{crd.group} "{name}" deleted', file=out)
        except NotFound:
            if not ignore_not_found:
                print(f'Error from server (NotFound): {crd.resource} "{name}" not found', file=err)
                rc = 1
    return rc


def _resolve(schemas: Schemas, kind: str) -> list[Crd]:
    try:
        return schemas.resolve(kind)
    except KeyError as exc:
        raise CliError(f"error: {exc.args[0]}") from None


def _message(exc: BaseException) -> str:
    if isinstance(exc, Invalid):
        return f"Error from server (Invalid): {exc}"
    if isinstance(exc, StoreError):
        return f"Error from server ({type(exc).__name__}): {exc}"
    return str(exc)


# --------------------------------------------------------------------------- argparse


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--store", type=Path, default=None,
                   help=f"embedded store file (default: $EDGELOOP_STORE or {DEFAULT_STORE})")
    p.add_argument("--crds", type=Path, default=None, help="CRD directory (default: the repository's crds/)")
    p.add_argument("-n", "--namespace", default="default")


def _apply_args(p: argparse.ArgumentParser) -> None:
    _common(p)
    p.add_argument("-f", "--filename", action="append", required=True, help="file, directory or -")


def _get_args(p: argparse.ArgumentParser) -> None:
    _common(p)
    p.add_argument("kind", help="plural, singular, short name, kind, or 'edgeloop' for every kind")
    p.add_argument("names", nargs="*")
    p.add_argument("-o", "--output", default="", choices=["", "wide", "yaml", "json", "name"])
    p.add_argument("-A", "--all-namespaces", action="store_true")
    p.add_argument("-l", "--selector", default="", help="k=v[,k=v] (equality only)")


def _describe_args(p: argparse.ArgumentParser) -> None:
    _common(p)
    p.add_argument("kind")
    p.add_argument("names", nargs="*")


def _delete_args(p: argparse.ArgumentParser) -> None:
    _common(p)
    p.add_argument("kind", nargs="?")
    p.add_argument("names", nargs="*")
    p.add_argument("-f", "--filename", action="append", default=[])
    p.add_argument("--ignore-not-found", action="store_true")


def _session(args: argparse.Namespace,
             body: Callable[[SqliteResourceStore, Schemas], Awaitable[int]]) -> int:
    """Open the store and the schemas, run one verb, turn user errors into exit status 1."""
    try:
        schemas = load_schemas(args.crds)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1

    async def main() -> int:
        store = SqliteResourceStore(args.store or default_store_path(), schemas=schemas)
        try:
            return await body(store, schemas)
        finally:
            await store.close()

    try:
        return asyncio.run(main())
    except (CliError, StoreError) as exc:
        print(_message(exc), file=sys.stderr)
        return 1


def run_apply(args: argparse.Namespace) -> int:
    def body(store: SqliteResourceStore, schemas: Schemas) -> Awaitable[int]:
        return apply(store, schemas, read_manifests(args.filename), args.namespace, sys.stdout, sys.stderr)

    return _session(args, body)


def run_get(args: argparse.Namespace) -> int:
    selector = dict(kv.split("=", 1) for kv in args.selector.split(",") if "=" in kv)
    ns = None if args.all_namespaces else args.namespace

    def body(store: SqliteResourceStore, schemas: Schemas) -> Awaitable[int]:
        return get(store, schemas, args.kind, args.names, ns, args.output, selector, sys.stdout, sys.stderr)

    return _session(args, body)


def run_describe(args: argparse.Namespace) -> int:
    def body(store: SqliteResourceStore, schemas: Schemas) -> Awaitable[int]:
        return describe(store, schemas, args.kind, args.names, args.namespace, sys.stdout, sys.stderr)

    return _session(args, body)


def run_delete(args: argparse.Namespace) -> int:
    def body(store: SqliteResourceStore, schemas: Schemas) -> Awaitable[int]:
        targets: list[tuple[Crd, str, str]] = []
        if args.filename:
            for obj in read_manifests(args.filename):
                meta = obj.get("metadata") or {}
                targets.append((_crd_of(schemas, obj), meta.get("namespace") or args.namespace,
                                str(meta.get("name"))))
        elif args.kind and args.names:
            crds = _resolve(schemas, args.kind)
            if len(crds) != 1:
                raise CliError(f"error: {args.kind!r} names several kinds; name one")
            targets = [(crds[0], args.namespace, n) for n in args.names]
        else:
            raise CliError("error: give KIND NAME... or -f FILE")
        return delete(store, schemas, targets, sys.stdout, sys.stderr, args.ignore_not_found)

    return _session(args, body)


VERBS = (
    Verb("apply", "create or update resources from YAML (embedded store)", run_apply, _apply_args),
    Verb("get", "list resources with the CRDs' printer columns", run_get, _get_args),
    Verb("describe", "show one resource's spec, status, conditions and events", run_describe, _describe_args),
    Verb("delete", "delete resources by name or from YAML", run_delete, _delete_args),
)


def main(argv: Sequence[str] | None = None) -> int:
    return Cli("cloud-controller", VERBS).main(argv)


if __name__ == "__main__":
    sys.exit(main())
