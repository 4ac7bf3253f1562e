"""`kaon monitor`'s arithmetic: two reads of a real server's metrics registry become rates and percentiles."""

from __future__ import annotations

import math

import pytest
from prometheus_client import generate_latest

from kaon.cli.monitor_cmd import parse_metrics, render, summarize
from kaon.monitoring import MonitorMetrics
from kaon.serving.metrics import ServerMetrics


def test_two_reads_give_rate_errors_latency_and_drift() -> None:
    server = ServerMetrics()
    monitor = MonitorMetrics(server.registry)
    monitor.threshold.labels("embedding_mmd").set(0.01)
    monitor.statistic.labels("embedding_mmd").set(0.002)
    monitor.alert.labels("embedding_mmd").set(0)
    for _ in range(100):
        server.observe("/predict", 200, 0.004)
    first = parse_metrics(generate_latest(server.registry).decode(), time_s=10.0)
    for _ in range(90):
        server.observe("/predict", 200, 0.004)
    for _ in range(10):
        server.observe("/predict", 503, 0.2)
    server.observe("/metrics", 200, 0.001)  # scrapes are not traffic
    monitor.statistic.labels("embedding_mmd").set(0.03)
    monitor.alert.labels("embedding_mmd").set(1)
    monitor.alerts.labels("embedding_mmd").inc()
    monitor.inputs.inc(50)
    monitor.outliers.inc(5)
    second = parse_metrics(generate_latest(server.registry).decode(), time_s=12.0)

    view = summarize(first, second)
    assert view.requests_per_s == pytest.approx(50.0)
    assert view.error_share == pytest.approx(0.1)
    assert 2.5 <= view.p50_ms <= 5.0  # inside the (2.5 ms, 5 ms] bucket
    assert 100 <= view.p99_ms <= 250
    assert view.outlier_share == pytest.approx(0.1)
    assert view.drift == [("embedding_mmd", 0.03, 0.01, True, 1.0)]
    since_start = summarize(None, first)
    assert since_start.error_share == 0.0 and not math.isnan(since_start.p50_ms)
    # a quiet interval after drifted traffic: not "outliers 0.0%" (kaon monitor --once showed that while
    # the outlier_rate detector fired), but none recent and the share since the server started
    quiet = summarize(second, parse_metrics(generate_latest(server.registry).decode(), time_s=13.0))
    assert quiet.outlier_share is None and quiet.outlier_share_total == pytest.approx(0.1)
    from rich.console import Console

    console = Console(record=True, width=200)
    console.print(render(quiet, "http://127.0.0.1:8000"))
    assert "no inputs monitored since the last read; 10.0% of the 50 inputs" in console.export_text()


def test_render_says_when_drift_is_off() -> None:
    server = ServerMetrics()
    server.observe("/predict", 200, 0.01)
    view = summarize(None, parse_metrics(generate_latest(server.registry).decode(), 1.0))
    from rich.console import Console

    console = Console(record=True, width=120)
    console.print(render(view, "http://127.0.0.1:8000"))
    assert "drift: off" in console.export_text()
