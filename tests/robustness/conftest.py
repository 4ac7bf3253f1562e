"""A digits CNN trained once for the robustness tests, and the digits split."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kaon.training import Trainer
from kaon.training.data import load_digits
from kaon.training.models import DigitsCNN


@pytest.fixture(scope="session")
def digits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    return load_digits()


def train_digits(digits, epochs: int = 8, trainer_class: type = Trainer, **options) -> DigitsCNN:
    x_train, y_train, _, _ = digits
    torch.manual_seed(0)
    model = DigitsCNN()
    trainer_class(model, lr=3e-3, seed=0, track=False, **options).fit(x_train, y_train, epochs=epochs,
                                                                      batch_size=32, verbose=False)
    return model.eval()


@pytest.fixture(scope="session")
def cnn(digits) -> DigitsCNN:
    """DigitsCNN returning logits, trained the standard way."""
    return train_digits(digits)
