"""The seed CNN for digits: the smallest model that shows every step of the workflow.

    >>> import torch
    >>> model = DigitsCNN()
    >>> model(torch.zeros(4, 1, 8, 8)).shape
    torch.Size([4, 10])
"""

from __future__ import annotations

import torch
from torch import nn


class DigitsCNN(nn.Module):
    """Conv(3x3, 32) + ReLU -> MaxPool(2) -> Flatten -> Linear(64) + ReLU -> Linear(num_classes).

    Returns logits, shape (N, num_classes), for images of shape (N, in_channels, image_size, image_size).
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, image_size: int = 8) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.image_size = image_size
        pooled = (image_size - 2) // 2  # 3x3 valid conv, then 2x2 pooling
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 32, kernel_size=3),  # (N, 32, S-2, S-2)
            nn.ReLU(),
            nn.MaxPool2d(2),  # (N, 32, (S-2)//2, (S-2)//2)
            nn.Flatten(),  # (N, 32 * pooled * pooled)
        )
        self.classifier = nn.Sequential(
            nn.Linear(32 * pooled * pooled, 64),
            nn.ReLU(),
            nn.Linear(64, num_classes),  # logits
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))
