"""A small digits CNN, trained here in a few epochs and registered as quickstart registers it.

`optimized` runs `optimize` once for the whole module (every method, target throughput) in a home of
its own, so that the tests reading its result share the ~15 s it costs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import torch

from kaon.training import Trainer
from kaon.training.data import load_digits
from kaon.training.models import DigitsCNN
from kaon.types import Signature, TensorSpec

SIGNATURE = Signature([TensorSpec("image", "float32", (-1, 1, 8, 8))],
                      [TensorSpec("probabilities", "float32", (-1, 10))])


@dataclass
class Digits:
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


@pytest.fixture(scope="session")
def digits() -> Digits:
    return Digits(*load_digits())


def train_digits_cnn(digits: Digits, epochs: int = 4) -> torch.nn.Module:
    """DigitsCNN + softmax, as `kaon quickstart` registers it (a few epochs: ~95% accuracy)."""
    model = DigitsCNN()
    Trainer(model, lr=3e-3, seed=0, track=False).fit(digits.x_train, digits.y_train, epochs=epochs, verbose=False)
    return torch.nn.Sequential(model.eval(), torch.nn.Softmax(dim=1)).eval()


def register_digits(digits: Digits, registry: Any = None, name: str = "digits") -> Any:
    from kaon.sdk import register

    return register(train_digits_cnn(digits), name, input_example=digits.x_test[:2], signature=SIGNATURE,
                    registry=registry)


@dataclass
class Optimized:
    registry: Any
    original: Any  # ModelVersionRecord
    report: Any  # OptimizationReport


@pytest.fixture(scope="module")
def optimized(digits: Digits, tmp_path_factory: pytest.TempPathFactory) -> Optimized:
    from kaon.optimization import attach_samples, optimize
    from kaon.registry import Registry

    home = tmp_path_factory.mktemp("optimize_home")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("KAON_HOME", str(home))
        registry = Registry()
        original = register_digits(digits, registry)
        attach_samples(original.ref, digits.x_test, digits.y_test, x_train=digits.x_train, y_train=digits.y_train,
                       registry=registry)
        report = optimize(original.ref, registry=registry, num_rounds=3)
    return Optimized(registry, original, report)
