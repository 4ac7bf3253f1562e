"""Trusting an explanation: deletion/insertion faithfulness beats a random order, and attributions change
when the model's weights are randomized (and a model with no weights fails that check)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import kaon.explanation as ke
from kaon.errors import InvalidInputError
from kaon.models.torch import TorchModel


@pytest.mark.parametrize("method", ["integrated_gradients", "occlusion", "saliency", "lime"])
def test_attributions_rank_features_better_than_a_random_order(program, probe, method):
    x, _ = probe
    exp = ke.explain(program, x, method=method, n_samples=100)
    scores = ke.faithfulness(program, exp)
    # removing the top-ranked pixels first destroys the prediction sooner than a random order ...
    assert scores["deletion_auc"] < scores["random_deletion_auc"] - 0.1
    # ... and adding them first restores it sooner
    assert scores["insertion_auc"] > scores["random_insertion_auc"] + 0.05
    assert scores["faithfulness"] > 0.15


def test_integrated_gradients_is_more_faithful_than_plain_gradients(program, probe):
    x, _ = probe
    ig = ke.faithfulness(program, ke.explain(program, x, method="integrated_gradients"))
    saliency = ke.faithfulness(program, ke.explain(program, x, method="saliency"))
    assert ig["faithfulness"] > saliency["faithfulness"]


@pytest.mark.parametrize("method", ["integrated_gradients", "saliency", "occlusion"])
def test_attributions_change_when_the_weights_are_randomized(program, probe, method):
    x, _ = probe
    check = ke.randomization_check(program, x, method)
    assert check["passed"] and check["rank_correlation"] < 0.5


def test_a_model_without_weights_fails_the_randomization_check(probe):
    # Flatten + softmax has no weights: redrawing them changes nothing, so the attributions cannot change.
    x, _ = probe
    weightless = TorchModel.from_module(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Softmax(dim=1)), x[:2])
    check = ke.randomization_check(weightless, x[:4], "saliency")
    assert not check["passed"] and check["rank_correlation"] > 0.99


def test_inputs_equal_to_the_baseline_skip_the_randomization_check(program, probe):
    """All-zero inputs give all-zero integrated gradients: the check said FAILED (correlation +1 of ties)."""
    x, _ = probe
    check = ke.randomization_check(program, np.zeros_like(x[:3]), "integrated_gradients")
    assert "passed" not in check and "every attribution is zero" in check["skipped"]


def test_trust_skips_the_randomization_check_for_onnx_and_reports_per_method(onnx_model, program, probe):
    x, _ = probe
    on_onnx = ke.trust(onnx_model, ke.explain(onnx_model, x[:4], method="occlusion"))
    assert "onnxruntime" in on_onnx["randomization"]["skipped"] and on_onnx["faithfulness"]["faithfulness"] > 0
    report = ke.trust_report(program, x[:4], ["integrated_gradients", "occlusion"])
    assert set(report) == {"integrated_gradients", "occlusion"}
    assert all(entry["randomization"]["passed"] for entry in report.values())
    with pytest.raises(InvalidInputError, match="torch"):
        ke.randomization_check(onnx_model, x[:2], "occlusion")


def test_randomized_copy_leaves_the_original_model_untouched(program, probe):
    from kaon.explanation._tensor import TensorAdapter
    from kaon.explanation.checks import randomized_copy

    x, _ = probe
    adapter = TensorAdapter(program)
    before = adapter.predict(x)
    copy = randomized_copy(adapter)
    np.testing.assert_array_equal(adapter.predict(x), before)
    assert not np.allclose(copy.predict(x), before, atol=1e-3)
