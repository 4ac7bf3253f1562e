"""Layout rewrites: let a CNN's flatten read channels-last where onnxruntime's blocked layout makes that free.

On x86 CPUs onnxruntime runs convolutions and pooling in a blocked layout (NCHWc) and inserts a
`ReorderOutput` back to NCHW before a Flatten/Reshape. When the graph transposes to NHWC there
instead, onnxruntime writes NHWC straight from the blocked layout (`ReorderOutput` with
`channels_last=1`), a contiguous copy rather than a strided gather. So `flatten(x) @ W` becomes
`flatten(transpose(x, NHWC)) @ W'`, with the rows of W permuted to match: the same function (only
the order of the sums changes), ~6% faster on the pruned digits CNN at batch 64 (25.0 -> 23.2 us).

    >>> channels_last_flatten(Path("model.onnx"))                                   # doctest: +SKIP
    1

A rewrite is kept only where onnxruntime folds the transpose away (checked on the graph the session
optimizes); elsewhere the file is left as it was, so the rewrite never adds an operator that runs.
"""

from __future__ import annotations

import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from kaon.errors import require
from kaon.optimization.export import save_onnx

__all__ = ["channels_last_flatten"]

_NHWC = (0, 2, 3, 1)


def channels_last_flatten(path: Path) -> int:
    """Rewrite `path` in place; return how many flattens now read channels-last (0: the file is unchanged)."""
    onnx = require("onnx", "onnx", "Optimizing an ONNX model")
    proto = onnx.load(str(path))
    rewrites = _candidates(proto, onnx)
    if not rewrites:
        return 0
    _apply(proto, rewrites, onnx)
    with tempfile.TemporaryDirectory(prefix="kaon-layout-") as scratch:
        trial = save_onnx(proto, Path(scratch) / "model.onnx")
        if _transposes_run(trial) > _transposes_run(path):
            return 0
    save_onnx(proto, path)
    return len(rewrites)


def _candidates(proto: Any, onnx: Any) -> list[tuple[Any, tuple[int, int, int], list[Any]]]:
    """(flatten node, (C, H, W) of its input, dense nodes reading it) for each flatten that can be rewritten."""
    graph = proto.graph
    inferred = onnx.shape_inference.infer_shapes(proto).graph
    shapes: dict[str, list[int]] = {  # a symbolic or unknown dimension reads 0
        info.name: [int(d.dim_value) for d in info.type.tensor_type.shape.dim]
        for info in (*inferred.value_info, *inferred.input, *inferred.output)
        if info.type.tensor_type.HasField("shape")}
    weights = {init.name: init for init in graph.initializer}
    users: dict[str, list[Any]] = defaultdict(list)
    for node in graph.node:
        for name in node.input:
            users[name].append(node)
    outputs = {o.name for o in graph.output}
    found = []
    for node in graph.node:
        if node.op_type not in ("Flatten", "Reshape") or _attribute(node, "axis", 1) != 1:
            continue
        dims, flat = shapes.get(node.input[0]), shapes.get(node.output[0])
        if dims is None or len(dims) != 4 or min(dims[1:]) <= 0:
            continue
        c, h, w = dims[1:]
        if c == 1 or h * w == 1 or flat is None or len(flat) != 2 or flat[1] != c * h * w:
            continue
        dense = users[node.output[0]]
        if node.output[0] in outputs or not dense or not all(_reads_flat(d, node.output[0], weights, users)
                                                                for d in dense):
            continue
        found.append((node, (c, h, w), dense))
    return found


def _reads_flat(node: Any, flat: str, weights: dict[str, Any], users: dict[str, list[Any]]) -> bool:
    """Whether `node` is a dense layer with `flat` as its activations and a weight no other node shares."""
    if node.op_type not in ("Gemm", "MatMul") or node.input[0] != flat or node.input[1] not in weights:
        return False
    if node.op_type == "Gemm" and _attribute(node, "transA", 0):
        return False
    return len(weights[node.input[1]].dims) == 2 and len(users[node.input[1]]) == 1


def _apply(proto: Any, rewrites: list[tuple[Any, tuple[int, int, int], list[Any]]], onnx: Any) -> None:
    helper, numpy_helper = onnx.helper, onnx.numpy_helper
    weights = {init.name: init for init in proto.graph.initializer}
    transposes = {}
    for flatten, (c, h, w), dense in rewrites:
        source = flatten.input[0]
        transposes[flatten.name or flatten.output[0]] = helper.make_node(
            "Transpose", [source], [f"{source}_nhwc"], name=f"{source}_nhwc", perm=list(_NHWC))
        flatten.input[0] = f"{source}_nhwc"
        for node in dense:
            init = weights[node.input[1]]
            array = numpy_helper.to_array(init)
            if node.op_type == "Gemm" and _attribute(node, "transB", 0):  # (out, C*H*W)
                permuted = array.reshape(-1, c, h, w).transpose(0, 2, 3, 1).reshape(array.shape)
            else:  # (C*H*W, out)
                permuted = array.reshape(c, h, w, -1).transpose(1, 2, 0, 3).reshape(array.shape)
            init.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(permuted), init.name))
    nodes = []
    for node in proto.graph.node:
        transpose = transposes.get(node.name or node.output[0])
        if transpose is not None:
            nodes.append(transpose)
        nodes.append(node)
    del proto.graph.node[:]
    proto.graph.node.extend(nodes)


def _transposes_run(path: Path) -> int:
    """How many Transpose operators are left once onnxruntime's CPU session has optimized `path`'s graph."""
    ort = require("onnxruntime", "onnx", "Optimizing an ONNX model")
    onnx = require("onnx", "onnx", "Optimizing an ONNX model")
    with tempfile.TemporaryDirectory(prefix="kaon-layout-") as scratch:
        optimized = Path(scratch) / "optimized.onnx"
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.optimized_model_filepath = str(optimized)
        options.log_severity_level = 3  # saving an NCHWc graph warns that it is hardware-specific: this is a probe
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        return sum(1 for node in onnx.load(str(optimized), load_external_data=False).graph.node
                   if node.op_type == "Transpose")


def _attribute(node: Any, name: str, default: int) -> int:
    for attribute in node.attribute:
        if attribute.name == name:
            return int(attribute.i)
    return default
