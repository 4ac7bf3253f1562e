"""Prometheus metrics of the monitor, added to a server's own CollectorRegistry.

    kaon_drift_statistic{detector}    the latest statistic (p-value tests: -log10 p)
    kaon_drift_threshold{detector}    the statistic above which the detector breaches
    kaon_drift_alert{detector}        1 while the alert fires, else 0
    kaon_alerts_total{detector}       alerts fired
    kaon_outlier_score                normalised outlier score per input (1.0 = the reference's 99th percentile)
    kaon_outliers_total               inputs scored above 1.0
    kaon_monitor_inputs_total         inputs the detectors have seen
    kaon_monitor_dropped_total        requests not monitored because the observer queue was full
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

OUTLIER_BUCKETS = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 4.0, 8.0, 16.0)


class MonitorMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        self.statistic = Gauge("kaon_drift_statistic", "Latest drift statistic (p-value tests: -log10 p)",
                               ["detector"], registry=r)
        self.threshold = Gauge("kaon_drift_threshold", "Drift statistic above which a detector breaches",
                               ["detector"], registry=r)
        self.alert = Gauge("kaon_drift_alert", "1 while the detector's alert fires", ["detector"], registry=r)
        self.alerts = Counter("kaon_alerts", "Alerts fired", ["detector"], registry=r)
        self.outlier_score = Histogram("kaon_outlier_score", "Outlier score per input (1.0 = reference p99)",
                                       buckets=OUTLIER_BUCKETS, registry=r)
        self.outliers = Counter("kaon_outliers", "Inputs scored as outliers", registry=r)
        self.inputs = Counter("kaon_monitor_inputs", "Inputs seen by the drift and outlier detectors", registry=r)
        self.dropped = Counter("kaon_monitor_dropped", "Requests not monitored: the observer queue was full",
                               registry=r)
        self.logged = Counter("kaon_request_log_records", "Records written to the request log", registry=r)
