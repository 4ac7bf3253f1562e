"""OnnxModel.run skips the general validation only for inputs that already match; behaviour is unchanged."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kaon.errors import InvalidInputError
from kaon.models.onnx import OnnxModel
from kaon.optimization import export_onnx


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10)).eval()
    path = tmp_path_factory.mktemp("fast") / "model.onnx"
    export_onnx(module, {"image": np.zeros((2, 1, 8, 8), np.float32)}, path, output_names=["logits"])
    return OnnxModel(path), module


def test_fast_path_equals_onnxruntime(model):
    onnx_model, module = model
    x = np.random.default_rng(0).random((5, 1, 8, 8), dtype=np.float32)
    out = onnx_model.run({"image": x})
    assert list(out) == ["logits"]
    np.testing.assert_array_equal(out["logits"], onnx_model.session.run(["logits"], {"image": x})[0])
    with torch.no_grad():
        np.testing.assert_allclose(out["logits"], module(torch.from_numpy(x)).numpy(), atol=1e-5)


def test_other_inputs_take_the_general_path(model):
    onnx_model, _ = model
    x = np.random.default_rng(1).random((3, 1, 8, 8))
    np.testing.assert_allclose(onnx_model.run({"image": x})["logits"],  # float64 is cast
                               onnx_model.run({"image": x.astype(np.float32)})["logits"], atol=1e-6)
    np.testing.assert_allclose(onnx_model.predict(x.astype(np.float32).tolist()),  # nested lists too
                               onnx_model.predict(x.astype(np.float32)), atol=1e-6)
    with pytest.raises(InvalidInputError, match=r"expected shape \(N, 1, 8, 8\)"):
        onnx_model.run({"image": np.zeros((3, 8, 8), np.float32)})
    with pytest.raises(InvalidInputError, match="expects inputs"):
        onnx_model.run({"image": np.zeros((3, 1, 8, 8), np.float32), "extra": np.zeros(1)})
    with pytest.raises(InvalidInputError):
        onnx_model.run({"image": np.zeros((3, 1, 9, 8), np.float32)})  # a fixed axis that does not match


def test_fixed_axes_are_checked_beside_a_dynamic_one(tmp_path):
    module = torch.nn.Linear(4, 3).eval()  # (N, T, 4) -> (N, T, 3): T is dynamic, 4 is not
    path = tmp_path / "seq.onnx"
    export_onnx(module, {"x": np.zeros((2, 5, 4), np.float32)}, path, output_names=["y"], dynamic_axes={"x": [1]})
    model = OnnxModel(path)
    assert model.signature.inputs[0].shape == (-1, -1, 4)
    assert model.run({"x": np.ones((3, 7, 4), np.float32)})["y"].shape == (3, 7, 3)
    with pytest.raises(InvalidInputError, match=r"expected shape \(N, \?, 4\)"):
        model.run({"x": np.ones((3, 7, 5), np.float32)})
