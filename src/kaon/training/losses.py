"""Losses by name or object. Each takes the model's raw output and the targets: `loss(y_pred, y)`.

PyTorch models return logits, so every loss here reads logits unless `from_logits=False`
(the Trainer sets that for a model whose last layer is a softmax or sigmoid: a Keras final activation,
or nn.Softmax / nn.Sigmoid last in an nn.Sequential). Cross-entropy on probabilities divides each row
by its sum first, as Keras does: a sigmoid's outputs become a distribution over the classes.
Each loss honours its `reduction` attribute ('mean', 'sum' or 'none'), which Opacus's ghost
clipping flips to 'none' to get one loss per sample.

    >>> import torch
    >>> CrossEntropy()(torch.tensor([[2.0, 0.0]]), torch.tensor([0])).shape
    torch.Size([])
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from kaon.errors import ConfigError, InvalidInputError

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
            return F.cross_entropy(y_pred, class_labels(y, y_pred), reduction=self.reduction)
        return super().forward(y_pred, y)

    def per_sample(self, y_pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        y = class_labels(y, y_pred)
        if self.from_logits:
            return F.cross_entropy(y_pred, y, reduction="none")
        p = y_pred.clamp_min(_EPSILON)
        log_p = (p / p.sum(dim=1, keepdim=True)).log()  # the classes are axis 1, as for F.cross_entropy: (N, C, ...)
        if y.dtype.is_floating_point:  # class probabilities (N, C, ...)
            return -(y * log_p).sum(dim=1)
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
        y = match_targets(y, y_pred).to(y_pred.dtype)
        if self.from_logits:
            losses = F.binary_cross_entropy_with_logits(y_pred, y, reduction="none")
        else:  # in fp32 outside autocast: CUDA autocast refuses binary_cross_entropy on half-precision inputs
            with torch.autocast(device_type=y_pred.device.type, enabled=False):
                losses = F.binary_cross_entropy(y_pred.float().clamp(_EPSILON, 1 - _EPSILON), y.float(),
                                                reduction="none")
        return _mean_per_sample(losses)


class MeanSquaredError(Loss):
    name = "mse"

    def per_sample(self, y_pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        y = match_targets(y, y_pred).to(y_pred.dtype)
        return _mean_per_sample((y_pred - y).square())


class MeanAbsoluteError(Loss):
    name = "mae"

    def per_sample(self, y_pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        y = match_targets(y, y_pred).to(y_pred.dtype)
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


def match_targets(y: torch.Tensor, y_pred: torch.Tensor, count: int | None = None) -> torch.Tensor:
    """Targets shaped like the outputs. (N,) targets for (N, 1) outputs, or (N, 1) for (N,), are the same numbers:
    broadcasting them would compare every sample with every other (an (N, N) loss that learns nothing).
    `count`: how many samples y has in all, when these are the first few (the error then names the full shapes)."""
    if y.shape == y_pred.shape:
        return y
    if y.ndim and y_pred.ndim and y.shape[0] == y_pred.shape[0] and y.numel() == y_pred.numel():
        return y.reshape(y_pred.shape)
    got, want = tuple(y.shape), tuple(y_pred.shape)
    if count is not None and y.ndim and y_pred.ndim:
        got, want = (count, *got[1:]), (count, *want[1:])
    raise InvalidInputError(
        f"the targets must hold one value per model output. Received: targets of shape {got} for outputs "
        f"of shape {want}. Reshape y to {want}, or give the model {got[1:] or 1} outputs per sample."
    )


def class_labels(y: torch.Tensor, y_pred: torch.Tensor) -> torch.Tensor:
    """Class labels as cross-entropy reads them against scores (N, C): (N,) int64. A (N, 1) column of labels, or
    labels held as floats or booleans (a pandas column), are the same labels; (N, C) class probabilities stay."""
    if y.ndim == y_pred.ndim and y.shape[-1] == 1 and y_pred.shape[-1] > 1:
        y = y.squeeze(-1)
    if y.ndim == y_pred.ndim - 1 and (y.is_floating_point() or y.dtype == torch.bool):
        y = y.long()
    return y


def _mean_per_sample(losses: torch.Tensor) -> torch.Tensor:
    return losses.reshape(losses.shape[0], -1).mean(dim=1) if losses.ndim > 1 else losses


class ClassWeighted(nn.Module):
    """`loss` with each sample's loss scaled by its class's weight, averaged over the batch (Keras'
    class_weight): rare classes count for more. Classes absent from `weights` weigh 1."""

    def __init__(self, loss: Loss, weights: dict[int, float]) -> None:
        super().__init__()
        self.loss = loss
        ordered = sorted(weights.items())
        self.register_buffer("keys", torch.tensor([k for k, _ in ordered], dtype=torch.long))
        self.register_buffer("values", torch.tensor([v for _, v in ordered], dtype=torch.float32))
        self._checked = False

    def forward(self, y_pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        keys: torch.Tensor = self.keys.to(y_pred.device)  # type: ignore[operator,assignment]
        values: torch.Tensor = self.values.to(y_pred.device)  # type: ignore[operator,assignment]
        if not self._checked:  # a class the model cannot predict is a typo, said once
            classes = y_pred.shape[-1] if y_pred.ndim > 1 and y_pred.shape[-1] > 1 else 2
            if int(keys.max()) >= classes:
                raise ConfigError(f"class_weight names class {int(keys.max())}, but the model predicts {classes} "
                                  f"classes (0 to {classes - 1}). Received: class_weight keys {keys.tolist()[:20]}.")
            self._checked = True
        losses = _mean_per_sample(self.loss.per_sample(y_pred, y))
        if y.ndim == y_pred.ndim and y.shape[-1] > 1:  # one-hot or class probabilities
            labels = y.argmax(dim=-1)
        else:
            labels = y.reshape(y.shape[0], -1)[:, 0].round().long()  # (N,), a (N, 1) column, 0/1 floats
        index = torch.searchsorted(keys, labels).clamp_max(len(keys) - 1)
        weights = torch.where(keys[index] == labels, values[index], torch.ones_like(values[index]))
        return (losses * weights.to(losses.dtype)).mean()


def check_class_weight(class_weight: object) -> dict[int, float]:
    """{class index: weight > 0}, as Keras takes it."""
    ok = isinstance(class_weight, dict) and bool(class_weight) and all(
        isinstance(k, int | np.integer) and not isinstance(k, bool) and k >= 0
        and isinstance(v, int | float | np.floating) and not isinstance(v, bool) and math.isfinite(v) and v > 0
        for k, v in class_weight.items())
    if not ok:
        raise ConfigError(
            "class_weight maps class indices to weights > 0, e.g. {0: 1.0, 1: 5.0} to count class 1 five times as "
            f"much. Received: {str(class_weight)[:200]}")
    assert isinstance(class_weight, dict)
    return {int(k): float(v) for k, v in class_weight.items()}
