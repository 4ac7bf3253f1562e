"""Structured pruning keeps widths onnxruntime's blocked kernels run fast: multiples of 16, never below 16."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from kaon.optimization.prune import prune_structured


def cnn(channels: int = 32, dense: int = 64) -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, channels, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(channels * 9, dense), nn.ReLU(), nn.Linear(dense, 10))


@pytest.mark.parametrize(("ratio", "widths"), [
    (0.75, {"0": (32, 16), "4": (64, 16)}),  # the conv would keep 8: 16 is the floor
    (0.5, {"0": (32, 16), "4": (64, 32)}),
    (0.25, {"4": (64, 48)}),  # 24 conv channels would run slower than 32: the nearest multiple of 16 is 32
])
def test_widths_round_to_multiples_of_16(ratio, widths):
    module = cnn()
    x = np.random.default_rng(0).random((2, 1, 8, 8), dtype=np.float32)
    assert prune_structured(module, x, ratio=ratio) == widths
    assert module(torch.from_numpy(x)).shape == (2, 10)  # still a working network
    assert module[6].out_features == 10  # the classes are never pruned


def test_narrow_models_are_pruned_without_rounding():
    module = nn.Sequential(nn.Linear(4, 12), nn.ReLU(), nn.Linear(12, 3))
    assert prune_structured(module, np.ones((2, 4), np.float32), ratio=0.5) == {"0": (12, 6)}
