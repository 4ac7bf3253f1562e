"""The bundled digits test split, for auditing a digits model when no data is given.

This is kaon.training.data.load_digits' split (same stratification, test_size and seed), rebuilt
here because robustness and training are siblings in one layer and may not import each other;
tests/robustness pins the two to the same arrays.
"""

from __future__ import annotations

import numpy as np

DIGITS_INPUT_SHAPE = (1, 8, 8)
DIGITS_NUM_CLASSES = 10
DIGITS_SOURCE = "the bundled digits test split (scikit-learn's digits, 20% held out, seed 0; 360 images)"


def digits_test_split(test_size: float = 0.2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(x_test, y_test): float32 (N, 1, 8, 8) in [0, 1] and int64 labels."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)[:, None, :, :]
    labels = digits.target.astype(np.int64)
    _, x_test, _, y_test = train_test_split(images, labels, test_size=test_size, random_state=seed, stratify=labels)
    return x_test, y_test
