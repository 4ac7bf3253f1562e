from __future__ import annotations

import numpy as np
import torch

from kaon.training.data import load_digits
from kaon.training.models import DigitsCNN


def test_load_digits_returns_scaled_float32_images_and_int64_labels():
    x_train, y_train, x_test, y_test = load_digits()
    assert x_train.shape == (1437, 1, 8, 8) and x_test.shape == (360, 1, 8, 8)
    assert x_train.dtype == np.float32 and y_train.dtype == np.int64
    assert x_train.min() >= 0.0 and x_train.max() <= 1.0
    assert set(np.unique(y_test)) == set(range(10))
    again = load_digits()
    assert np.array_equal(again[3], y_test)  # the split is fixed by the seed
    assert not np.array_equal(load_digits(seed=1)[3], y_test)
    assert load_digits(test_size=0.5)[2].shape[0] == 899


def test_digits_cnn_returns_logits_for_8x8_and_28x28_images():
    assert DigitsCNN()(torch.zeros(3, 1, 8, 8)).shape == (3, 10)
    model = DigitsCNN(image_size=28, num_classes=7, in_channels=3)
    assert model(torch.zeros(2, 3, 28, 28)).shape == (2, 7)
    layers = [type(m).__name__ for m in DigitsCNN().modules()][1:]
    assert [n for n in layers if n != "Sequential"] == ["Conv2d", "ReLU", "MaxPool2d", "Flatten",
                                                         "Linear", "ReLU", "Linear"]
