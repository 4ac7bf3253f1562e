"""The observer thread: per-second quotas, a bounded queue, the request log and the monitor fed off the hot path."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from kaon.monitoring import MonitorMetrics, RequestLog
from kaon.serving.http import Request, Response
from kaon.serving.observers import Observers


def exchange(index: int, path: str = "/predict", status: int = 200) -> tuple[Request, Response]:
    body = json.dumps({"inputs": [[float(index)]], "email": "ada@example.com"}).encode()
    request = Request("POST", path, {"content-type": "application/json", "authorization": "Bearer kaon_x"}, body,
                      f"r{index}")
    return request, Response(status, b'[{"label": 1}]')


def test_quotas_bound_what_is_logged_and_monitored_each_second(tmp_path: Path) -> None:
    import torch

    from kaon.models.torch import TorchModel
    from kaon.monitoring import Monitor, feature_extractor, fit_reference

    torch.manual_seed(0)
    model = TorchModel.from_module(torch.nn.Sequential(torch.nn.Linear(1, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2)),
                                   np.zeros((2, 1), np.float32))
    reference = fit_reference(model, np.random.default_rng(0).normal(size=(200, 1)).astype(np.float32))
    metrics = MonitorMetrics()

    def monitor() -> Monitor:
        return Monitor(reference, feature_extractor(model), window=20, metrics=metrics, calibration_rounds=20)

    observers = Observers(request_log=RequestLog(tmp_path / "log.jsonl"), max_logged_per_s=5,
                          monitor_factory=monitor, max_monitored_per_s=7,
                          decoders={"/predict": lambda r: np.asarray(json.loads(r.body)["inputs"], np.float32)},
                          metrics=metrics)
    observers.start()
    assert observers.wait_ready(10)
    second = int(time.time())
    while int(time.time()) == second:  # start at the top of a second, so the burst below fits in one
        time.sleep(0.005)
    for index in range(50):
        observers.observe(*exchange(index), 0.001)
    observers.observe(*exchange(99, path="/healthz"), 0.001)  # probes are never logged
    observers.stop()
    lines = (tmp_path / "log.jsonl").read_text().splitlines()
    assert len(lines) == 5
    assert "ada@example.com" not in lines[0] and "kaon_x" not in lines[0]
    assert metrics.registry.get_sample_value("kaon_monitor_inputs_total") == 7
    assert metrics.registry.get_sample_value("kaon_request_log_records_total") == 5


def test_a_full_queue_drops_and_counts_instead_of_blocking() -> None:
    metrics = MonitorMetrics()
    observers = Observers(monitor_factory=lambda: None, max_monitored_per_s=10**9, metrics=metrics, max_pending=10)
    observers._monitor_wanted = True  # the thread is not started: nothing drains the queue
    started = time.perf_counter()
    for index in range(1000):
        observers.observe(*exchange(index), 0.001)
    per_call_us = (time.perf_counter() - started) / 1000 * 1e6
    assert len(observers._pending) == 10 and observers.dropped == 990
    assert metrics.registry.get_sample_value("kaon_monitor_dropped_total") == 990
    assert per_call_us < 50  # the hot path's share: microseconds
