"""A classifier's scores as (N, classes), whatever the model answers: a binary model's one output per sample (a
logit z, or a probability p in [0, 1]) reads as two classes, [0, z] or [1 - p, p]. Then argmax is the predicted
class, a softmax of [0, z] is [1 - sigmoid(z), sigmoid(z)], and cross-entropy on it is binary cross-entropy:
optimize and audit treat binary models as any classifier."""

from __future__ import annotations

from typing import Any

import numpy as np


def are_probabilities(rows: Any, atol: float = 1e-3) -> bool:
    """Whether every row is a probability distribution (non-negative, summing to 1 within `atol`)."""
    a = np.asarray(rows)
    return bool(a.size and a.min() >= 0 and np.allclose(a.sum(axis=-1), 1, atol=atol))


def probabilities(outputs: Any, binary: bool | None = None) -> np.ndarray:
    """A classifier's outputs as probabilities (N, classes): rows that already are stay, logits go through a
    softmax; a binary model's one output reads as two classes (`class_scores`, `binary` as decided there)."""
    a = class_scores(outputs, binary)
    if a.ndim != 2 or are_probabilities(a):
        return a
    e = np.exp(a - a.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def binary_probabilities(outputs: Any) -> bool | None:
    """For a binary model's outputs (one per sample), whether they are probabilities (all in [0, 1]) rather than
    logits; None for any other model. Decide it once per model, on as many outputs as there are (a batch of logits
    can happen to fall in [0, 1]), and pass it to `class_scores`."""
    scores = np.asarray(outputs)
    if scores.ndim == 1:
        scores = scores[:, None]
    if scores.ndim != 2 or scores.shape[1] != 1:
        return None
    return bool(scores.size and scores.min() >= 0 and scores.max() <= 1)


def class_scores(outputs: Any, probabilities: bool | None = None) -> np.ndarray:
    """(N, classes) scores from a model's first output (numpy). `probabilities`: the model's
    `binary_probabilities`, decided once; None decides from these outputs alone."""
    scores = np.asarray(outputs)
    if scores.ndim == 1:
        scores = scores[:, None]
    if scores.ndim != 2 or scores.shape[1] != 1:
        return scores
    if probabilities is None:
        probabilities = binary_probabilities(scores)
    if probabilities:
        return np.concatenate([1 - scores, scores], axis=1)
    return np.concatenate([np.zeros_like(scores), scores], axis=1)


def two_class_tensor(out: Any, probabilities: bool) -> Any:
    """The same for a torch tensor inside a training or attack loop, where the caller knows whether the model
    answers probabilities (decided once, not per batch). Other shapes are returned as they are."""
    import torch

    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[1] != 1:
        return out
    return torch.cat([1 - out, out] if probabilities else [torch.zeros_like(out), out], dim=1)


def class_indices(labels: Any) -> np.ndarray:
    """Labels as class indices where they plainly are: a (N, 1) column becomes (N,), and whole non-negative floats
    (0.0/1.0 BCE targets, a pandas column) become int64. Anything else is returned as it is, for the caller's
    own check to word."""
    y = np.asarray(labels)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.dtype.kind == "f" and y.size and np.isfinite(y).all() and (y == np.round(y)).all() and y.min() >= 0:
        y = y.astype(np.int64)
    return y
