from __future__ import annotations

import numpy as np
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


def _batches(*arrays, size=37):
    for start in range(0, len(arrays[0]), size):
        yield tuple(torch.as_tensor(a[start:start + size]) for a in arrays)


def test_precision_recall_and_auc_agree_with_scikit_learn_over_batches():
    from sklearn.metrics import precision_score, recall_score, roc_auc_score

    from kaon.training.metrics import METRICS

    rng = np.random.default_rng(0)
    logits = rng.normal(size=(500, 4)).astype(np.float32)
    y = (logits + rng.normal(scale=1.5, size=(500, 4))).argmax(1)  # noisy: neither perfect nor random
    probabilities = torch.softmax(torch.from_numpy(logits), dim=1).numpy()
    binary_logit = rng.normal(size=(500, 1)).astype(np.float32)
    y_binary = (binary_logit[:, 0] + rng.normal(size=500) > 0).astype(np.float32)
    expected = {
        "precision": (precision_score(y, logits.argmax(1), average="macro"),
                      precision_score(y_binary, binary_logit[:, 0] > 0)),
        "recall": (recall_score(y, logits.argmax(1), average="macro"), recall_score(y_binary, binary_logit[:, 0] > 0)),
        "auc": (roc_auc_score(y, probabilities, multi_class="ovr", average="macro"),
                roc_auc_score(y_binary, binary_logit[:, 0])),
    }
    for name, (multi, binary) in expected.items():
        tolerance = 0.005 if name == "auc" else 1e-6  # AUC from 200-bin histograms, as Keras computes it
        metric = METRICS[name](True)
        for y_pred, target in _batches(logits, y):
            metric.update(y_pred, target)
        assert float(metric.result()) == pytest.approx(multi, abs=tolerance), name
        metric.reset()
        for y_pred, target in _batches(binary_logit, y_binary[:, None]):  # a (N, 1) column of 0/1 floats
            metric.update(y_pred, target)
        assert float(metric.result()) == pytest.approx(binary, abs=tolerance), name
    assert 0.6 < expected["auc"][0] < 0.95  # the data is informative and not trivial


def test_metrics_by_name_train_and_log():
    from sklearn.datasets import load_breast_cancer
    from sklearn.preprocessing import StandardScaler

    from kaon.training import Trainer

    x, y = load_breast_cancer(return_X_y=True)
    x = StandardScaler().fit_transform(x).astype(np.float32)
    torch.manual_seed(0)
    model = torch.nn.Linear(30, 1)
    history = Trainer(model, loss="binary_crossentropy", metrics=["accuracy", "precision", "recall", "auc"],
                      seed=0, track=False).fit(x, y.astype(np.float32), epochs=5, validation_split=0.2, verbose=False)
    assert {"precision", "recall", "auc", "val_auc"} <= set(history.history)
    assert history.history["val_auc"][-1] > 0.95
