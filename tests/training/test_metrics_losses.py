from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kaon.training.losses import BinaryCrossentropy, CategoricalCrossentropy, CrossEntropy, MeanSquaredError
from kaon.training.metrics import Accuracy, MeanMetric, TopKAccuracy


def test_accuracy_reads_labels_one_hot_and_single_logits():
    scores = torch.tensor([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]])
    labels = torch.tensor([1, 1, 1])
    metric = Accuracy()
    metric.update(scores, labels)
    metric.update(scores, F.one_hot(labels, 2).float())
    assert float(metric.result()) == pytest.approx(2 / 3)
    binary = Accuracy()
    binary.update(torch.tensor([[2.0], [-1.0], [0.5]]), torch.tensor([1.0, 0.0, 0.0]))
    assert float(binary.result()) == pytest.approx(2 / 3)
    probabilities = Accuracy(from_logits=False)
    probabilities.update(torch.tensor([0.9, 0.4]), torch.tensor([1.0, 1.0]))
    assert float(probabilities.result()) == 0.5


def test_top_k_accuracy_and_weighted_mean_of_a_function():
    scores = torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.2, 0.7]])
    top2 = TopKAccuracy(k=2)
    top2.update(scores, torch.tensor([1, 0]))
    assert float(top2.result()) == 0.5 and top2.name == "top_2_accuracy"
    mean = MeanMetric(lambda y_pred, y: y_pred.sum(dim=1).mean(), name="total")
    mean.update(torch.ones(3, 2), torch.zeros(3))
    mean.update(torch.zeros(1, 2), torch.zeros(1))
    assert float(mean.result()) == pytest.approx(1.5)


def test_losses_on_logits_and_on_probabilities_agree():
    logits = torch.randn(5, 4, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 3, 1, 2, 3])
    expected = F.cross_entropy(logits, labels)
    probabilities = logits.softmax(dim=1)
    assert CrossEntropy()(logits, labels) == pytest.approx(float(expected))
    assert CrossEntropy(from_logits=False)(probabilities, labels) == pytest.approx(float(expected), rel=1e-5)
    one_hot = F.one_hot(labels, 4)
    assert CategoricalCrossentropy()(logits, one_hot) == pytest.approx(float(expected), rel=1e-5)
    assert CategoricalCrossentropy(from_logits=False)(probabilities, one_hot) == pytest.approx(
        float(expected), rel=1e-5)
    per_sample = CrossEntropy(reduction="none")(logits, labels)
    assert per_sample.shape == (5,)


def test_binary_and_regression_losses_match_torch():
    logits = torch.tensor([[1.0], [-2.0], [0.5]])
    targets = torch.tensor([1.0, 0.0, 0.0])
    assert BinaryCrossentropy()(logits, targets) == pytest.approx(
        float(F.binary_cross_entropy_with_logits(logits[:, 0], targets)))
    assert BinaryCrossentropy(from_logits=False)(logits.sigmoid(), targets) == pytest.approx(
        float(F.binary_cross_entropy(logits[:, 0].sigmoid(), targets)), rel=1e-5)
    assert MeanSquaredError()(logits, targets) == pytest.approx(float(F.mse_loss(logits[:, 0], targets)))
