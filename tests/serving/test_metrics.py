"""A server's request metrics in one process are plain counts written out at each scrape: the same series as
prometheus_client's own Counter and Histogram give for the same requests."""

from __future__ import annotations

import random

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    enable_created_metrics,
    generate_latest,
)
from prometheus_client.parser import text_string_to_metric_families

from kaon.serving.metrics import LATENCY, LATENCY_BUCKETS_S, REQUESTS, ServerMetrics


def _samples(text: bytes, names: tuple[str, ...]) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text.decode())
            if family.name.removesuffix("_created") in names for s in family.samples}


def test_request_counts_write_the_series_prometheus_client_would():
    registry = CollectorRegistry()
    requests = Counter(*REQUESTS, ["route", "status"], registry=registry)
    latency = Histogram(*LATENCY, ["route"], buckets=LATENCY_BUCKETS_S, registry=registry)
    metrics = ServerMetrics()
    rng = random.Random(0)
    # every bucket's bound exactly (a bound is inclusive), values between them, past the last one, and zero
    values = [*LATENCY_BUCKETS_S, 0.0, 11.0, *(rng.uniform(0, 3) ** 3 for _ in range(300))]
    for i, seconds in enumerate(values):
        route, status = ("/predict", "/v2/models/m/infer")[i % 2], (200, 200, 422, 503)[i % 4]
        requests.labels(route, str(status)).inc()
        latency.labels(route).observe(seconds)
        metrics.observe(route, status, seconds)
    names = ("kaon_requests", "kaon_request_latency_seconds")
    expected, got = _samples(generate_latest(registry), names), _samples(metrics.render(), names)
    # 4 counters and their created times; per route: buckets, +Inf, count, sum, created
    assert len(expected) == 4 * 2 + 2 * (len(LATENCY_BUCKETS_S) + 4)
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        if key[0].endswith("_created"):  # when the series was first observed: each its own, within this test
            assert abs(got[key] - value) < 5, (key, got[key], value)
        else:
            assert abs(got[key] - value) <= 1e-9 * max(1.0, abs(value)), (key, got[key], value)
    disable_created_metrics()
    try:
        assert _samples(metrics.render(), names).keys() == _samples(generate_latest(registry), names).keys()
        assert not [key for key in _samples(metrics.render(), names) if key[0].endswith("_created")]
    finally:
        enable_created_metrics()
