"""The channels-last flatten rewrite: same outputs, weights permuted, kept only where onnxruntime folds it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from kaon.optimization import export_onnx
from kaon.optimization.layout import channels_last_flatten


def small_cnn(channels: int = 16, dense: int = 16) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, channels, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(channels * 9, dense), nn.ReLU(), nn.Linear(dense, 10), nn.Softmax(dim=1)).eval()


def run(path: Path, x: np.ndarray, optimized: Path | None = None) -> np.ndarray:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    if optimized is not None:
        options.optimized_model_filepath = str(optimized)
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def test_exported_cnn_reads_channels_last_with_the_same_outputs(tmp_path):
    x = np.random.default_rng(0).random((64, 1, 8, 8), dtype=np.float32)
    path = export_onnx(small_cnn(), {"image": x[:2]}, tmp_path / "model.onnx", output_names=["probabilities"]).path
    before = run(path, x)
    weights_before = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer}

    assert channels_last_flatten(path) == 1

    graph = onnx.load(str(path)).graph
    transpose = next(n for n in graph.node if n.op_type == "Transpose")
    assert list(transpose.attribute[0].ints) == [0, 2, 3, 1]
    assert [n.op_type for n in graph.node].index("Transpose") == [n.op_type for n in graph.node].index("Reshape") - 1
    np.testing.assert_allclose(run(path, x, optimized=tmp_path / "optimized.onnx"), before, atol=1e-6)
    # the dense weights were permuted (not just left alone), and nothing else changed
    changed = {i.name for i in graph.initializer
               if not np.array_equal(numpy_helper.to_array(i), weights_before[i.name])}
    assert len(changed) == 1 and sorted(numpy_helper.to_array(next(
        i for i in graph.initializer if i.name in changed)).ravel()) == pytest.approx(
        sorted(weights_before[changed.pop()].ravel()))
    # onnxruntime folded the transpose into its layout reorder: no Transpose runs
    optimized = onnx.load(str(tmp_path / "optimized.onnx")).graph.node
    assert not [n for n in optimized if n.op_type == "Transpose"]
    reorders = [n for n in optimized if n.op_type == "ReorderOutput"]
    assert any(a.name == "channels_last" and a.i == 1 for n in reorders for a in n.attribute)


def dense_after_flatten(tmp_path: Path, *, conv: bool, op: str = "MatMul", shared: bool = False) -> Path:
    """image (N,1,4,4) -> [Conv 1->16 3x3 ->] Flatten -> MatMul / Gemm(transB=1) -> Y (N,5)."""
    rng = np.random.default_rng(1)
    channels, side = (16, 2) if conv else (1, 4)
    k = channels * side * side
    inits = [numpy_helper.from_array(rng.standard_normal((16, 1, 3, 3)).astype(np.float32), "cw")] if conv else []
    weight = rng.standard_normal((5, k) if op == "Gemm" else (k, 5)).astype(np.float32)
    inits.append(numpy_helper.from_array(weight, "w"))
    nodes = [helper.make_node("Conv", ["image", "cw"], ["h"])] if conv else []
    nodes.append(helper.make_node("Flatten", ["h" if conv else "image"], ["flat"], axis=1))
    if op == "Gemm":
        nodes.append(helper.make_node("Gemm", ["flat", "w"], ["y"], transB=1))
    else:
        nodes.append(helper.make_node("MatMul", ["flat", "w"], ["y"]))
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 5])]
    if shared:  # a second node reads the same weight: permuting it would change that node
        nodes.append(helper.make_node("MatMul", ["flat", "w"], ["y2"]))
        outputs.append(helper.make_tensor_value_info("y2", TensorProto.FLOAT, ["n", 5]))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["n", 1, 4, 4])],
                              outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / f"{op}-{conv}-{shared}.onnx"
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize("op", ["MatMul", "Gemm"])
def test_both_weight_layouts_are_permuted_to_the_same_function(tmp_path, op):
    path = dense_after_flatten(tmp_path, conv=True, op=op)
    x = np.random.default_rng(2).random((8, 1, 4, 4), dtype=np.float32)
    before = run(path, x)
    assert channels_last_flatten(path) == 1
    np.testing.assert_allclose(run(path, x), before, rtol=1e-5, atol=1e-5)


def test_nothing_to_gain_leaves_the_file_as_it_was(tmp_path):
    # a single channel (no layout to change), and a weight another node shares
    for path in (dense_after_flatten(tmp_path, conv=False), dense_after_flatten(tmp_path, conv=True, shared=True)):
        original = path.read_bytes()
        assert channels_last_flatten(path) == 0
        assert path.read_bytes() == original


def test_a_transpose_onnxruntime_would_run_is_not_added(tmp_path):
    """A flatten right after the graph input: no blocked layout to fold the transpose into, so no rewrite."""
    rng = np.random.default_rng(3)
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["image"], ["flat"], axis=1), helper.make_node("MatMul", ["flat", "w"], ["y"])],
        "g", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["n", 4, 2, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])],
        [numpy_helper.from_array(rng.standard_normal((16, 3)).astype(np.float32), "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "input-flatten.onnx"
    onnx.save(model, str(path))
    original = path.read_bytes()
    assert channels_last_flatten(path) == 0
    assert path.read_bytes() == original
