"""Generic mutation: a valid payload with fields replaced, removed, added, nested deeply or padded, and
raw bytes; the injection strings and weird numbers every target draws from."""

from __future__ import annotations

import copy
import json
import math
from typing import Any

from hypothesis import strategies as st

# --------------------------------------------------------------------------- generic mutation

INJECTION = [
    "a/b",
    "+",
    "#",
    "\u0000",
    "a\u0000b",
    "../..",
    "$SYS/broker",
    "devices/+/telemetry",
    "",
    " ",
    "x" * 65,
    "x" * 3000,
    "é",
    "\u202e",
    "\ud800",
    "😀" * 10,
    "${jndi:ldap://x}",
    "'; DROP TABLE x;--",
    "nodes/n2",
    "NaN",
    "Infinity",
    "1e999",
    "0x10",
]
# MQTT topics are valid UTF-8 (the broker and paho refuse anything else): no lone surrogates there.
TOPIC_INJECTION = [s for s in INJECTION if s.encode("utf-8", "surrogatepass").decode("utf-8", "ignore") == s]
WEIRD_NUMBERS: list[Any] = [
    0,
    -1,
    -1e-300,
    1e300,
    1e308,
    2**53 + 1,
    2**63,
    -(2**63) - 1,
    2**200,
    10**4000,
    0.1,
    -0.0,
    True,
    False,
    math.nan,
    math.inf,
    -math.inf,
]


def _leaf() -> st.SearchStrategy[Any]:
    return st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.floats(allow_nan=True, allow_infinity=True),
        st.sampled_from(WEIRD_NUMBERS),
        st.text(max_size=40),
        st.sampled_from(INJECTION),
    )


def _extend(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4))


def weird_value() -> st.SearchStrategy[Any]:
    return st.recursive(_leaf(), _extend, max_leaves=12)


_DEEP = "\u0001DEEP\u0001"


def _encode(obj: Any, *, ascii_: bool, deep: int) -> bytes:
    text = json.dumps(obj, allow_nan=True, ensure_ascii=ascii_)  # NaN/Infinity tokens on purpose
    if deep:
        text = text.replace(json.dumps(_DEEP, ensure_ascii=ascii_), "[" * deep + "]" * deep, 1)
    return text.encode("utf-8", "surrogatepass")  # a lone surrogate becomes invalid UTF-8


@st.composite
def mutated_json(draw: st.DrawFn, base: st.SearchStrategy[dict[str, Any]]) -> bytes:
    """A valid-ish document with zero or more fields replaced, removed, added or nested deeply."""
    doc: Any = copy.deepcopy(draw(base))  # st.just() hands out the same object every time
    # About half the cases stay valid, so the checks past the parser (state, counters, replies) run too.
    op_choice = st.sampled_from(["set", "del", "add", "deep", "wrap", "pad"])
    ops = draw(st.one_of(st.just([]), st.lists(op_choice, min_size=1, max_size=3)))
    deep = 0
    paths = _paths(doc)
    for op in ops:
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent, key = _resolve(doc, path)
        if parent is None:
            continue
        if op == "set":
            parent[key] = draw(weird_value())
        elif op == "del" and isinstance(parent, dict):
            parent.pop(key, None)
        elif op == "add" and isinstance(parent, dict):
            parent[draw(st.sampled_from(INJECTION))] = draw(weird_value())
        elif op == "deep":
            parent[key] = _DEEP
            deep = draw(st.sampled_from([10, 200, 1000, 5000, 100_000]))
        elif op == "wrap":
            parent[key] = [parent[key]]
        elif op == "pad":
            parent[key] = "p" * draw(st.sampled_from([1000, 70_000, 300_000]))
        paths = _paths(doc)
    if draw(st.integers(0, 19)) == 0:
        doc = draw(st.sampled_from([[doc], "string", 1, None, [], {}]))
    return _encode(doc, ascii_=draw(st.booleans()), deep=deep)


def _paths(doc: Any, prefix: tuple[Any, ...] = (), depth: int = 0) -> list[tuple[Any, ...]]:
    out: list[tuple[Any, ...]] = []
    if depth > 4:
        return out
    if isinstance(doc, dict):
        for k, v in doc.items():
            out.append((*prefix, k))
            out.extend(_paths(v, (*prefix, k), depth + 1))
    elif isinstance(doc, list):
        for i, v in enumerate(doc[:4]):
            out.append((*prefix, i))
            out.extend(_paths(v, (*prefix, i), depth + 1))
    return out


def _resolve(doc: Any, path: tuple[Any, ...]) -> tuple[Any, Any]:
    cur = doc
    for p in path[:-1]:
        try:
            cur = cur[p]
        except (KeyError, IndexError, TypeError):
            return None, None
    if isinstance(cur, dict | list):
        return cur, path[-1]
    return None, None


def raw_bytes() -> st.SearchStrategy[bytes]:
    return st.one_of(
        st.binary(max_size=512),
        st.sampled_from(
            [
                b"",
                b"null",
                b"[]",
                b"{}",
                b"NaN",
                b"-Infinity",
                b"1e999",
                b"\xff\xfe{",
                b'{"a":1',
                b"[" * 100_000 + b"]" * 100_000,
                b"9" * 5000,
                b'"\\ud800"',
                b"\x00" * 64,
                b'{"ts": 1e400}',
                b" " * 300_000,
            ]
        ),
    )


def payloads(base: st.SearchStrategy[dict[str, Any]]) -> st.SearchStrategy[bytes]:
    """Mostly structure-aware, some raw bytes."""
    return st.one_of(mutated_json(base), mutated_json(base), mutated_json(base), raw_bytes())
