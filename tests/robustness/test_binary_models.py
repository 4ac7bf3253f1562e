"""A binary classifier, one logit per sample trained with binary cross-entropy on 0.0/1.0 labels (the Trainer's
own pattern), is optimized and audited like any classifier: optimize and audit refused its (N, 1) output."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import kaon
from kaon.training import Trainer


@pytest.fixture(scope="module")
def binary():
    from sklearn.datasets import load_breast_cancer
    from sklearn.preprocessing import StandardScaler

    x, y = load_breast_cancer(return_X_y=True)
    x = StandardScaler().fit_transform(x).astype(np.float32)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(30, 32), torch.nn.ReLU(), torch.nn.Linear(32, 1))
    Trainer(model, loss="binary_crossentropy", seed=0, track=False).fit(x[:400], y[:400].astype(np.float32),
                                                                        epochs=20, verbose=False)
    model.eval()
    with torch.no_grad():
        expected = float(((model(torch.from_numpy(x[400:]))[:, 0] > 0).numpy() == y[400:]).mean())
    return model, x, y.astype(np.float32), expected


def test_a_binary_model_is_audited_with_its_accuracy_and_attacks(binary):
    model, x, y, expected = binary
    report = kaon.audit(model, data=(x[400:], y[400:]), epsilons=(0.1,), pgd_steps=3)
    assert report.clean_accuracy == pytest.approx(expected, abs=1e-4) and expected > 0.9
    assert 0 <= report.adversarial["fgsm"]["0.1"] < report.clean_accuracy  # the attack used BCE and hurt
    assert report.labels == ["0", "1"] and 0 <= report.ece < 0.2


def test_a_binary_model_is_optimized_within_its_accuracy_budget(binary):
    from kaon.optimization import optimize

    model, x, y, _ = binary
    version = kaon.register(model, "cancer", input_example=x[:2])
    report = optimize(version.ref, calibration_data=(x[400:], y[400:]), methods="onnx,prune-structured",
                      max_accuracy_drop=2.0, num_rounds=1)
    assert report.original.accuracy > 0.9  # on the held-out half of the 169 samples
    assert report.chosen is not None and report.registered == "cancer@2"
    assert report.chosen_variant is not None and report.chosen_variant.accuracy_drop_pts <= 2.0


def test_logit_or_probability_is_decided_once_per_model_not_per_batch():
    """A logit model whose first 8 logits fall in [0, 1] was read as answering probabilities for the attack
    batches (decided on the first 8 rows): accuracy under an attack of 1e-6 was 0.86 against 1.0 clean."""
    from kaon._internal.scores import binary_probabilities
    from kaon.optimization.measure import accuracy

    rng = np.random.default_rng(0)
    x = rng.random((400, 4)).astype(np.float32)
    y = (x[:, 0] > 0.5).astype(np.int64)
    x[:8, 0] = np.linspace(0.55, 0.7, 8)
    y[:8] = 1
    model = torch.nn.Linear(4, 1)
    with torch.no_grad():
        model.weight[:] = torch.tensor([[4.0, 0, 0, 0]])
        model.bias[:] = -2.0
    report = kaon.audit(model, data=(x, y), epsilons=(1e-6,), pgd_steps=1, store=False)
    assert report.clean_accuracy == 1.0 and report.adversarial["fgsm"]["1e-06"] == 1.0
    logits = np.array([[0.2], [0.3], [0.4], [-0.1]], dtype=np.float32)
    assert binary_probabilities(logits) is False
    assert accuracy(logits[:3], np.array([1, 1, 1]), probabilities=False) == 1.0  # z > 0, not p > 0.5
