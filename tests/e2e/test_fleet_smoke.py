"""Smoke test of the fleet benchmark: 100 simulated nodes, real mosquitto, real controller process.

Slow (about a minute on 2 cores): it starts the whole harness. It checks that
the harness works end to end and writes its block, not the 1,000-node targets.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_bench_fleet_quick_writes_a_sane_block(tmp_path: Path) -> None:
    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Benchmarks\n\n<!-- bench:other:start -->\nkeep me\n<!-- bench:other:end -->\n")
    raw = tmp_path / "fleet.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "bench" / "bench_fleet.py"),
            "--quick",
            "--doc",
            str(doc),
            "--json",
            str(raw),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    text = doc.read_text()
    assert "keep me" in text  # another bench's block is untouched
    block = re.search(r"<!-- bench:fleet-quick:start -->(.*)<!-- bench:fleet-quick:end -->", text, re.S)
    assert block is not None
    for needle in (
        "summaries ingested/s",
        "rollout",
        "controller RSS",
        "status writes/s",
        "Machine:",
        "Command:",
    ):
        assert needle in block.group(1)

    r = json.loads(raw.read_text())
    assert r["nodes"] == 100
    live = r["live"]
    assert live["stored_per_s"] > 0.8 * live["offered_per_s"] > 0  # the controller keeps up with 500/s
    assert 0 < live["p50_ms"] <= live["p99_ms"] < 5000
    assert r["capacity"]["stored"] == r["capacity"]["backlog"]
    ro = r["rollout"]
    assert ro["phase"] == "Succeeded" and ro["updated"] == ro["ready"] == ro["total"] == 100
    assert ro["nodes_on_v2"] == 100 and ro["fetch_failures"] == 0 and not ro["verify_errors"]
    assert 10 < r["rss_mb_end"] < 300
    assert r["writes"]["max_5s_per_s"] <= r["writes"]["bound"] * 1.05
    assert r["rejected"] == 0 and not r["errors"]
