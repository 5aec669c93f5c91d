"""Writes deploy/grafana/styletransfer.json, the Grafana dashboard, from the panel list below.

    .venv/bin/python deploy/grafana/dashboard.py

The JSON is committed; tests/integration/test_prometheus.py checks that it matches this script and
runs every query in it against a real Prometheus scraping the service.
"""

from __future__ import annotations

import json
from pathlib import Path

OUT = Path(__file__).with_name("styletransfer.json")
SEL = 'namespace=~"$namespace", pod=~"$pod"'
RATE = "$__rate_interval"

# (title, unit, panel type, [(legend, expr)])
PANELS: list[tuple[str, str, str, list[tuple[str, str]]]] = [
    (
        "Requests by method and code",
        "reqps",
        "timeseries",
        [
            (
                "{{grpc_method}} {{grpc_code}}",
                f'sum by (grpc_method, grpc_code) (rate(grpc_server_handled_total{{{SEL}, grpc_service="styletransfer.v1.StyleTransfer"}}[{RATE}]))',
            )
        ],
    ),
    (
        "Errors by method and code",
        "reqps",
        "timeseries",
        [
            (
                "{{grpc_method}} {{grpc_code}}",
                f'sum by (grpc_method, grpc_code) (rate(grpc_server_handled_total{{{SEL}, grpc_service="styletransfer.v1.StyleTransfer", grpc_code!="OK"}}[{RATE}]))',
            )
        ],
    ),
    (
        "Job outcomes",
        "ops",
        "timeseries",
        [
            (
                "{{outcome}}",
                f"sum by (outcome) (rate(styletransfer_jobs_completed_total{{{SEL}}}[{RATE}]))",
            )
        ],
    ),
    (
        "Queue depth and running jobs",
        "short",
        "timeseries",
        [
            ("queued {{pod}} {{device}}", f"sum by (pod, device) (styletransfer_jobs_queued{{{SEL}}})"),
            ("running {{pod}} {{device}}", f"sum by (pod, device) (styletransfer_jobs_running{{{SEL}}})"),
        ],
    ),
    (
        "Queue wait",
        "s",
        "timeseries",
        [
            (
                f"p{q}",
                f"histogram_quantile(0.{q}, sum by (le) (rate(styletransfer_job_queue_wait_seconds_bucket{{{SEL}}}[{RATE}])))",
            )
            for q in (50, 95, 99)
        ],
    ),
    (
        "Job duration",
        "s",
        "heatmap",
        [
            (
                "{{le}}",
                f"sum by (le) (increase(styletransfer_job_duration_seconds_bucket{{{SEL}}}[{RATE}]))",
            )
        ],
    ),
    (
        "Iterations per second",
        "short",
        "timeseries",
        [
            (
                "{{backend}} {{device}}",
                f"sum by (backend, device) (rate(styletransfer_iteration_duration_seconds_count{{{SEL}}}[{RATE}]))",
            )
        ],
    ),
    (
        "Time to first progress (p95)",
        "s",
        "timeseries",
        [
            (
                "p95",
                f"histogram_quantile(0.95, sum by (le) (rate(styletransfer_job_time_to_first_progress_seconds_bucket{{{SEL}}}[{RATE}])))",
            )
        ],
    ),
    (
        "Device memory",
        "bytes",
        "timeseries",
        [
            (
                "{{pod}} {{device}}",
                f"sum by (pod, device) (styletransfer_device_memory_bytes{{{SEL}}})",
            )
        ],
    ),
    (
        "Active streams",
        "short",
        "timeseries",
        [
            (
                "{{pod}}",
                f'sum by (pod) (grpc_server_started_total{{{SEL}, grpc_type="server_stream"}})'
                f' - sum by (pod) (grpc_server_handled_total{{{SEL}, grpc_type="server_stream"}})',
            )
        ],
    ),
    (
        "Error budget burn rate (1 = on budget)",
        "short",
        "timeseries",
        [
            ("jobs", 'styletransfer:job_failure_ratio:rate1h{namespace=~"$namespace"} / 0.01'),
            ("rpcs", 'styletransfer:grpc_server_error_ratio:rate1h{namespace=~"$namespace"} / 0.005'),
        ],
    ),
    (
        "Style targets from the cache, and previews skipped",
        "short",
        "timeseries",
        [
            (
                "{{pod}} cache hit ratio",
                f"sum by (pod) (rate(styletransfer_style_cache_hits_total{{{SEL}}}[{RATE}]))"
                f" / (sum by (pod) (rate(styletransfer_style_cache_hits_total{{{SEL}}}[{RATE}]))"
                f" + sum by (pod) (rate(styletransfer_style_cache_misses_total{{{SEL}}}[{RATE}])))",
            ),
            (
                "{{pod}} previews skipped/s",
                f"sum by (pod) (rate(styletransfer_previews_skipped_total{{{SEL}}}[{RATE}]))",
            ),
        ],
    ),
    (
        "Jobs per batch (batches of two or more)",
        "short",
        "timeseries",
        [
            (
                "{{pod}} {{device}} mean",
                f"sum by (pod, device) (rate(styletransfer_batch_size_sum{{{SEL}}}[{RATE}]))"
                f" / sum by (pod, device) (rate(styletransfer_batch_size_count{{{SEL}}}[{RATE}]))",
            ),
            (
                "{{pod}} {{device}} batches/s",
                f"sum by (pod, device) (rate(styletransfer_batch_size_count{{{SEL}}}[{RATE}]))",
            ),
        ],
    ),
    (
        "Out-of-memory failures",
        "short",
        "timeseries",
        [
            (
                "{{pod}} {{device}}",
                f'sum by (pod, device) (increase(styletransfer_job_errors_total{{{SEL}, reason="RESOURCE_EXHAUSTED"}}[{RATE}]))',
            )
        ],
    ),
]


def _panel(index: int, title: str, unit: str, kind: str, targets: list[tuple[str, str]]) -> dict[str, object]:
    panel: dict[str, object] = {
        "id": index + 1,
        "type": kind,
        "title": title,
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "gridPos": {"h": 8, "w": 12, "x": 12 * (index % 2), "y": 8 * (index // 2)},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "targets": [
            {
                "refId": chr(ord("A") + i),
                "expr": expr,
                "legendFormat": legend,
                **({"format": "heatmap"} if kind == "heatmap" else {}),
            }
            for i, (legend, expr) in enumerate(targets)
        ],
    }
    return panel


def dashboard() -> dict[str, object]:
    """The dashboard model."""
    variable = {
        "type": "query",
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "includeAll": True,
        "multi": True,
        "refresh": 2,
        "allValue": ".*",
    }
    return {
        "uid": "styletransfer",
        "title": "styletransfer",
        "tags": ["styletransfer", "grpc"],
        "timezone": "utc",
        "schemaVersion": 39,
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "templating": {
            "list": [
                {"name": "datasource", "type": "datasource", "query": "prometheus"},
                {
                    **variable,
                    "name": "namespace",
                    "query": "label_values(styletransfer_build_info, namespace)",
                },
                {
                    **variable,
                    "name": "pod",
                    "query": 'label_values(styletransfer_build_info{namespace=~"$namespace"}, pod)',
                },
            ]
        },
        "panels": [_panel(i, *spec) for i, spec in enumerate(PANELS)],
    }


def render() -> str:
    """The JSON text, as committed."""
    return json.dumps(dashboard(), indent=2) + "\n"


if __name__ == "__main__":
    OUT.write_text(render())
    print(f"wrote {OUT}")
