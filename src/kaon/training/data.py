"""The bundled digits data set (scikit-learn ships it, so nothing is downloaded).

    >>> x_train, y_train, x_test, y_test = load_digits()
    >>> x_train.shape, x_train.dtype, y_train.dtype
    ((1437, 1, 8, 8), dtype('float32'), dtype('int64'))
"""

from __future__ import annotations

import numpy as np


def load_digits(
    test_size: float = 0.2, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Return (x_train, y_train, x_test, y_test): images float32 (N, 1, 8, 8) in [0, 1], labels int64.

    The split is stratified and fixed by `seed`, so every run sees the same test set.
    """
    from sklearn.datasets import load_digits as sklearn_digits
    from sklearn.model_selection import train_test_split

    digits = sklearn_digits()
    images = (digits.images / 16.0).astype(np.float32)[:, None, :, :]  # (N, 1, 8, 8), 16 = max pixel
    labels = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        images, labels, test_size=test_size, random_state=seed, stratify=labels
    )
    return x_train, y_train, x_test, y_test
