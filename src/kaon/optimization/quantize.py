"""int8 with onnxruntime: dynamic (weights int8, activations quantized on the fly) or static (QDQ, calibrated).

Quantization works per *operator group*: the quantizable operators of a graph, grouped by what
makes int8 pay or not (`Conv (1 input channel)` vs `Conv`, dense layers by weight shape
`MatMul [384x1536]` / `Gemm [288x64]`, `MatMul (activations)`, `Gather (embedding)`).
`profile.py` times (and scores) each group alone; `plan.py` decides which to quantize;
`quantize_model` quantizes exactly those nodes.

    >>> groups = op_groups(prepared, "dynamic")                                                    # doctest: +SKIP
    >>> quantize_model(prepared, Path("int8.onnx"), scheme="dynamic", groups=groups[:1])          # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from kaon._internal.exporters import quiet
from kaon.errors import require
from kaon.optimization.export import clean_metadata, save_onnx

Scheme = Literal["dynamic", "static"]
# Operators each onnxruntime quantizer turns into int8 kernels that carry weights.
_QUANTIZABLE: dict[str, tuple[str, ...]] = {
    "dynamic": ("Conv", "MatMul", "Gemm", "Gather"),
    "static": ("Conv", "MatMul", "Gemm", "Gather"),
}
_CALIBRATION_BATCH = 32


@dataclass(frozen=True)
class OpGroup:
    """Operators of one kind that int8 treats alike, e.g. every Conv on a single input channel."""

    label: str
    op_type: str
    nodes: tuple[str, ...]
    num_weights: int  # elements in the groups' weight tensors (what int8 shrinks 4x)


def prepare(source: Path, target: Path, *, optimize_graph: bool = False) -> tuple[Path, str]:
    """Shape inference the quantizer needs; (path, note). Falls back to a plain copy.

    `optimize_graph` also saves onnxruntime's basic graph optimizations into the file: static
    quantization needs them (a BatchNormalization must be folded into its Conv before QDQ nodes
    separate the two), while for dynamic int8 a graph saved that way ran slower on MiniLM than the
    exported one optimized when the session loads it.
    """
    onnx = require("onnx", "onnx", "Quantizing an ONNX model")
    pre = require("onnxruntime.quantization.shape_inference", "onnx", "Quantizing an ONNX model")
    note = ""
    source, target = source.resolve(), target.resolve()
    try:
        with quiet(), _scratch_cwd():
            pre.quant_pre_process(str(source), str(target), skip_optimization=not optimize_graph)
    except Exception:  # noqa: BLE001 - symbolic shape inference fails on some graphs (capped dims)
        try:
            with quiet(), _scratch_cwd():
                pre.quant_pre_process(str(source), str(target), skip_symbolic_shape=True,
                                      skip_optimization=not optimize_graph)
        except Exception as exc:  # noqa: BLE001 - then quantize the graph as exported
            shutil.copyfile(source, target)
            note = f"quantization pre-processing skipped ({type(exc).__name__}: {str(exc)[:200]})"
    proto = onnx.load(str(target))
    for i, node in enumerate(proto.graph.node):  # nodes_to_quantize selects by name: every node needs one
        if not node.name:
            node.name = f"{node.op_type}_{i}"
    clean_metadata(proto)
    save_onnx(proto, target)
    return target, note


@contextlib.contextmanager
def _scratch_cwd() -> Iterator[None]:
    """Run in a temporary working folder: onnxruntime's symbolic shape inference, when it gives up,
    dumps the whole model (weights included) as sym_shape_infer_temp.onnx + <uuid>.data into the
    current folder."""
    previous = os.getcwd()
    with tempfile.TemporaryDirectory(prefix="kaon-quant-") as scratch:
        os.chdir(scratch)
        try:
            yield
        finally:
            os.chdir(previous)


def op_groups(path: Path, scheme: Scheme) -> list[OpGroup]:
    """The quantizable operator groups of the model at `path`, in graph order."""
    onnx = require("onnx", "onnx", "Quantizing an ONNX model")
    proto = onnx.load(str(path), load_external_data=False)
    shapes = {init.name: tuple(init.dims) for init in proto.graph.initializer}
    groups: dict[str, tuple[str, list[str], int]] = {}
    for node in proto.graph.node:
        if node.op_type not in _QUANTIZABLE[scheme]:
            continue
        label, weights = _label(node, shapes)
        if label is None:
            continue
        op_type, names, count = groups.get(label, (node.op_type, [], 0))
        groups[label] = (op_type, [*names, node.name], count + weights)
    return [OpGroup(label, op_type, tuple(names), count) for label, (op_type, names, count) in groups.items()]


def layer_groups(groups: Sequence[OpGroup]) -> list[OpGroup]:
    """One group per node (`MatMul [1536x384] #2`: the third such layer), to score layers one by one."""
    return [OpGroup(f"{g.label} #{i}", g.op_type, (node,), g.num_weights // len(g.nodes))
            for g in groups for i, node in enumerate(g.nodes)]


def _label(node: Any, shapes: dict[str, tuple[int, ...]]) -> tuple[str | None, int]:
    inputs = list(node.input)
    if node.op_type == "Conv":
        weight = shapes.get(inputs[1]) if len(inputs) > 1 else None
        if weight is None:
            return None, 0
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        single = weight[1] * group == 1
        return ("Conv (1 input channel)" if single else "Conv"), int(np.prod(weight))
    if node.op_type in ("MatMul", "Gemm"):
        weight = shapes.get(inputs[1]) if len(inputs) > 1 else None
        if weight is None or len(weight) != 2:
            return ("MatMul (activations)", 0) if node.op_type == "MatMul" else (None, 0)
        transposed = node.op_type == "Gemm" and any(a.name == "transB" and a.i for a in node.attribute)
        k, n = (weight[1], weight[0]) if transposed else weight
        return f"{node.op_type} [{k}x{n}]", int(np.prod(weight))  # [inputs x outputs], as nn.Linear(k, n)
    if node.op_type == "Gather":
        table = shapes.get(inputs[0])
        return ("Gather (embedding)", int(np.prod(table))) if table is not None and len(table) >= 2 else (None, 0)
    return None, 0


def quantize_blockwise(source: Path, target: Path, *, groups: Sequence[OpGroup], bits: int = 8,
                       block_size: int = 32) -> Path:
    """MatMul weights in `bits`-bit blocks of `block_size` along the input axis (onnxruntime's
    MatMulNBits), with activations quantized per row and block as it computes (accuracy_level 4).

    Finer than dynamic int8, which gives the whole activation tensor of a batch one scale, so one
    outlier token coarsens every other sentence's: on MiniLM's FFN output layers this is what
    brings the worst sentence back above 0.99 cosine, at about fp32 speed for those layers here.
    """
    require("onnxruntime.quantization", "onnx", "Quantizing an ONNX model")
    onnx = require("onnx", "onnx", "Quantizing an ONNX model")
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    config = DefaultWeightOnlyQuantConfig(block_size=block_size, is_symmetric=True, accuracy_level=4, bits=bits,
                                          op_types_to_quantize=("MatMul",))
    nodes = [n for g in groups if g.op_type == "MatMul" for n in g.nodes]
    with quiet():
        quantizer = MatMulNBitsQuantizer(onnx.load(str(source)), nodes_to_include=nodes, algo_config=config)
        quantizer.process()
    proto = quantizer.model.model
    clean_metadata(proto)
    target.parent.mkdir(parents=True, exist_ok=True)
    save_onnx(proto, target)
    return target


def split_outlier_rows(source: Path, target: Path, *, groups: Sequence[OpGroup],
                       calibration: Sequence[dict[str, np.ndarray]], ratio: float = 3.0) -> tuple[Path, list[OpGroup]]:
    """Give the first sequence position its own dynamic int8 scale where it is an outlier.

    Dynamic int8 quantizes a MatMul's whole activation tensor with one scale. In BERT-like encoders the
    first token ([CLS]) has FFN activations several times larger than any other token's in the early
    blocks (MiniLM: up to 24.6 against at most 6.1), so that scale spends ~2 bits of every other token's
    resolution on it. For each dense MatMul of `groups` whose input is (batch, sequence, features) and whose
    position 0 exceeds `ratio` x the largest value at any other position on the `calibration` batches, this
    rewrites `Y = X W` as `Concat(X[:, :1] W, X[:, 1:] W)`: the two MatMuls share W (stored once when
    quantized) and each gets its own scale. Returns the rewritten model and `groups` with the split nodes
    (`<name>_first`, `<name>_rest`) in place of the originals; a model with nothing to split is copied.
    """
    onnx = require("onnx", "onnx", "Quantizing an ONNX model")
    ort = require("onnxruntime", "onnx", "Quantizing an ONNX model")
    helper, numpy_helper = onnx.helper, onnx.numpy_helper
    proto = onnx.load(str(source))
    weights = {init.name for init in proto.graph.initializer}
    wanted = {n for g in groups if g.op_type == "MatMul" for n in g.nodes}
    candidates = {node.name: node.input[0] for node in proto.graph.node
                  if node.name in wanted and node.op_type == "MatMul" and node.input[1] in weights}
    peaks = _first_position_peaks(source, sorted(set(candidates.values())), calibration, ort, onnx)
    split = {name for name, x in candidates.items() if x in peaks and peaks[x][0] > ratio * peaks[x][1]}
    target.parent.mkdir(parents=True, exist_ok=True)
    if not split:
        save_onnx(proto, target)
        return target, list(groups)
    consts = {"kaon_split_0": 0, "kaon_split_1": 1, "kaon_split_end": 2**62}
    proto.graph.initializer.extend(numpy_helper.from_array(np.array([v], np.int64), k) for k, v in consts.items())
    nodes = []
    for node in proto.graph.node:
        if node.name not in split:
            nodes.append(node)
            continue
        (x, w), y, name = node.input, node.output[0], node.name
        nodes += [
            helper.make_node("Slice", [x, "kaon_split_0", "kaon_split_1", "kaon_split_1"], [f"{name}_x_first"],
                             name=f"{name}_slice_first"),
            helper.make_node("Slice", [x, "kaon_split_1", "kaon_split_end", "kaon_split_1"], [f"{name}_x_rest"],
                             name=f"{name}_slice_rest"),
            helper.make_node("MatMul", [f"{name}_x_first", w], [f"{name}_y_first"], name=f"{name}_first"),
            helper.make_node("MatMul", [f"{name}_x_rest", w], [f"{name}_y_rest"], name=f"{name}_rest"),
            helper.make_node("Concat", [f"{name}_y_first", f"{name}_y_rest"], [y], name=f"{name}_concat", axis=1),
        ]
    del proto.graph.node[:]
    proto.graph.node.extend(nodes)
    save_onnx(proto, target)
    renamed = [OpGroup(g.label, g.op_type, tuple(part for n in g.nodes
                                                 for part in ((f"{n}_first", f"{n}_rest") if n in split else (n,))),
                       g.num_weights) for g in groups]
    return target, renamed


def _first_position_peaks(source: Path, names: list[str], calibration: Sequence[dict[str, np.ndarray]], ort: Any,
                          onnx: Any) -> dict[str, tuple[float, float]]:
    """For each 3-D activation in `names`: (largest |value| at position 0, largest at any other position)."""
    if not names or not calibration:
        return {}
    probe = onnx.load(str(source))
    present = {o.name for o in probe.graph.output}
    probe.graph.output.extend(onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None)
                              for n in names if n not in present)
    with tempfile.TemporaryDirectory(prefix="kaon-probe-") as scratch:
        path = Path(scratch) / "probe.onnx"
        save_onnx(probe, path)
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        outputs = [o.name for o in session.get_outputs()]
        peaks: dict[str, tuple[float, float]] = {}
        for batch in calibration:
            for name, value in zip(outputs, session.run(None, batch), strict=True):
                if name not in names or value.ndim != 3 or value.shape[1] < 2:
                    continue
                first, rest = float(np.abs(value[:, 0]).max()), float(np.abs(value[:, 1:]).max())
                old = peaks.get(name, (0.0, 0.0))
                peaks[name] = (max(old[0], first), max(old[1], rest))
    return peaks


class _Reader:
    """onnxruntime's CalibrationDataReader protocol over in-memory batches."""

    def __init__(self, batches: Sequence[dict[str, np.ndarray]]) -> None:
        self._batches = list(batches)
        self._next = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._next >= len(self._batches):
            return None
        self._next += 1
        return self._batches[self._next - 1]

    def rewind(self) -> None:
        self._next = 0


