"""Metrics by name or object, accumulated as tensors so that a training step never waits on the device.

A Metric sees every batch through `update(y_pred, y)` and reports `result()` as a 0-dim tensor;
reading it with float() is the only point where the host waits for the device.

    >>> import torch
    >>> m = Accuracy()
    >>> m.update(torch.tensor([[0.1, 0.9], [0.8, 0.2]]), torch.tensor([1, 1]))
    >>> float(m.result())
    0.5
"""

from __future__ import annotations

from collections.abc import Callable

import torch


class Metric:
    """Base: a running mean of a per-sample quantity; subclasses define `batch_total`."""

    name = "metric"

    def __init__(self) -> None:
        self._totals: list[torch.Tensor] = []
        self._count = 0

    def batch_total(self, y_pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The sum of the metric over the samples of one batch (a 0-dim tensor)."""
        raise NotImplementedError

    def update(self, y_pred: torch.Tensor, y: torch.Tensor) -> None:
        self._totals.append(self.batch_total(y_pred.detach(), y))
        self._count += int(y_pred.shape[0])

    def result(self) -> torch.Tensor:
        if not self._totals:
            return torch.tensor(float("nan"))
        if len(self._totals) > 1:  # fold the list so repeated reads stay cheap
            self._totals = [torch.stack(self._totals).sum()]
        return self._totals[0] / max(self._count, 1)

    def reset(self) -> None:
        self._totals = []
        self._count = 0


class Accuracy(Metric):
    """Share of correct predictions: argmax over classes, or a threshold for one output per sample.

    Targets may be class labels (N,) or one-hot (N, C). With one output per sample the threshold
    is 0 for logits and 0.5 for probabilities (`from_logits=False`).
    """

    name = "accuracy"

    def __init__(self, *, from_logits: bool = True) -> None:
        super().__init__()
        self.from_logits = from_logits

    def batch_total(self, y_pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if y_pred.ndim > 1 and y_pred.shape[-1] > 1:
            predicted = y_pred.argmax(dim=-1)
            if y.ndim == y_pred.ndim and y.shape[-1] > 1:  # one-hot targets
                y = y.argmax(dim=-1)
            return (predicted == y.reshape(predicted.shape)).sum()  # labels (N,) or a (N, 1) column
        threshold = 0.0 if self.from_logits else 0.5
        predicted = (y_pred.reshape(y_pred.shape[0], -1) > threshold).flatten(1)
        return (predicted == (y.reshape(y.shape[0], -1) > 0.5)).float().mean(dim=1).sum()


class TopKAccuracy(Metric):
    """Share of samples whose true class is among the `k` highest scores."""

    def __init__(self, k: int = 5) -> None:
        super().__init__()
        self.k = k
        self.name = "top_k_accuracy" if k == 5 else f"top_{k}_accuracy"

    def batch_total(self, y_pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if y.ndim == y_pred.ndim and y.shape[-1] > 1:  # one-hot targets
            y = y.argmax(dim=-1)
        top = y_pred.topk(min(self.k, y_pred.shape[-1]), dim=-1).indices  # (N, k)
        return (top == y.reshape(-1, 1)).any(dim=-1).sum()


class MeanAbsoluteError(Metric):
    name = "mae"

    def batch_total(self, y_pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        diff = y_pred - y.reshape(y_pred.shape).to(y_pred.dtype)
        return diff.abs().reshape(diff.shape[0], -1).mean(dim=1).sum()


class MeanSquaredError(Metric):
    name = "mse"

    def batch_total(self, y_pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        diff = y_pred - y.reshape(y_pred.shape).to(y_pred.dtype)
        return diff.square().reshape(diff.shape[0], -1).mean(dim=1).sum()


class MeanMetric(Metric):
    """A plain function `fn(y_pred, y) -> scalar` averaged over batches, weighted by batch size."""

    def __init__(self, fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor | float],
                 name: str | None = None) -> None:
        super().__init__()
        self.fn = fn
        self.name = str(name or getattr(fn, "__name__", None) or type(fn).__name__)

    def batch_total(self, y_pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        value = self.fn(y_pred, y)
        return torch.as_tensor(value, device=y_pred.device).detach().float() * y_pred.shape[0]


def _accuracy(from_logits: bool) -> Metric:
    return Accuracy(from_logits=from_logits)


# name -> factory(from_logits)
METRICS: dict[str, Callable[[bool], Metric]] = {
    "accuracy": _accuracy,
    "acc": _accuracy,
    "binary_accuracy": _accuracy,
    "categorical_accuracy": _accuracy,
    "sparse_categorical_accuracy": _accuracy,
    "top_k_accuracy": lambda from_logits: TopKAccuracy(5),
    "mae": lambda from_logits: MeanAbsoluteError(),
    "mse": lambda from_logits: MeanSquaredError(),
}
