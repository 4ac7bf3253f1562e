"""Calibration: does a confidence of 0.9 mean right nine times in ten?

Expected calibration error (Guo et al., 2017): bin the predictions by confidence (the top
probability), and average |accuracy - confidence| over the bins, weighted by how many fall in each.

    >>> probs = np.array([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8]])
    >>> round(expected_calibration_error(probs, np.array([0, 1, 1]), num_bins=10), 3)
    0.3
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class ReliabilityBins:
    """Per confidence bin: its edges, the number of predictions, their mean confidence and accuracy."""

    edges: list[float]
    counts: list[int]
    confidence: list[float]
    accuracy: list[float]


def reliability_bins(probabilities: np.ndarray, labels: np.ndarray, num_bins: int = 15) -> ReliabilityBins:
    confidence = probabilities.max(axis=1)
    correct = (probabilities.argmax(axis=1) == labels).astype(np.float64)
    edges = np.linspace(0.0, 1.0, num_bins + 1)
    index = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, num_bins - 1)
    counts, conf, acc = [], [], []
    for b in range(num_bins):
        members = index == b
        counts.append(int(members.sum()))
        conf.append(float(confidence[members].mean()) if members.any() else 0.0)
        acc.append(float(correct[members].mean()) if members.any() else 0.0)
    return ReliabilityBins([float(e) for e in edges], counts, conf, acc)


def expected_calibration_error(probabilities: np.ndarray, labels: np.ndarray, num_bins: int = 15) -> float:
    bins = reliability_bins(probabilities, labels, num_bins)
    total = max(1, sum(bins.counts))
    return float(sum(n / total * abs(a - c) for n, a, c in zip(bins.counts, bins.accuracy, bins.confidence,
                                                                strict=True)))


def plot_reliability(bins: ReliabilityBins, path: Path, title: str = "Reliability diagram") -> Path:
    """A PNG: accuracy per confidence bin against the diagonal of perfect calibration, counts beneath."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    edges = np.asarray(bins.edges)
    centers = (edges[:-1] + edges[1:]) / 2
    width = edges[1] - edges[0]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(5, 6), height_ratios=[3, 1], sharex=True)
    filled = np.asarray(bins.counts) > 0
    top.bar(centers[filled], np.asarray(bins.accuracy)[filled], width=width * 0.95, color="#2563eb",
            edgecolor="#1e3a8a", label="accuracy")
    accuracy, confidence = np.asarray(bins.accuracy)[filled], np.asarray(bins.confidence)[filled]
    top.bar(centers[filled], np.abs(confidence - accuracy), bottom=np.minimum(accuracy, confidence),
            width=width * 0.95, color="#dc2626", alpha=0.35, label="gap to mean confidence")
    top.plot([0, 1], [0, 1], "--", color="black", linewidth=1, label="perfect calibration")
    top.set_ylabel("accuracy")
    top.set_ylim(0, 1)
    top.set_title(title)
    top.legend(loc="upper left", fontsize=8)
    bottom.bar(centers, bins.counts, width=width * 0.95, color="#6b7280")
    bottom.set_xlabel("confidence (top probability)")
    bottom.set_ylabel("count")
    bottom.set_xlim(0, 1)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
