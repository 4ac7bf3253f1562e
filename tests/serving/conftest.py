from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from tests.servers import Server


def _digits_module():
    import torch

    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 8, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(8 * 6 * 6, 10),
        torch.nn.Softmax(dim=1),
    ).eval()


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory) -> Path:
    """digits.onnx, digits_ext.onnx (+ .onnx.data), digits.pt2 and the reference outputs."""
    import onnx
    import torch

    folder = tmp_path_factory.mktemp("models")
    module = _digits_module()
    x = torch.rand(2, 1, 8, 8)
    torch.onnx.export(module, (x,), str(folder / "digits.onnx"), input_names=["image"],
                      output_names=["probabilities"], dynamic_axes={"image": {0: "n"}, "probabilities": {0: "n"}},
                      dynamo=False)
    proto = onnx.load(str(folder / "digits.onnx"))
    onnx.save_model(proto, str(folder / "digits_ext.onnx"), save_as_external_data=True,
                    all_tensors_to_one_file=True, location="digits_ext.onnx.data", size_threshold=0)
    program = torch.export.export(module, (x,), dynamic_shapes=({0: torch.export.Dim("b", min=1)},))
    torch.export.save(program, str(folder / "digits.pt2"))
    probe = np.random.default_rng(0).random((5, 1, 8, 8), dtype=np.float32)
    with torch.no_grad():
        np.save(folder / "probe_out.npy", module(torch.from_numpy(probe)).numpy())
    np.save(folder / "probe_in.npy", probe)
    return folder


@pytest.fixture(scope="session")
def onnx_server(models_dir):
    server = Server(["serve", str(models_dir / "digits.onnx"), "--max-queue", "4096"],
                    env={"KAON_HOME": str(models_dir / "home")}).wait_ready()
    yield server
    server.stop()


@pytest.fixture()
def probe(models_dir):
    return np.load(models_dir / "probe_in.npy"), np.load(models_dir / "probe_out.npy")


os.environ.setdefault("KERAS_BACKEND", "torch")
