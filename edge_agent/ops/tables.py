"""One way to lay out a table of text, for every command that prints one.

``cloud-controller totals``, ``cloud-controller get`` (kubectl's layout) and the
benchmark summaries print left-aligned columns; the configuration references and
the benchmark reports write Markdown tables. A library such as tabulate would do both, but
the layouts needed here are two short functions, and the lean edge install
(which carries this module) should not grow a dependency for them.
"""

from __future__ import annotations

from collections.abc import Sequence


def text_table(header: Sequence[object], rows: Sequence[Sequence[object]], gap: int = 2) -> str:
    """Left-aligned columns ``gap`` spaces apart, no trailing blanks (kubectl uses gap=3)."""
    table = [[str(c) for c in header], *([str(c) for c in r] for r in rows)]
    widths = [max(len(x) for x in col) for col in zip(*table, strict=True)]
    sep = " " * gap
    return "\n".join(sep.join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in table)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub Markdown table; cells are written as ``str()`` gives them (escape ``|`` in them first)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)
