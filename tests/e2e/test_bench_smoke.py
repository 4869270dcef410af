"""The agent benchmark runs end to end in quick mode and writes only its own block.

It runs against a copy of docs/benchmarks.md (``--doc``) so a test never
rewrites the committed numbers; the other blocks of the copy must come out
byte for byte unchanged.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "bench"))

from _report import write_block  # noqa: E402

START, END = "<!-- bench:agent:start -->", "<!-- bench:agent:end -->"


def test_write_block_replaces_only_its_own_block(tmp_path: Path) -> None:
    doc = tmp_path / "benchmarks.md"
    write_block("one", "first", doc)  # creates file and markers
    write_block("two", "second", doc)
    write_block("one", "first, again", doc)
    text = doc.read_text()
    assert text.startswith("# Benchmarks\n")
    assert "<!-- bench:one:start -->\nfirst, again\n<!-- bench:one:end -->" in text
    assert "<!-- bench:two:start -->\nsecond\n<!-- bench:two:end -->" in text
    assert text.count("bench:one:start") == 1 and "first\n" not in text


def test_write_block_refuses_a_dangling_start_marker(tmp_path: Path) -> None:
    doc = tmp_path / "benchmarks.md"
    doc.write_text("# B\n<!-- bench:x:start -->\nold\n<!-- bench:y:start -->\n<!-- bench:y:end -->\n")
    with pytest.raises(ValueError, match="without"):
        write_block("x", "new", doc)


@pytest.mark.slow
def test_bench_agent_quick_writes_its_block(tmp_path: Path) -> None:
    doc = tmp_path / "benchmarks.md"
    original = (
        (REPO / "docs" / "benchmarks.md").read_text() if (REPO / "docs" / "benchmarks.md").exists() else ""
    )
    other = "<!-- bench:other:start -->\nkeep me\n<!-- bench:other:end -->\n"
    doc.write_text(original + "\n" + other)
    before = doc.read_text()
    p = subprocess.run(
        [sys.executable, str(REPO / "bench" / "bench_agent.py"), "--quick", "--doc", str(doc)],
        capture_output=True,
        text=True,
        timeout=110,
        cwd=REPO,
    )
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    text = doc.read_text()
    assert text.count(START) == 1 and text.count(END) == 1
    block = text[text.index(START) : text.index(END)]
    for row in ("Single-reading msgs", "Batched msgs", "Uplink bytes, SKAB", "Steady RSS"):
        assert row in block, block
    assert "Machine:" in block and "Command:" in block and "--quick" in block
    # Everything outside our block is untouched.
    outside = text[: text.index(START)] + text[text.index(END) + len(END) :]
    if START in before:
        before = before[: before.index(START)] + before[before.index(END) + len(END) :]
    assert outside.strip() == before.strip()
    assert "keep me" in outside
