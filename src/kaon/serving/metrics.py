"""Prometheus metrics of one server: its own registry, so two apps in one process never mix.

With `kaon serve --workers N` every worker process writes its values to files in the folder named by
PROMETHEUS_MULTIPROC_DIR (prometheus_client's multiprocess mode), and `/metrics`, whichever worker answers
it, reports the sum over all of them: counters and histograms add up, gauges are summed over live workers.
"""

from __future__ import annotations

import bisect
import os
import threading
import time
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import metrics as prometheus_metrics
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

LATENCY_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
# How often a worker copies its function-backed gauges (queue depth, in flight) into the shared files.
MULTIPROCESS_REFRESH_S = 0.5


REQUESTS = ("kaon_requests", "HTTP requests by route and status")
LATENCY = ("kaon_request_latency_seconds", "Request latency by route")


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


class ServerMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.multiprocess = multiprocess_dir() is not None
        self.registry = CollectorRegistry(auto_describe=True)
        live = {"multiprocess_mode": "livesum"} if self.multiprocess else {}
        if self.multiprocess:  # every worker's values in the shared files, current at each scrape
            self.requests = Counter(REQUESTS[0], REQUESTS[1], ["route", "status"], registry=self.registry)
            self.latency = Histogram(LATENCY[0], LATENCY[1], ["route"], buckets=LATENCY_BUCKETS_S,
                                     registry=self.registry)
        else:
            self._counts = RequestCounts()
            self.registry.register(self._counts)
        self.batch_size = Histogram("kaon_batch_size", "Realised batch size per forward pass", ["endpoint"],
                                    buckets=BATCH_BUCKETS, registry=self.registry)
        self.queue_depth = Gauge("kaon_queue_depth", "Items waiting in a batcher queue", ["endpoint"],
                                 registry=self.registry, **live)  # type: ignore[arg-type]
        self.in_flight = Gauge("kaon_in_flight_requests", "Requests being served now", registry=self.registry,
                               **live)  # type: ignore[arg-type]
        self._children: dict[tuple[str, int], tuple[object, object]] = {}
        self._functions: list[tuple[Gauge, Callable[[], float]]] = []
        self._refresher: threading.Thread | None = None

    def gauge_function(self, gauge: Gauge, read: Callable[[], float]) -> None:
        """`gauge` reports `read()`: when scraped in one process, every MULTIPROCESS_REFRESH_S across workers
        (a function is not shared between processes: its value is copied into the shared files)."""
        if not self.multiprocess:
            gauge.set_function(read)
            return
        self._functions.append((gauge, read))
        if self._refresher is None:
            self._refresher = threading.Thread(target=self._refresh, name="kaon-metrics", daemon=True)
            self._refresher.start()

    def _refresh(self) -> None:  # a daemon thread: it ends with the worker process
        while True:
            time.sleep(MULTIPROCESS_REFRESH_S)
            for gauge, read in list(self._functions):
                gauge.set(read())

    def observe(self, route: str, status: int, seconds: float) -> None:
        """One answered request. In one process: two counts in plain Python (~0.4 us; prometheus_client's
        Counter and Histogram, each behind its lock, cost ~2 us a request, 5% of a small model's CPU at c64)."""
        if not self.multiprocess:
            self._counts.observe(route, status, seconds)
            return
        key = (route, status)
        children = self._children.get(key)
        if children is None:  # label lookups cost more than the increment itself; cache them
            children = (self.requests.labels(route, str(status)), self.latency.labels(route))
            self._children[key] = children
        children[0].inc()  # type: ignore[attr-defined]
        children[1].observe(seconds)  # type: ignore[attr-defined]

    def render(self) -> bytes:
        if not self.multiprocess:
            return generate_latest(self.registry)
        from prometheus_client.multiprocess import MultiProcessCollector

        for gauge, read in list(self._functions):  # this worker's own values are fresh
            gauge.set(read())
        combined = CollectorRegistry()
        MultiProcessCollector(combined)
        return generate_latest(combined)


class RequestCounts(Collector):
    """Requests by route and status, and their latency histogram by route, kept in plain Python and written
    out by prometheus_client at each scrape: the series a Counter and a Histogram would give, `_created` (the
    time a series was first observed) included unless prometheus_client's created series are off.
    Updated on the event loop only; a scrape from another thread reads counts at most one request old."""

    def __init__(self) -> None:
        self.requests: dict[tuple[str, int], list[float]] = {}  # per route and status: the count, then created
        self.latency: dict[str, list[float]] = {}  # per route: a count per bucket (+Inf last), the sum, created

    def observe(self, route: str, status: int, seconds: float) -> None:
        count = self.requests.get((route, status))
        if count is None:
            count = self.requests[(route, status)] = [0, time.time()]
        count[0] += 1
        counts = self.latency.get(route)
        if counts is None:
            counts = self.latency[route] = [0.0] * (len(LATENCY_BUCKETS_S) + 2) + [time.time()]
        counts[bisect.bisect_left(LATENCY_BUCKETS_S, seconds)] += 1  # its bucket: the first bound >= seconds
        counts[-2] += seconds

    def collect(self) -> Iterator[Metric]:
        created = getattr(prometheus_metrics, "_use_created", True)  # disable_created_metrics() turns it off
        requests = CounterMetricFamily(REQUESTS[0], REQUESTS[1], labels=["route", "status"])
        for (route, status), (count, first) in list(self.requests.items()):
            requests.add_metric([route, str(status)], count, created=first if created else None)
        latency = HistogramMetricFamily(LATENCY[0], LATENCY[1], labels=["route"])
        bounds = [*map(floatToGoString, LATENCY_BUCKETS_S), "+Inf"]
        for route, kept in list(self.latency.items()):
            *per_bucket, total, first = list(kept)  # a copy: the loop may add to it meanwhile (a scrape from a thread)
            cumulative, buckets = 0.0, []
            for bound, in_bucket in zip(bounds, per_bucket, strict=True):
                cumulative += in_bucket
                buckets.append((bound, cumulative))
            latency.add_metric([route], buckets, total)
            if created:  # HistogramMetricFamily.add_metric takes no created time: its sample, as Histogram writes it
                latency.samples.append(Sample(f"{LATENCY[0]}_created", {"route": route}, first))
        yield requests
        yield latency

    def describe(self) -> Iterator[Metric]:  # the names, for the registry's duplicate check
        yield CounterMetricFamily(REQUESTS[0], REQUESTS[1], labels=["route", "status"])
        yield HistogramMetricFamily(LATENCY[0], LATENCY[1], labels=["route"])
