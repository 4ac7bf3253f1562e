"""Shared data for the training tests: sklearn's bundled digits, loaded once."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kaon.training.data import load_digits
from kaon.training.models import DigitsCNN


@pytest.fixture(scope="session")
def digits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    return load_digits()


@pytest.fixture
def small(digits):
    """400 training and 200 test digits: enough to learn, quick to fit."""
    x_train, y_train, x_test, y_test = digits
    return x_train[:400], y_train[:400], x_test[:200], y_test[:200]


def make_model(seed: int = 0, **kwargs) -> DigitsCNN:
    """A DigitsCNN whose initial weights depend only on `seed`."""
    torch.manual_seed(seed)
    return DigitsCNN(**kwargs)