def calibration_batches(inputs: dict[str, np.ndarray], num_samples: int) -> list[dict[str, np.ndarray]]:
    n = min(num_samples, len(next(iter(inputs.values()))))
    return [{k: np.ascontiguousarray(v[i:i + _CALIBRATION_BATCH]) for k, v in inputs.items()}
            for i in range(0, n, _CALIBRATION_BATCH)]


def quantize_model(source: Path, target: Path, *, scheme: Scheme, groups: Sequence[OpGroup],
                   calibration: Sequence[dict[str, np.ndarray]] | None = None) -> Path:
    """Quantize exactly the nodes of `groups` in `source` (a `prepare`d model) and write `target`."""
    quantization = require("onnxruntime.quantization", "onnx", "Quantizing an ONNX model")
    onnx = require("onnx", "onnx", "Quantizing an ONNX model")
    nodes = [n for g in groups for n in g.nodes]
    op_types = {g.op_type for g in groups}
    if scheme == "dynamic" and "Gemm" in op_types:
        # The dynamic quantizer first rewrites each Gemm as MatMul '<name>_MatMul' (+ Add), then
        # selects nodes by name: name the MatMuls it will quantize.
        nodes += [f"{n}_MatMul" for g in groups if g.op_type == "Gemm" for n in g.nodes]
        op_types.add("MatMul")
    big = source.stat().st_size > 1_500_000_000
    target.parent.mkdir(parents=True, exist_ok=True)
    with quiet():
        if scheme == "dynamic":
            quantization.quantize_dynamic(
                str(source), str(target), op_types_to_quantize=sorted(op_types), nodes_to_quantize=nodes,
                weight_type=quantization.QuantType.QInt8, per_channel=True, use_external_data_format=big,
                extra_options={"MatMulConstBOnly": "MatMul (activations)" not in {g.label for g in groups}},
            )
        else:
            if not calibration:
                raise ValueError("static quantization needs calibration batches")
            quantization.quantize_static(
                str(source), str(target), _Reader(calibration), quant_format=quantization.QuantFormat.QDQ,
                op_types_to_quantize=sorted(op_types), nodes_to_quantize=nodes, per_channel=True,
                activation_type=quantization.QuantType.QUInt8, weight_type=quantization.QuantType.QInt8,
                use_external_data_format=big,
                extra_options={"MatMulConstBOnly": "MatMul (activations)" not in {g.label for g in groups}},
            )
    proto = onnx.load(str(target))
    clean_metadata(proto)
    save_onnx(proto, target)
    return target
