"""shap's explainers through kaon.explain (the shap extra), on the trained digits CNN: torch and ONNX."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

import kaon.explanation as ke
from kaon.errors import InvalidInputError, MissingDependencyError


def _target_outputs(model: torch.nn.Module, x: np.ndarray, targets: list[int]) -> np.ndarray:
    with torch.no_grad():
        out = model(torch.from_numpy(x))
    return out[torch.arange(len(x)), torch.tensor(targets)].numpy()


def test_shap_gradient_adds_up_to_the_gap_from_the_background_mean(program, trained, probe, digits):
    x, y = probe
    background = digits[0][:16]
    state = np.random.get_state()
    exp = ke.explain(program, x[:4], method="shap_gradient", background=background, n_samples=600)
    assert exp.attributions.shape == (4, 1, 8, 8) and exp.attributions.dtype == np.float32
    assert np.isfinite(exp.attributions).all() and exp.targets == y[:4].tolist()
    # expected gradients are complete in expectation: sum = f(x) - E[f(background)], up to sampling noise
    # (measured: mean error ~0.04 at 600 samples; explaining a wrong class would miss by ~1)
    gap = np.array([_target_outputs(trained, x[i: i + 1], [t])[0]
                    - _target_outputs(trained, background, [t] * len(background)).mean()
                    for i, t in enumerate(exp.targets)])
    error = np.abs(exp.attributions.reshape(4, -1).sum(1) - gap)
    assert error.mean() < 0.1 and error.max() < 0.25, (error, gap)
    assert np.array_equal(np.random.get_state()[1], state[1])  # the caller's numpy generator is left alone
    again = ke.explain(program, x[:4], method="shap_gradient", background=background, n_samples=600)
    np.testing.assert_array_equal(exp.attributions, again.attributions)  # seeded


def test_shap_permutation_on_onnx_adds_up_exactly_and_ranks_pixels_as_integrated_gradients_does(
        onnx_model, program, trained, probe):
    x, _ = probe
    exp = ke.explain(onnx_model, x[:4], method="shap_permutation", n_samples=260)
    assert exp.attributions.shape == (4, 1, 8, 8) and np.isfinite(exp.attributions).all()
    # an 8x8 digit has 64 one-pixel patches; each permutation walk is exactly efficient
    gap = _target_outputs(trained, x[:4], exp.targets) - _target_outputs(trained, np.zeros_like(x[:4]), exp.targets)
    np.testing.assert_allclose(exp.attributions.reshape(4, -1).sum(1), gap, atol=1e-4)
    ig = ke.explain(program, x[:4], method="integrated_gradients")
    k = 10
    overlap = [len(set(np.argsort(-a.reshape(-1))[:k]) & set(np.argsort(-b.reshape(-1))[:k]))
               for a, b in zip(exp.attributions, ig.attributions, strict=True)]
    assert np.mean(overlap) > 3 * k * k / 64, overlap  # chance: k * k / 64 = 1.6 pixels


def test_shap_gradient_on_onnx_is_an_error_naming_the_methods_that_work(onnx_model, probe):
    with pytest.raises(InvalidInputError) as info:
        ke.explain(onnx_model, probe[0][:1], method="shap_gradient")
    message = info.value.message
    assert "needs gradients" in message and "onnxruntime" in message
    assert "occlusion, kernel_shap, lime, shap_permutation." in message


def test_a_background_is_for_shap_methods_and_has_the_input_shape(program, probe):
    x, _ = probe
    with pytest.raises(InvalidInputError, match="background is a sample for shap's methods"):
        ke.explain(program, x[:1], method="integrated_gradients", background=x)
    with pytest.raises(InvalidInputError, match=r"expected shape \(N, 1, 8, 8\)"):
        ke.explain(program, x[:1], method="shap_gradient", background=np.zeros((4, 8, 8, 1), np.float32))


def test_without_shap_its_methods_are_not_offered_and_asking_names_the_extra(program, probe, monkeypatch):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "shap" else find_spec(name, *a))
    monkeypatch.setitem(sys.modules, "shap", None)  # import shap -> ImportError
    assert ke.methods.tensor_methods(True) == ["saliency", "integrated_gradients", "occlusion", "kernel_shap", "lime"]
    with pytest.raises(MissingDependencyError, match=r"pip install 'kaon\[shap\]'"):
        ke.explain(program, probe[0][:1], method="shap_permutation")
