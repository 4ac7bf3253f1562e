"""Fixtures for the cluster tests: a digits ONNX model, and a real control plane in a subprocess."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kaon.cluster.client import ControlPlaneClient
from tests.servers import free_port


@pytest.fixture(scope="session")
def digits_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """kaon's DigitsCNN with a softmax, exported to ONNX (untrained: these tests measure serving, not accuracy)."""
    import warnings

    import torch

    from kaon.training.models import DigitsCNN

    torch.manual_seed(0)
    module = torch.nn.Sequential(DigitsCNN(), torch.nn.Softmax(dim=1)).eval()
    path = tmp_path_factory.mktemp("models") / "digits.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript exporter: fine for this model
        torch.onnx.export(module, (torch.rand(2, 1, 8, 8),), str(path), input_names=["image"],
                          output_names=["probabilities"],
                          dynamic_axes={"image": {0: "n"}, "probabilities": {0: "n"}}, dynamo=False)
    return path


class PlaneProcess:
    """`python -m kaon.cluster.controlplane` for this test's KAON_HOME, stopped by PID at the end."""

    def __init__(self, cpus: float = 8.0) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "kaon.cluster.controlplane", "--port", str(self.port), "--cpus", str(cpus),
             "--memory-mb", "16384", "--log-level", "info"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        deadline = time.monotonic() + 30
        self.client: ControlPlaneClient | None = None
        while time.monotonic() < deadline and self.client is None:
            if self.proc.poll() is not None:
                raise RuntimeError(f"control plane exited {self.proc.returncode}:\n{self.proc.stdout.read()}")
            self.client = ControlPlaneClient._find()
            time.sleep(0.05)
        if self.client is None:
            self.stop()
            raise RuntimeError("control plane did not start in 30 s")

    def stop(self) -> str:
        if self.client is not None:
            self.client.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.stdout.read() if self.proc.stdout else ""


@pytest.fixture
def plane(kaon_home: Path) -> Iterator[PlaneProcess]:
    process = PlaneProcess()
    yield process
    output = process.stop()
    if "Traceback" in output:
        print(output)  # shown by pytest when the test fails
