"""Losses by name or object. Each takes the model's raw output and the targets: `loss(y_pred, y)`.

PyTorch models return logits, so every loss here reads logits unless `from_logits=False`
(the Trainer sets that for a Keras model whose last layer ends in softmax or sigmoid).
Each loss honours its `reduction` attribute ('mean', 'sum' or 'none'), which Opacus's ghost
clipping flips to 'none' to get one loss per sample.

    >>> import torch
    >>> CrossEntropy()(torch.tensor([[2.0, 0.0]]), torch.tensor([0])).shape
    torch.Size([])
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

Reduction = Literal["mean", "sum", "none"]
_EPSILON = 1e-7  # keeps log() finite for a probability output that reached 0 or 1


class Loss(nn.Module):
    """Base of the named losses: `forward(y_pred, y)` returns the loss reduced by `reduction`."""

    name = "loss"

    def __init__(self, *, from_logits: bool = True, reduction: Reduction = "mean") -> None:
        super().__init__()
        self.from_logits = from_logits
        self.reduction = reduction

    def per_sample(self, y_pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, y_pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        losses = self.per_sample(y_pred, y)  # (N,)
        if self.reduction == "mean":
            return losses.mean()
        if self.reduction == "sum":
            return losses.sum()
        return losses


class CrossEntropy(Loss):
    """Integer class labels (N,) against scores (N, C); also takes class probabilities (N, C)."""

    name = "cross_entropy"

    def forward(self, y_pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.from_logits:  # one fused kernel for the common case
            return F.cross_entropy(y_pred, y, reduction=self.reduction)
        return super().forward(y_pred, y)

    def per_sample(self, y_pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.from_logits:
            return F.cross_entropy(y_pred, y, reduction="none")
        log_p = y_pred.clamp_min(_EPSILON).log()
        if y.dtype.is_floating_point:
            return -(y * log_p).sum(dim=-1)
        return F.nll_loss(log_p, y, reduction="none")


class CategoricalCrossentropy(CrossEntropy):
    """One-hot (or soft) targets (N, C) against scores (N, C)."""

    name = "categorical_crossentropy"

    def forward(self, y_pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return super().forward(y_pred, y.to(y_pred.dtype))


class BinaryCrossentropy(Loss):
    """Targets in [0, 1] against one score per output: (N,) or (N, K)."""

    name = "binary_crossentropy"

    def per_sample(self, y_pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        y = _match(y, y_pred).to(y_pred.dtype)
        if self.from_logits:
            losses = F.binary_cross_entropy_with_logits(y_pred, y, reduction="none")
        else:
            losses = F.binary_cross_entropy(y_pred.clamp(_EPSILON, 1 - _EPSILON), y, reduction="none")
        return _mean_per_sample(losses)


class MeanSquaredError(Loss):
    name = "mse"

    def per_sample(self, y_pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        y = _match(y, y_pred).to(y_pred.dtype)
        return _mean_per_sample((y_pred - y).square())


class MeanAbsoluteError(Loss):
    name = "mae"

    def per_sample(self, y_pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        y = _match(y, y_pred).to(y_pred.dtype)
        return _mean_per_sample((y_pred - y).abs())


LOSSES: dict[str, type[Loss]] = {
    "cross_entropy": CrossEntropy,
    "sparse_categorical_crossentropy": CrossEntropy,
    "categorical_crossentropy": CategoricalCrossentropy,
    "binary_crossentropy": BinaryCrossentropy,
    "mse": MeanSquaredError,
    "mean_squared_error": MeanSquaredError,
    "mae": MeanAbsoluteError,
    "mean_absolute_error": MeanAbsoluteError,
}


def _match(y: torch.Tensor, y_pred: torch.Tensor) -> torch.Tensor:
    """Targets (N,) for outputs (N, 1): add the trailing axis instead of broadcasting to (N, N)."""
    if y.ndim == y_pred.ndim - 1 and y_pred.shape[-1] == 1:
        return y.unsqueeze(-1)
    return y


def _mean_per_sample(losses: torch.Tensor) -> torch.Tensor:
    return losses.reshape(losses.shape[0], -1).mean(dim=1) if losses.ndim > 1 else losses
