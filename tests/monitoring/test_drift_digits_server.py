"""The proof with a real shift: `kaon serve digits@1` (its reference registered with it) watches live traffic.

Clean held-out digits raise no alert; inverted, rotated and noisy digits do, within a few hundred inputs;
the alert shows as a log line, a Prometheus gauge and in `kaon monitor --once`; a request can ask for
its outlier score.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.monitoring.conftest import shifts
from tests.servers import Server

BATCH = 4  # inputs per request


@pytest.fixture(scope="module")
def server(digits_registry: Path) -> Iterator[Server]:
    log = digits_registry / "requests.jsonl"
    # every request monitored and logged (the per-second caps are for busy servers; tested on their own)
    server = Server(["serve", "digits@1", "--request-log", str(log), "--drift-window", "200",
                     "--monitor-max-per-s", "100000", "--request-log-max-per-s", "100000"],
                    env={"KAON_HOME": str(digits_registry)}).wait_ready()
    yield server
    server.stop()


def metric(client: httpx.Client, name: str, **labels: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(client.get("/metrics").text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return float("nan")


def send(client: httpx.Client, x: np.ndarray) -> None:
    for start in range(0, len(x), BATCH):
        answer = client.post("/predict", json={"inputs": x[start:start + BATCH].tolist()})
        assert answer.status_code == 200, answer.text


def wait_observed(client: httpx.Client, count: int, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while metric(client, "kaon_monitor_inputs_total") < count:
        assert time.monotonic() < deadline, f"the monitor did not see {count} inputs in {timeout_s} s"
        time.sleep(0.1)


def firing(client: httpx.Client) -> list[str]:
    from prometheus_client.parser import text_string_to_metric_families

    return [s.labels["detector"] for f in text_string_to_metric_families(client.get("/metrics").text)
            for s in f.samples if s.name == "kaon_drift_alert" and s.value == 1.0]


def inputs_until_alert(client: httpx.Client, x: np.ndarray, seen: int, limit: int = 800) -> tuple[int, int]:
    """Send shifted inputs until an alert fires; return (inputs sent, inputs seen by the monitor so far)."""
    rng = np.random.default_rng(seen)
    sent = 0
    while sent < limit:
        send(client, x[rng.integers(0, len(x), 20)])
        sent += 20
        seen += 20
        wait_observed(client, seen)
        if firing(client):
            return sent, seen
    raise AssertionError(f"no alert after {limit} shifted inputs")


def test_clean_traffic_is_quiet_and_each_shift_alerts(server: Server, digits_data) -> None:
    _, _, x_test, _ = digits_data
    rng = np.random.default_rng(0)
    seen = 0
    with httpx.Client(base_url=server.url, timeout=30) as client:
        # an empty request (a 200 with []) turned monitoring off for the route, for good and without an alert
        assert client.post("/predict", json={"inputs": []}).json() == []
        clean = x_test[rng.integers(0, len(x_test), 1000)]
        send(client, clean)
        seen += len(clean)
        wait_observed(client, seen)
        assert firing(client) == []
        assert metric(client, "kaon_alerts_total", detector="embedding_mmd") == 0
        assert metric(client, "kaon_drift_statistic", detector="embedding_mmd") < metric(
            client, "kaon_drift_threshold", detector="embedding_mmd")
        until = {}
        for name, shifted in shifts(x_test).items():
            until[name], seen = inputs_until_alert(client, shifted, seen)
            # back to clean traffic until every alert resolves: the next shift starts from quiet
            deadline = seen + 1500
            while firing(client):
                assert seen < deadline, f"the {name} alert did not resolve on clean traffic"
                send(client, x_test[rng.integers(0, len(x_test), 40)])
                seen += 40
                wait_observed(client, seen)
    print("inputs until alert:", until)
    assert until["inverted"] <= 200 and until["rotated"] <= 400 and until["noisy"] <= 800


def test_a_request_can_ask_for_its_outlier_score(server: Server, digits_data) -> None:
    _, _, x_test, _ = digits_data
    with httpx.Client(base_url=server.url, timeout=30) as client:
        plain = client.post("/predict", json={"inputs": x_test[:2].tolist()})
        assert "x-kaon-outlier-score" not in plain.headers
        clean, inverted = x_test[:20], 1.0 - x_test[:20]
        asked = client.post("/predict", json={"inputs": np.concatenate([clean, inverted]).tolist()},
                            headers={"x-kaon-outlier": "1"})
    scores = np.array([float(s) for s in asked.headers["x-kaon-outlier-score"].split(",")])
    assert len(scores) == 40
    # 1.0 is the reference's 99th percentile: clean digits score under it, most inverted ones over it
    assert np.mean(scores[:20] > 1.0) <= 0.1 and np.mean(scores[20:] > 1.0) >= 0.6
    assert np.median(scores[20:]) > 2 * np.median(scores[:20])


def test_alerts_reach_the_log_and_kaon_monitor(server: Server, digits_data, digits_registry: Path) -> None:
    # last in this module: it stops the server to read its whole output
    _, _, x_test, _ = digits_data
    with httpx.Client(base_url=server.url, timeout=30) as client:
        seen = metric(client, "kaon_monitor_inputs_total")
        inputs_until_alert(client, shifts(x_test)["inverted"], int(seen))
    done = subprocess.run([sys.executable, "-m", "kaon.cli", "monitor", server.url, "--once", "--interval-s", "0.5"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "ALERT" in done.stdout and "outlier_rate" in done.stdout and "requests/s" in done.stdout
    server.stop()
    output = server.output()
    host = socket.gethostname()
    assert "kaon alert firing: model 'digits@1' drifted on" in output and f" on {host} (statistic" in output
    records = (digits_registry / "requests.jsonl").read_text().splitlines()
    assert len(records) > 300 and all('"path":"/predict"' in r for r in records)  # probes and scrapes unlogged
