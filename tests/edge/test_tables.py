"""The one table formatter every command and report uses."""

from __future__ import annotations

from edge_agent.ops.tables import markdown_table, text_table


def test_text_table_aligns_left_without_trailing_blanks() -> None:
    out = text_table(["NAME", "AGE"], [["n1", 5], ["node-long", ""]], gap=3)
    assert out.splitlines() == ["NAME        AGE", "n1          5", "node-long"]
    assert text_table(["node"], []) == "node"


def test_markdown_table() -> None:
    assert markdown_table(["a", "b"], [[1, "x"]]).splitlines() == ["| a | b |", "|---|---|", "| 1 | x |"]
