"""Generate the Grafana dashboard for EdgeLoop's Prometheus metrics (agent and controller).

Run ``python deploy/grafana/generate.py > deploy/grafana/edgeloop-dashboard.json``;
``tests/edge/test_dashboard.py`` checks the JSON is current and that every metric it
queries is one the code exports.
"""

from __future__ import annotations

import json

PANELS: list[tuple[str, str, list[tuple[str, str]]]] = [
    # (title, unit, [(promql, legend)])
    (
        "Agent: readings in / s",
        "ops",
        [("sum by (instance) (rate(edgeloop_agent_readings_in_total[5m]))", "{{instance}}")],
    ),
    (
        "Agent: uplink reduction (raw JSON bytes / bytes sent)",
        "none",
        [
            (
                "sum(rate(edgeloop_agent_raw_equivalent_bytes_total[15m])) / "
                "sum(rate(edgeloop_agent_uplink_bytes_total[15m]))",
                "reduction",
            )
        ],
    ),
    (
        "Agent: rejected inbound messages / s by reason",
        "ops",
        [("sum by (reason) (rate(edgeloop_agent_rejected_total[5m]))", "{{reason}}")],
    ),
    (
        "Agent: outbox rows and oldest age",
        "short",
        [
            ("sum by (instance) (edgeloop_agent_outbox_rows)", "rows {{instance}}"),
            ("max by (instance) (edgeloop_agent_outbox_oldest_age_seconds)", "oldest s {{instance}}"),
        ],
    ),
    (
        "Agent: outbox drops / s by reason",
        "ops",
        [("sum by (reason) (rate(edgeloop_agent_outbox_dropped_total[5m]))", "{{reason}}")],
    ),
    (
        "Agent: uplink published vs acknowledged / s",
        "ops",
        [
            ("sum(rate(edgeloop_agent_uplink_published_total[5m]))", "published"),
            ("sum(rate(edgeloop_agent_uplink_acked_total[5m]))", "acked"),
        ],
    ),
    (
        "Agent: chat answers / s by source",
        "ops",
        [("sum by (source) (rate(edgeloop_agent_chat_messages_total[5m]))", "{{source}}")],
    ),
    (
        "Agent: escalation rate",
        "percentunit",
        [
            (
                'sum(rate(edgeloop_agent_escalations_total{outcome="escalated"}[15m])) / '
                "sum(rate(edgeloop_agent_chat_messages_total[15m]))",
                "escalated / utterances",
            )
        ],
    ),
    (
        "Agent: inference latency p50 / p99",
        "s",
        [
            (
                "histogram_quantile(0.5, sum by (le, model) "
                "(rate(edgeloop_agent_inference_seconds_bucket[5m])))",
                "p50 {{model}}",
            ),
            (
                "histogram_quantile(0.99, sum by (le, model) "
                "(rate(edgeloop_agent_inference_seconds_bucket[5m])))",
                "p99 {{model}}",
            ),
        ],
    ),
    (
        "Agent: MQTT connected",
        "none",
        [("min by (instance) (edgeloop_agent_mqtt_connected)", "{{instance}}")],
    ),
    (
        # Counted whether or not a hard example is sent: the sensor model's rate, not the cap's.
        "Agent: sensor escalation rate",
        "percentunit",
        [
            (
                "sum(rate(edgeloop_agent_sensor_uncertain_total[15m])) / "
                "sum(rate(edgeloop_agent_sensor_windows_scored_total[15m]))",
                "uncertain / windows scored",
            )
        ],
    ),
    (
        # One series for both tasks: the agent counts chat and sensor hard examples together.
        "Agent: hard examples / s",
        "ops",
        [
            ("sum(rate(edgeloop_agent_hard_examples_total[5m]))", "enqueued (chat + sensor)"),
            ("sum(rate(edgeloop_agent_sensor_hard_examples_dropped_total[5m]))", "sensor dropped by the cap"),
        ],
    ),
    (
        "Controller: summaries stored / s",
        "ops",
        [
            ("sum(rate(edgeloop_controller_ingest_summaries_stored_total[5m]))", "stored"),
            ("sum(rate(edgeloop_controller_ingest_duplicates_total[5m]))", "duplicates dropped"),
        ],
    ),
    (
        "Controller: ingest rejects / s",
        "ops",
        [("sum(rate(edgeloop_controller_ingest_rejected_total[5m]))", "rejected")],
    ),
    (
        "Controller: nodes registered",
        "short",
        [("max(edgeloop_controller_nodes_registered_total)", "registered")],
    ),
    (
        # Labelled / unlabelled count sensor examples only: chat ones arrive with the teacher's answer.
        "Controller: hard examples stored / labelled / unlabelled / s",
        "ops",
        [
            ("sum(rate(edgeloop_controller_ingest_hard_examples_total[5m]))", "stored"),
            ("sum(rate(edgeloop_controller_ingest_hard_examples_labelled_total[5m]))", "sensor labelled"),
            ("sum(rate(edgeloop_controller_ingest_hard_examples_unlabelled_total[5m]))", "sensor unlabelled"),
        ],
    ),
]


def dashboard() -> dict[str, object]:
    panels = []
    for i, (title, unit, targets) in enumerate(PANELS):
        panels.append(
            {
                "id": i + 1,
                "type": "timeseries",
                "title": title,
                "datasource": {"type": "prometheus", "uid": "${datasource}"},
                "gridPos": {"h": 8, "w": 12, "x": 12 * (i % 2), "y": 8 * (i // 2)},
                "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
                "targets": [
                    {"refId": chr(65 + j), "expr": expr, "legendFormat": legend}
                    for j, (expr, legend) in enumerate(targets)
                ],
            }
        )
    return {
        "title": "EdgeLoop",
        "uid": "edgeloop-overview",
        "schemaVersion": 39,
        "version": 1,
        "tags": ["edgeloop"],
        "time": {"from": "now-6h", "to": "now"},
        "refresh": "30s",
        "templating": {
            "list": [
                {"name": "datasource", "type": "datasource", "query": "prometheus", "label": "Prometheus"}
            ]
        },
        "panels": panels,
    }


if __name__ == "__main__":
    print(json.dumps(dashboard(), indent=2))
