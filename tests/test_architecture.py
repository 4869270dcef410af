"""The shape of the code, checked: circles, module size, one name per meaning, the contract in one place.

Why a test and not review: import-linter's layers contracts catch an upward
arrow between rooms, but not a circle between two modules of one room, nor a
circle hidden by an import inside a function. grimp (import-linter's own
graph builder) sees every import statement, function-level ones included.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("edge_agent", "cloud_controller", "edgeloop_sim")
MAX_LINES = 600
# Entry-point and package-marker names are meant to repeat.
REPEATABLE = {"__init__", "__main__", "main", "conftest"}


@pytest.fixture(scope="module")
def graph() -> grimp.ImportGraph:
    return grimp.build_graph(*PACKAGES, include_external_packages=False)


def _cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    counter = 0
    for root in sorted(graph.modules):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.find_modules_directly_imported_by(root))))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            advanced = False
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.find_modules_directly_imported_by(child)))))
                    advanced = True
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            if advanced:
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                comp = []
                while True:
                    m = stack.pop()
                    on_stack.discard(m)
                    comp.append(m)
                    if m == node:
                        break
                if len(comp) > 1:
                    found.append(sorted(comp))
    return found


def test_no_import_circles_even_inside_functions(graph: grimp.ImportGraph) -> None:
    cycles = _cycles(graph)
    assert not cycles, "import circles (function-level imports count):\n" + "\n".join(
        " <-> ".join(c) for c in cycles
    )


def _sources(*tops: str) -> list[Path]:
    return sorted(p for top in tops for p in (ROOT / top).rglob("*.py") if ".venv" not in p.parts)


def test_no_module_over_600_lines() -> None:
    long = {
        str(p.relative_to(ROOT)): n
        for p in _sources(*PACKAGES, "tests", "bench")
        if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    }
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def test_one_name_one_meaning() -> None:
    names = Counter(p.stem for p in _sources(*PACKAGES) if p.stem not in REPEATABLE)
    dup = {n: [str(p.relative_to(ROOT)) for p in _sources(*PACKAGES) if p.stem == n]
           for n, c in names.items() if c > 1}
    assert not dup, f"module names used in more than one room: {dup}"


def test_one_class_name_one_meaning(graph: grimp.ImportGraph) -> None:
    pattern = re.compile(r"^class (\w+)\b", re.M)
    where: dict[str, list[str]] = {}
    for p in _sources(*PACKAGES):
        for name in pattern.findall(p.read_text(encoding="utf-8")):
            if not name.startswith("_"):
                where.setdefault(name, []).append(str(p.relative_to(ROOT)))
    dup = {n: ps for n, ps in where.items() if len(ps) > 1}
    assert not dup, f"public classes defined in more than one module: {dup}"


# Topic strings: only edge_agent/protocol/topics.py spells them.
_TOPIC_LITERAL = re.compile(r"""["'](?:edgeloop/v1/|devices/|\$share/)""")


def test_topics_are_built_in_one_module() -> None:
    owner = ROOT / "edge_agent" / "protocol" / "topics.py"
    offenders = []
    for p in _sources(*PACKAGES, "bench"):
        # The fuzz targets spell malformed and foreign topics on purpose: that is their job.
        if p == owner or any(part.startswith("fuzz") for part in p.relative_to(ROOT).parts):
            continue
        for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
            if _TOPIC_LITERAL.search(line) and not line.lstrip().startswith("#"):
                offenders.append(f"{p.relative_to(ROOT)}:{i}: {line.strip()}")
    assert not offenders, "topic strings outside protocol/topics.py:\n" + "\n".join(offenders)


def test_bench_and_sim_never_import_tests() -> None:
    pattern = re.compile(r"^\s*(from|import)\s+tests\b", re.M)
    offenders = [str(p.relative_to(ROOT)) for p in _sources("bench", "edgeloop_sim")
                 if pattern.search(p.read_text(encoding="utf-8"))]
    assert not offenders, f"bench/sim import tests/: {offenders}"
