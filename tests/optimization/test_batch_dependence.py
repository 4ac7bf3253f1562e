"""batch_dependence on real onnxruntime sessions: int8-dynamic answers depend on an input's batch-mates."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from kaon.optimization.measure import batch_dependence, onnx_runner  # noqa: E402
from kaon.optimization.quantize import op_groups, quantize_model  # noqa: E402


def dense(path: Path) -> Path:
    """x (batch, 64) -> MatMul [64x10] -> y: a classifier's last layer."""
    helper, numpy_helper = onnx.helper, onnx.numpy_helper
    w = np.random.default_rng(0).normal(0, 0.3, (64, 10)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="dense")], "dense",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["batch", 64])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["batch", 10])],
        [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_int8_dynamic_outputs_move_with_the_batch_and_fp32_ones_do_not(tmp_path: Path) -> None:
    source = dense(tmp_path / "dense.onnx")
    int8 = quantize_model(source, tmp_path / "int8.onnx", scheme="dynamic", groups=op_groups(source, "dynamic"))
    x = np.random.default_rng(1).random((16, 64), dtype=np.float32)
    x[0] *= 50  # one input with a far wider range: in a batch, every input shares its int8 scale
    fp32_gap, fp32_changed = batch_dependence(onnx_runner(source, num_threads=1), "x", x)
    int8_gap, _ = batch_dependence(onnx_runner(int8, num_threads=1), "x", x)
    assert fp32_gap < 1e-4 and fp32_changed == 0
    assert int8_gap > 1e-2 and int8_gap > 100 * fp32_gap
