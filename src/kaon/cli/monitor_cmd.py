"""`kaon monitor URL`: a live terminal view of a server, read from its /metrics.

    kaon monitor http://127.0.0.1:8000 --token $TOKEN      # refreshes every second until Ctrl-C
    kaon monitor http://127.0.0.1:8000 --once              # one snapshot (two reads, a second apart)

Request rate, error share and latency percentiles come from the differences between two reads of
the Prometheus counters and histograms; drift, alerts and outliers from the monitor's gauges.
The lead wires it with `from kaon.cli import monitor_cmd` in `_register_commands`.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from typing import Annotated, Any

import typer
from rich.console import Group
from rich.markup import escape
from rich.table import Table

from kaon.cli.app import app, handles_errors, make_console
from kaon.errors import ConfigError, UnauthorizedError


@dataclass
class Sample:
    """The counters and gauges of one /metrics read."""

    time_s: float
    requests: dict[tuple[str, str], float] = field(default_factory=dict)  # (route, status) -> count
    latency: dict[str, list[tuple[float, float]]] = field(default_factory=dict)  # route -> [(le, cumulative)]
    in_flight: float = 0.0
    queue_depth: float = 0.0
    drift_statistic: dict[str, float] = field(default_factory=dict)
    drift_threshold: dict[str, float] = field(default_factory=dict)
    drift_alert: dict[str, float] = field(default_factory=dict)
    alerts: dict[str, float] = field(default_factory=dict)
    outliers: float = 0.0
    monitored: float = 0.0
    dropped: float = 0.0


@dataclass
class View:
    requests_per_s: float
    error_share: float  # 4xx and 5xx among the requests in the interval
    p50_ms: float
    p99_ms: float
    in_flight: float
    queue_depth: float
    outlier_share: float | None  # among the inputs monitored in the interval; None: none were
    outlier_share_total: float  # since the server started
    monitored: float
    dropped: float
    drift: list[tuple[str, float, float, bool, float]]  # detector, statistic, threshold, firing, alerts fired


def parse_metrics(text: str, time_s: float) -> Sample:
    from prometheus_client.parser import text_string_to_metric_families

    sample = Sample(time_s)
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels, value = s.labels, float(s.value)
            if s.name == "kaon_requests_total":
                sample.requests[(labels.get("route", ""), labels.get("status", ""))] = value
            elif s.name == "kaon_request_latency_seconds_bucket":
                sample.latency.setdefault(labels.get("route", ""), []).append((float(labels["le"]), value))
            elif s.name == "kaon_in_flight_requests":
                sample.in_flight += value  # per worker with --workers N
            elif s.name == "kaon_queue_depth":
                sample.queue_depth += value
            elif s.name == "kaon_drift_statistic":
                sample.drift_statistic[labels["detector"]] = value
            elif s.name == "kaon_drift_threshold":
                sample.drift_threshold[labels["detector"]] = value
            elif s.name == "kaon_drift_alert":
                sample.drift_alert[labels["detector"]] = value
            elif s.name == "kaon_alerts_total":
                sample.alerts[labels["detector"]] = value
            elif s.name == "kaon_outliers_total":
                sample.outliers = value
            elif s.name == "kaon_monitor_inputs_total":
                sample.monitored = value
            elif s.name == "kaon_monitor_dropped_total":
                sample.dropped = value
    return sample


def _quantile(buckets: list[tuple[float, float]], q: float) -> float:
    """The q-quantile from cumulative histogram buckets, interpolated linearly inside a bucket."""
    buckets = sorted(buckets)
    total = buckets[-1][1] if buckets else 0.0
    if total <= 0:
        return math.nan
    rank, lower_le, lower_count = q * total, 0.0, 0.0
    for le, count in buckets:
        if count >= rank:
            if math.isinf(le):
                return lower_le
            width = count - lower_count
            return lower_le + (le - lower_le) * ((rank - lower_count) / width if width > 0 else 1.0)
        lower_le, lower_count = le, count
    return lower_le


def summarize(previous: Sample | None, current: Sample) -> View:
    """What changed between two reads (or, with no previous read, everything since the server started)."""
    base = previous or Sample(current.time_s - 1.0)
    seconds = max(current.time_s - base.time_s, 1e-9)
    served = {k: v - base.requests.get(k, 0.0) for k, v in current.requests.items() if not k[0].startswith("/metrics")}
    total = sum(served.values())
    errors = sum(v for (_, status), v in served.items() if status[:1] in ("4", "5"))
    merged: dict[float, float] = {}
    for route, buckets in current.latency.items():
        if route == "/metrics":
            continue
        before = dict(base.latency.get(route, []))
        for le, count in buckets:
            merged[le] = merged.get(le, 0.0) + count - before.get(le, 0.0)
    points = sorted(merged.items())
    monitored = current.monitored - base.monitored
    detectors = sorted(set(current.drift_threshold) | set(current.drift_statistic))
    return View(
        requests_per_s=total / seconds, error_share=errors / total if total else 0.0,
        p50_ms=_quantile(points, 0.5) * 1000, p99_ms=_quantile(points, 0.99) * 1000,
        in_flight=max(0.0, current.in_flight - 1), queue_depth=current.queue_depth,  # less this read of /metrics
        outlier_share=(current.outliers - base.outliers) / monitored if monitored > 0 else None,
        outlier_share_total=current.outliers / current.monitored if current.monitored > 0 else 0.0,
        monitored=current.monitored, dropped=current.dropped,
        drift=[(d, current.drift_statistic.get(d, math.nan), current.drift_threshold.get(d, math.nan),
                current.drift_alert.get(d, 0.0) >= 1.0, current.alerts.get(d, 0.0)) for d in detectors],
    )


def render(view: View, url: str) -> Any:
    traffic = Table(title=f"kaon monitor  {escape(url)}", show_header=True, expand=False)
    for column in ("requests/s", "errors", "p50 ms", "p99 ms", "in flight", "queued"):
        traffic.add_column(column, justify="right")
    traffic.add_row(f"{view.requests_per_s:,.1f}", f"{view.error_share:.1%}", _ms(view.p50_ms), _ms(view.p99_ms),
                    f"{view.in_flight:g}", f"{view.queue_depth:g}")
    if not view.drift:
        return Group(traffic, "drift: off (no reference registered with this model version)")
    drift = Table(title="drift and outliers", show_header=True)
    for column in ("detector", "statistic", "threshold", "state", "alerts"):
        drift.add_column(column, justify="right" if column != "detector" else "left")
    for name, statistic, threshold, firing, fired in view.drift:
        state = "[bold red]ALERT[/]" if firing else "[green]ok[/]"
        drift.add_row(name, f"{statistic:.4g}", f"{threshold:.4g}", state, f"{fired:g}")
    recent = (f"outliers {view.outlier_share:.1%} of recent inputs" if view.outlier_share is not None
              else "no inputs monitored since the last read")
    summary = (f"{recent}; {view.outlier_share_total:.1%} of the {view.monitored:,.0f} inputs monitored since the "
               f"server started" + (f"; {view.dropped:,.0f} requests not monitored (observer queue full)"
                                    if view.dropped else ""))
    return Group(traffic, drift, summary)


def _ms(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.2f}"


def fetch(client: Any, url: str) -> Sample:
    import httpx

    try:
        answer = client.get(url.rstrip("/") + "/metrics")
    except httpx.HTTPError as exc:
        raise ConfigError(f"cannot read {url}/metrics: {exc}. Check the URL and that the server runs.") from exc
    if answer.status_code in (401, 403):
        raise UnauthorizedError(
            f"{url}/metrics answered {answer.status_code}: pass a token with the 'metrics' or 'admin' scope "
            f"(--token or KAON_TOKEN)."
        )
    if answer.status_code != 200:
        raise ConfigError(f"{url}/metrics answered {answer.status_code}; expected 200 with Prometheus text.")
    return parse_metrics(answer.text, time.monotonic())


@app.command()
@handles_errors
def monitor(
    url: Annotated[str, typer.Argument(help="The server, e.g. http://127.0.0.1:8000")],
    token: Annotated[str | None, typer.Option("--token", help="API token (default: $KAON_TOKEN).")] = None,
    interval_s: Annotated[float, typer.Option("--interval-s", min=0.2, help="Seconds between reads.")] = 1.0,
    once: Annotated[bool, typer.Option("--once", help="Print one snapshot and exit.")] = False,
    insecure: Annotated[bool, typer.Option("--insecure", help="Do not verify the TLS certificate.")] = False,
) -> None:
    """A live view of a server: request rate, latency, errors, drift, alerts and outliers."""
    import httpx
    from rich.live import Live

    token = token or os.environ.get("KAON_TOKEN")
    headers = {"authorization": f"Bearer {token}"} if token else {}
    console = make_console()
    with httpx.Client(headers=headers, timeout=5.0, verify=not insecure) as client:
        previous = fetch(client, url)
        if once:
            time.sleep(interval_s)
            console.print(render(summarize(previous, fetch(client, url)), url))
            return
        with Live(render(summarize(None, previous), url), console=console, refresh_per_second=4) as live:
            try:
                while True:
                    time.sleep(interval_s)
                    current = fetch(client, url)
                    live.update(render(summarize(previous, current), url))
                    previous = current
            except KeyboardInterrupt:
                return
