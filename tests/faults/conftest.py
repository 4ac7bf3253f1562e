"""A real `kaon serve` of a small digits model for the fault tests (auth off: the inputs are the attack)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.servers import Server


@pytest.fixture(scope="session")
def fault_model(tmp_path_factory) -> Path:
    import torch

    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                                 torch.nn.Linear(4 * 6 * 6, 10), torch.nn.Softmax(dim=1)).eval()
    path = tmp_path_factory.mktemp("fault-model") / "digits.pt2"
    batch = torch.export.Dim("b", min=1)
    program = torch.export.export(module, (torch.rand(2, 1, 8, 8),), dynamic_shapes=({0: batch},))
    torch.export.save(program, str(path))
    return path


@pytest.fixture(scope="session")
def fault_server(fault_model: Path, tmp_path_factory) -> Iterator[Server]:
    home = tmp_path_factory.mktemp("fault-home")
    server = Server(["serve", str(fault_model), "--name", "digits", "--max-body-bytes", str(16 * 1024 * 1024)],
                    env={"KAON_HOME": str(home)}).wait_ready()
    yield server
    server.stop()


DIGITS = np.random.default_rng(0).random((3, 1, 8, 8), dtype=np.float32)
