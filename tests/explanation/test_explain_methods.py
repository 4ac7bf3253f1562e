"""kaon.explain on tensor models: every method, captum parity, ONNX, targets and the errors a user meets."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

import kaon.explanation as ke
from kaon.errors import InvalidInputError

TENSOR_METHODS = ["integrated_gradients", "saliency", "occlusion", "kernel_shap", "lime"]


def test_integrated_gradients_matches_captum_on_a_torch_export_program(program, trained, probe):
    from captum.attr import IntegratedGradients

    x, _ = probe
    exp = ke.explain(program, x, method="integrated_gradients")
    reference = IntegratedGradients(trained).attribute(torch.from_numpy(x), target=torch.tensor(exp.targets),
                                                       n_steps=50)
    np.testing.assert_allclose(exp.attributions, reference.numpy(), atol=1e-6)
    # completeness: the attributions add up to f(x) - f(baseline) for the explained class
    with torch.no_grad():
        gap = trained(torch.from_numpy(x)) - trained(torch.zeros_like(torch.from_numpy(x)))
    expected = gap[torch.arange(len(x)), torch.tensor(exp.targets)].numpy()
    np.testing.assert_allclose(exp.attributions.reshape(len(x), -1).sum(1), expected, atol=1e-2)


def test_saliency_matches_captum_and_internal_batching_changes_nothing(program, trained, probe):
    from captum.attr import Saliency

    x, _ = probe
    exp = ke.explain(program, x, method="saliency")
    x_t = torch.from_numpy(x).requires_grad_(True)
    reference = Saliency(trained).attribute(x_t, target=torch.tensor(exp.targets))
    np.testing.assert_allclose(exp.attributions, reference.numpy(), atol=1e-6)
    whole = ke.explain(program, x, method="integrated_gradients")
    chunked = ke.explain(program, x, method="integrated_gradients", internal_batch_size=24)
    np.testing.assert_allclose(whole.attributions, chunked.attributions, atol=1e-6)


@pytest.mark.parametrize("method", TENSOR_METHODS)
def test_every_method_gives_input_shaped_attributions_and_a_heatmap(program, probe, method):
    x, y = probe
    exp = ke.explain(program, x[:2], method=method, heatmap=True, n_samples=64)
    assert exp.attributions.shape == (2, 1, 8, 8) and exp.attributions.dtype == np.float32
    assert np.abs(exp.attributions).sum() > 0
    assert exp.targets == exp.predictions.argmax(1).tolist() == y[:2].tolist()
    image = Image.open(io.BytesIO(exp.heatmaps[0]))
    assert image.format == "PNG" and image.size == (256, 256) and image.mode == "RGB"
    top = exp.top_features(3)[0]
    assert len(top) == 3 and abs(top[0][1]) >= abs(top[1][1]) >= abs(top[2][1])
    assert exp.attributions[0][top[0][0]] == pytest.approx(top[0][1])


def test_onnx_models_are_explained_with_forward_passes_and_agree_with_torch(onnx_model, program, probe):
    x, _ = probe
    on_onnx = ke.explain(onnx_model, x[:3], method="occlusion")
    on_torch = ke.explain(program, x[:3], method="occlusion")
    np.testing.assert_allclose(on_onnx.attributions, on_torch.attributions, atol=1e-4)
    assert ke.explain(onnx_model, x[:1], method="kernel_shap", n_samples=64).attributions.shape == (1, 1, 8, 8)


def test_gradients_on_onnx_is_an_error_naming_the_methods_that_work(onnx_model, probe):
    with pytest.raises(InvalidInputError) as info:
        ke.explain(onnx_model, probe[0][:1], method="integrated_gradients")
    message = info.value.message
    assert "onnxruntime" in message and "gradients" in message
    assert "occlusion, kernel_shap, lime" in message and info.value.status_code == 422


def test_attention_on_a_cnn_is_an_error_naming_the_methods_that_work(program, probe):
    with pytest.raises(InvalidInputError) as info:
        ke.explain(program, probe[0][:1], method="attention_rollout")
    assert "transformer" in info.value.message
    assert "saliency, integrated_gradients, occlusion, kernel_shap, lime" in info.value.message
    with pytest.raises(InvalidInputError, match="unknown explanation method"):
        ke.explain(program, probe[0][:1], method="shapley_magic")  # type: ignore[arg-type]


def test_targets_are_checked_and_an_explicit_target_changes_the_answer(program, probe):
    x, _ = probe
    with pytest.raises(InvalidInputError, match=r"target 10 is out of range.*\[0, 9\]"):
        ke.explain(program, x[:2], target=10)
    with pytest.raises(InvalidInputError, match="one integer per input"):
        ke.explain(program, x[:2], target=[1, 2, 3])
    predicted = ke.explain(program, x[:2])
    other = [(t + 1) % 10 for t in predicted.targets]
    forced = ke.explain(program, x[:2], target=other)
    assert forced.targets == other
    assert not np.allclose(forced.attributions, predicted.attributions)


def test_wrong_shapes_say_what_was_expected_and_one_item_needs_no_batch_axis(program, probe):
    x, _ = probe
    with pytest.raises(InvalidInputError, match=r"expected shape \(N, 1, 8, 8\)"):
        ke.explain(program, np.zeros((3, 8, 8), dtype=np.float32))
    with pytest.raises(InvalidInputError, match="must be numbers"):
        ke.explain(program, [["a"]])
    one = ke.explain(program, x[0])  # (1, 8, 8): a single digit
    assert one.attributions.shape == (1, 1, 8, 8)


def test_a_registered_version_and_a_torch_module_are_explained_by_reference(trained, probe):
    import kaon
    from kaon.types import Signature, TensorSpec

    x, _ = probe
    signature = Signature([TensorSpec("image", "float32", (-1, 1, 8, 8))],
                          [TensorSpec("probabilities", "float32", (-1, 10))],
                          labels=[f"digit {i}" for i in range(10)])
    kaon.register(trained, "digits", input_example=x[:2], signature=signature)
    by_ref = ke.explain("digits@latest", x[:2], method="saliency")
    by_module = ke.explain(trained, x[:2], method="saliency")
    np.testing.assert_allclose(by_ref.attributions, by_module.attributions, atol=1e-6)
    assert by_ref.label_of(by_ref.targets[0]).startswith("digit ")


def test_public_names_stay_functions_after_every_submodule_is_imported():
    import importlib
    import pkgutil
    import types

    for info in pkgutil.iter_modules(ke.__path__):
        importlib.import_module(f"kaon.explanation.{info.name}")
    for name in ke.__all__:
        assert not isinstance(getattr(ke, name), types.ModuleType), name


def test_tabular_models_are_explained_and_drawn_as_a_strip():
    torch.manual_seed(0)
    mlp = torch.nn.Sequential(torch.nn.Linear(20, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    x = np.random.default_rng(0).random((4, 20), dtype=np.float32)
    exp = ke.explain(mlp, x, method="integrated_gradients", heatmap=True)
    assert exp.attributions.shape == (4, 20)
    strip = Image.open(io.BytesIO(exp.heatmaps[0]))
    assert strip.size == (20 * strip.height, strip.height) and strip.width <= 1024
    assert ke.explain(mlp, x, method="lime", n_samples=50).attributions.shape == (4, 20)


def test_a_keras_model_on_torch_gets_the_gradient_methods(tmp_path):
    """A Keras 3 model on the torch backend is a torch module whose calls record gradients: integrated
    gradients (the default) works and adds up to the output's change; it said 'needs gradients' before."""
    import keras

    from kaon.models import load_file

    keras.utils.set_random_seed(0)
    net = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="tanh"),
                            keras.layers.Dense(3, activation="softmax")])
    net.save(tmp_path / "m.keras")
    model = load_file(tmp_path / "m.keras")
    x = np.random.default_rng(0).random((4, 8), dtype=np.float32)
    explanation = ke.explain(model, x, n_steps=200)
    assert explanation.method == "integrated_gradients"
    outputs = model.predict(x)
    baseline = model.predict(np.zeros_like(x))
    rows = np.arange(len(x))
    change = outputs[rows, explanation.targets] - baseline[rows, explanation.targets]
    np.testing.assert_allclose(explanation.attributions.sum(axis=1), change, atol=2e-3)  # completeness
    assert ke.randomization_check(model, x, "saliency")["passed"]
