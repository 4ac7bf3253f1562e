"""Per-request outlier scores, normalised so that 1.0 is the reference's 99th percentile.

| method | used when | raw score (higher = stranger) |
| --- | --- | --- |
| `mahalanobis` | embeddings (penultimate, or tabular inputs) | distance to the nearest class mean (Lee et al. 2018) |
| `energy` | only logits are known | `-logsumexp(logits)` (Liu et al., 2020) |
| `msp` | only probabilities are known | `1 - max probability` |

The normalised score is `(raw - median) / (p99 - median)` of held-out reference scores: 0 is a
typical input, above 1 is an outlier (about 1 in 100 clean inputs).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

Method = Literal["mahalanobis", "energy", "msp"]
QUANTILE = 0.99
SHRINKAGE = 0.1


@dataclass
class OutlierModel:
    method: Method
    median: float
    high: float  # the QUANTILE of held-out reference raw scores
    rate: float  # share of held-out reference inputs scored above `high`: the expected outlier rate
    means: np.ndarray | None = None  # (K, D) class means, mahalanobis only
    precision: np.ndarray | None = None  # (D, D)

    def raw(self, embeddings: np.ndarray | None, logits: np.ndarray | None, outputs: np.ndarray) -> np.ndarray:
        """Raw scores by this model's own method: falling back to another would put them on another scale
        than `median` and `high` (a mahalanobis model scoring `1 - max(outputs)` never finds an outlier)."""
        if self.method == "mahalanobis":
            if embeddings is None:
                raise ValueError("a mahalanobis outlier model needs the embeddings it was fitted on; got none")
            return _mahalanobis(embeddings, self.means, self.precision)  # type: ignore[arg-type]
        if self.method == "energy":
            # fitted where the logits were the model's outputs; a batch that happens to look like
            # probabilities comes without logits
            return -_logsumexp(logits if logits is not None else outputs)
        return 1.0 - outputs.max(axis=1)

    def normalise(self, raw: np.ndarray) -> np.ndarray:
        return (raw - self.median) / max(self.high - self.median, 1e-12)


def fit_outlier_model(embeddings: np.ndarray | None, logits: np.ndarray | None, outputs: np.ndarray,
                      seed: int = 0) -> OutlierModel:
    """Fit on one half of the reference, set the quantiles on the other half (no in-sample optimism)."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(outputs))
    fit, held = order[: len(order) // 2], order[len(order) // 2:]
    if embeddings is not None and len(embeddings) >= 20:
        emb = embeddings.astype(np.float64)
        means, precision = _class_gaussians(emb[fit], outputs[fit])
        model = OutlierModel("mahalanobis", 0.0, 1.0, 0.0, means, precision)
    elif logits is not None:
        model = OutlierModel("energy", 0.0, 1.0, 0.0)
        held = order
    else:
        model = OutlierModel("msp", 0.0, 1.0, 0.0)
        held = order
    raw = model.raw(embeddings[held] if embeddings is not None else None,
                    logits[held] if logits is not None else None, outputs[held])
    model.median, model.high = float(np.median(raw)), float(np.quantile(raw, QUANTILE))
    model.rate = float(np.mean(raw > model.high)) if len(raw) else 1.0 - QUANTILE
    model.rate = max(model.rate, 1.0 - QUANTILE)
    return model


def _class_gaussians(emb: np.ndarray, outputs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    classes = outputs.argmax(axis=1) if outputs.ndim == 2 and outputs.shape[1] > 1 else np.zeros(len(emb), int)
    means, centred = [], []
    for k in np.unique(classes):
        members = emb[classes == k]
        if len(members) < 2:
            continue
        means.append(members.mean(axis=0))
        centred.append(members - means[-1])
    if not means:
        means, centred = [emb.mean(axis=0)], [emb - emb.mean(axis=0)]
    residuals = np.concatenate(centred)
    cov = residuals.T @ residuals / max(len(residuals) - 1, 1)
    scale = np.trace(cov) / len(cov) if len(cov) else 1.0
    shrunk = (1 - SHRINKAGE) * cov + SHRINKAGE * max(scale, 1e-12) * np.eye(len(cov))
    return np.stack(means), np.linalg.pinv(shrunk)


def _mahalanobis(emb: np.ndarray, means: np.ndarray, precision: np.ndarray) -> np.ndarray:
    emb = emb.astype(np.float64)
    # (N, K): squared distances to each class mean, without materialising (N, K, D) differences
    ep = emb @ precision
    d2 = (ep * emb).sum(1)[:, None] - 2.0 * ep @ means.T + ((means @ precision) * means).sum(1)[None, :]
    return np.sqrt(np.maximum(d2.min(axis=1), 0.0))


def _logsumexp(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    top = x.max(axis=1, keepdims=True)
    return (top + np.log(np.exp(x - top).sum(axis=1, keepdims=True)))[:, 0]
