"""The seed example users bring (examples/keras_seed.py) runs as written on Keras 3's torch backend."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import keras  # noqa: E402 - tests/conftest.py sets KERAS_BACKEND=torch before this import
import pytest

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "keras_seed.py"


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # inside keras: np.array(tensor)
def test_keras_seed_example_trains_and_evaluates_on_the_torch_backend():
    assert keras.backend.backend() == "torch", "keras was imported before KERAS_BACKEND=torch was set"
    spec = importlib.util.spec_from_file_location("keras_seed", EXAMPLE)
    assert spec is not None and spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    model, accuracy = example.main(epochs=2, verbose=0)
    import torch

    assert isinstance(model, torch.nn.Module)  # on the torch backend a Keras model is a Module
    assert accuracy > 0.5  # chance is 0.1
