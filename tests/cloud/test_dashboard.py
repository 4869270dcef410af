"""The Grafana dashboard is current and queries only metrics the code exports."""

from __future__ import annotations

import json
import re
import runpy
from pathlib import Path

from edge_agent.ops.metrics import AgentMetrics

ROOT = Path(__file__).resolve().parents[2]
GRAFANA = ROOT / "deploy" / "grafana"


def test_dashboard_json_is_generated_and_current() -> None:
    gen = runpy.run_path(str(GRAFANA / "generate.py"))
    assert json.loads((GRAFANA / "edgeloop-dashboard.json").read_text()) == gen["dashboard"]()


def test_dashboard_queries_exported_metrics() -> None:
    text = AgentMetrics(version="t").render().decode()
    agent = set(re.findall(r"^# TYPE (\S+) (\S+)", text, re.M))
    exported = set()
    for name, kind in agent:
        exported.add(name)
        if kind == "counter":
            exported.add(f"{name}_total")
        if kind == "histogram":
            exported.update({f"{name}_bucket", f"{name}_sum", f"{name}_count"})
    # The controller's metric names are spelled where its /metrics collector builds them.
    controller_src = (ROOT / "cloud_controller" / "http.py").read_text()
    dash = json.loads((GRAFANA / "edgeloop-dashboard.json").read_text())
    for panel in dash["panels"]:
        for target in panel["targets"]:
            for metric in re.findall(r"(edgeloop_[a-z_]+)", target["expr"]):
                if metric.startswith("edgeloop_agent_"):
                    assert metric in exported, metric
                else:
                    base = metric.removeprefix("edgeloop_controller_").removesuffix("_total")
                    assert f'"{base}"' in controller_src, metric
