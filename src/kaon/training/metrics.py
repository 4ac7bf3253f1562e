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

import re
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


class _Counted(Metric):
    """A metric that is not a mean of per-sample values (precision, recall, AUC): each batch adds to running
    counts kept as one tensor on the device, and `result` computes from them. Scores are probabilities (a
    softmax or sigmoid of logits); K columns: one per class, or one for a binary model's single output."""

    def __init__(self, *, from_logits: bool = True) -> None:
        super().__init__()
        self.from_logits = from_logits
        self._state: torch.Tensor | None = None

    def counts(self, scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def from_counts(self, state: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def update(self, y_pred: torch.Tensor, y: torch.Tensor) -> None:
        scores, labels = self._scores_and_labels(y_pred.detach().float(), y)
        batch = self.counts(scores, labels)
        self._state = batch if self._state is None else self._state + batch
        self._count += int(y_pred.shape[0])

    def result(self) -> torch.Tensor:
        return torch.tensor(float("nan")) if self._state is None else self.from_counts(self._state)

    def reset(self) -> None:
        super().reset()
        self._state = None

    def _scores_and_labels(self, y_pred: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        count = y_pred.shape[0]
        if y_pred.ndim > 1 and y_pred.shape[-1] > 1:  # classes
            scores = y_pred.softmax(dim=-1) if self.from_logits else y_pred
            if y.ndim == y_pred.ndim and y.shape[-1] == y_pred.shape[-1]:  # one-hot
                return scores, (y > 0.5).float()
            labels = torch.nn.functional.one_hot(y.reshape(-1).long(), y_pred.shape[-1]).float()
            return scores, labels
        logit = y_pred.reshape(count, -1)[:, :1]
        scores = logit.sigmoid() if self.from_logits else logit
        return scores, (y.reshape(count, -1)[:, :1] > 0.5).float()


class _PrecisionRecall(_Counted):
    """tp, fp, fn per class (the argmax, or a score over 0.5 for one output); macro-averaged over the classes
    that occur in the targets or the predictions, as scikit-learn's average='macro'."""

    recall = False

    def counts(self, scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if scores.shape[1] > 1:
            predicted = torch.nn.functional.one_hot(scores.argmax(dim=1), scores.shape[1]).float()
        else:
            predicted = (scores > 0.5).float()
        tp = (predicted * labels).sum(dim=0)
        return torch.stack([tp, predicted.sum(dim=0) - tp, labels.sum(dim=0) - tp])

    def from_counts(self, state: torch.Tensor) -> torch.Tensor:
        tp, fp, fn = state
        # binary: the positive class only; classes: those in the targets or the predictions
        seen = torch.ones_like(tp, dtype=torch.bool) if state.shape[1] == 1 else (tp + fp + fn) > 0
        denominator = tp + (fn if self.recall else fp)
        per_class = torch.where(denominator > 0, tp / denominator.clamp_min(1), torch.zeros_like(tp))
        return per_class[seen].mean() if bool(seen.any()) else torch.tensor(float("nan"))


class Precision(_PrecisionRecall):
    name = "precision"


class Recall(_PrecisionRecall):
    name = "recall"
    recall = True


class AUC(_Counted):
    """Area under the ROC curve from score histograms (200 bins, as Keras' AUC: streaming, within ~0.005 of
    the exact figure); one-vs-rest and macro-averaged over classes for a multi-class model."""

    name = "auc"
    bins = 200

    def counts(self, scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        index = (scores.clamp(0, 1) * self.bins).long().clamp_max(self.bins - 1)  # (N, K)
        classes = scores.shape[1]
        hist = torch.zeros(2, classes, self.bins, device=scores.device)
        hist[0].scatter_add_(1, index.T, labels.T)  # positives per class and bin
        hist[1].scatter_add_(1, index.T, 1 - labels.T)  # negatives
        return hist

    def from_counts(self, state: torch.Tensor) -> torch.Tensor:
        # thresholds from the top bin down: the true and false positive rates at each, then the trapezoids
        tp = state[0].flip(1).cumsum(1)
        fp = state[1].flip(1).cumsum(1)
        positives, negatives = tp[:, -1:], fp[:, -1:]
        valid = ((positives > 0) & (negatives > 0)).reshape(-1)
        if not bool(valid.any()):
            return torch.tensor(float("nan"))
        zero = torch.zeros_like(positives)
        tpr = torch.cat([zero, tp / positives.clamp_min(1)], dim=1)
        fpr = torch.cat([zero, fp / negatives.clamp_min(1)], dim=1)
        area = ((fpr[:, 1:] - fpr[:, :-1]) * (tpr[:, 1:] + tpr[:, :-1]) / 2).sum(dim=1)
        return area[valid].mean()


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
    "precision": lambda from_logits: Precision(from_logits=from_logits),
    "recall": lambda from_logits: Recall(from_logits=from_logits),
    "auc": lambda from_logits: AUC(from_logits=from_logits),
}


def metric_factory(name: str) -> Callable[[bool], Metric] | None:
    """The factory of a metric by name: one of METRICS, or top_K_accuracy for any K ('top_3_accuracy'; plain
    'top_k_accuracy' is k=5, as in Keras). None for an unknown name."""
    key = name.lower()
    found = METRICS.get(key)
    if found is None and (match := re.fullmatch(r"top_([1-9]\d*)_accuracy", key)):
        k = int(match.group(1))
        return lambda from_logits: TopKAccuracy(k)
    return found
