"""Export a model to ONNX, and check the export against the original on real inputs.

    >>> path = Path("model.onnx")
    >>> result = export_onnx(program, {"image": x[:2]}, path, output_names=["probabilities"])  # doctest: +SKIP
    >>> compare_outputs(torch_probs, onnx_probs).ok                                           # doctest: +SKIP
    True

torch: the dynamo exporter (torch.export -> ONNX) first, the TorchScript exporter as fallback.
Keras 3 (torch backend): Keras's own `model.export(format="onnx")`. When every exporter fails,
`UnexportableModelError` carries each exporter's reason and the module at fault.
"""

from __future__ import annotations

import contextlib
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kaon._internal.exporters import ANSI, quiet, summarize
from kaon._internal.scores import probabilities
from kaon.errors import InvalidInputError, UnexportableModelError, require

# Above this, weights go to a `.onnx.data` file beside the model (protobuf's limit is 2 GiB).
_EXTERNAL_DATA_BYTES = 1_500_000_000
_PARITY_MAX_ABS_DIFF = 1e-3
_PARITY_MIN_AGREEMENT = 0.99


@dataclass(frozen=True)
class ExportResult:
    path: Path
    exporter: str  # 'dynamo' | 'torchscript' | 'keras'
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Parity:
    """How far an export's outputs are from the original's: probabilities' max abs diff, top-1 agreement."""

    max_abs_diff: float
    top1_agreement: float
    num_samples: int

    @property
    def ok(self) -> bool:
        return self.max_abs_diff <= _PARITY_MAX_ABS_DIFF and self.top1_agreement >= _PARITY_MIN_AGREEMENT

    def describe(self) -> str:
        return (f"max abs diff of probabilities {self.max_abs_diff:.2e}, top-1 agreement "
                f"{self.top1_agreement:.2%} on {self.num_samples} held-out inputs")


def to_probabilities(outputs: np.ndarray, binary_probabilities: bool | None = None) -> np.ndarray:
    """Rows that already are probabilities stay; anything else (logits) goes through a softmax. A binary
    model's one output becomes two classes (kaon._internal.scores), read as `binary_probabilities` says."""
    return probabilities(np.asarray(outputs, dtype=np.float64), binary_probabilities)


def compare_outputs(reference: np.ndarray, candidate: np.ndarray, binary_probabilities: bool | None = None
                    ) -> Parity:
    ref = to_probabilities(reference, binary_probabilities)
    cand = to_probabilities(candidate, binary_probabilities)
    if ref.shape != cand.shape:
        raise InvalidInputError(f"the export's output has shape {cand.shape}; the original's is {ref.shape}.")
    diff = float(np.abs(ref - cand).max()) if ref.size else 0.0
    agreement = float(np.mean(ref.argmax(axis=-1) == cand.argmax(axis=-1))) if ref.ndim >= 2 else 1.0
    return Parity(diff, agreement, int(len(ref)))


def export_onnx(model: Any, example: dict[str, np.ndarray], path: Path, *, output_names: list[str],
                dynamic_axes: dict[str, list[int]] | None = None) -> ExportResult:
    """Write `model` (ExportedProgram, nn.Module or Keras model) to `path` as ONNX; inputs named as `example`.

    Axis 0 of every input is dynamic, plus the axes in `dynamic_axes` (e.g. a sequence length).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    input_names = list(example)
    axes = {name: sorted({0, *(dynamic_axes or {}).get(name, [])}) for name in input_names}
    example = {k: _batch_of_two(np.asarray(v)) for k, v in example.items()}
    if _is_keras(model):
        proto = _export_keras(model, example)
        exporter, notes = "keras", list[str]()
    else:
        proto, exporter, notes = _export_torch(model, example, axes, output_names)
    _rename_io(proto, input_names, output_names)
    clean_metadata(proto)
    save_onnx(proto, path)
    return ExportResult(path, exporter, notes)


def save_onnx(proto: Any, path: Path) -> Path:
    """Save a ModelProto; weights go to `<name>.data` beside it only when the model is too big for one file."""
    onnx = require("onnx", "onnx", "Writing an ONNX model")
    big = proto.ByteSize() > _EXTERNAL_DATA_BYTES
    data = path.with_name(path.name + ".data")
    data.unlink(missing_ok=True)
    onnx.save_model(proto, str(path), save_as_external_data=big, all_tensors_to_one_file=True,
                    location=data.name if big else None)
    return path


def onnx_files(path: Path) -> dict[str, Path]:
    """The files an ONNX model is made of, named as a registered version names them."""
    files = {"model.onnx": path}
    data = path.with_name(path.name + ".data")
    if data.exists():
        files["model.onnx.data"] = data
    return files


def clean_metadata(proto: Any) -> None:
    """Drop per-node stack traces and docs: they leak local paths and, on a small model, weigh ~15%."""
    for node in proto.graph.node:
        del node.metadata_props[:]
        node.doc_string = ""
    proto.graph.doc_string = ""


# ---- torch -----------------------------------------------------------------------------------------


def _export_torch(model: Any, example: dict[str, np.ndarray], axes: dict[str, list[int]],
                  output_names: list[str]) -> tuple[Any, str, list[str]]:
    torch = require("torch", "torch", "Exporting a PyTorch model to ONNX")
    args = tuple(torch.from_numpy(np.ascontiguousarray(v)) for v in example.values())
    program, module = _program_and_module(model, args, axes)
    reasons: list[str] = []
    try:
        import onnxscript  # noqa: F401 - the dynamo exporter's dependency
    except ImportError:
        reasons.append("dynamo exporter: needs the 'onnxscript' package (pip install 'kaon[optimize]')")
        program = None
    if program is not None:
        try:
            with quiet():
                onnx_program = torch.onnx.export(program, dynamo=True, verbose=False, optimize=True)
            return onnx_program.model_proto, "dynamo", []
        except Exception as exc:  # noqa: BLE001 - the exporter raises many types; its reason is reported
            reasons.append(f"dynamo exporter: {summarize(exc)}{_culprit(exc, program)}")
    elif module[1]:
        reasons.append(f"torch.export: {module[1]}")
    try:
        proto = _export_torchscript(module[0], args, list(example), axes, output_names)
    except Exception as exc:  # noqa: BLE001
        reasons.append(f"TorchScript exporter: {summarize(exc)}")
        raise UnexportableModelError(
            "the model could not be exported to ONNX. " + " | ".join(r.rstrip(". ") for r in reasons)
            + ". Replace or rewrite the module at fault with standard operators, or serve the original."
        ) from exc
    return proto, "torchscript", [f"fell back to the TorchScript exporter: {reasons[0]}"]


def _program_and_module(model: Any, args: tuple[Any, ...], axes: dict[str, list[int]]) -> tuple[Any, Any]:
    """(ExportedProgram or None, (module for TorchScript, reason torch.export failed))."""
    torch = require("torch", "torch", "Exporting a PyTorch model to ONNX")
    if isinstance(model, torch.export.ExportedProgram):
        return model, (model.module(), "")
    # One batch dimension shared by every input; other dynamic axes (a sequence length) are left to
    # torch.export to relate (Dim.DYNAMIC): a named Dim would make it reject a model that caps them.
    batch = torch.export.Dim("batch", min=1)
    shapes = tuple({axis: batch if axis == 0 else torch.export.Dim.DYNAMIC for axis in axis_list}
                   for axis_list in axes.values())
    with contextlib.suppress(Exception):
        model.eval()
    try:
        with quiet():
            return torch.export.export(model, args, dynamic_shapes=shapes), (model, "")
    except Exception as exc:  # noqa: BLE001
        return None, (model, summarize(exc))


def _export_torchscript(module: Any, args: tuple[Any, ...], input_names: list[str], axes: dict[str, list[int]],
                        output_names: list[str]) -> Any:
    torch = require("torch", "torch", "Exporting a PyTorch model to ONNX")
    onnx = require("onnx", "onnx", "Exporting to ONNX")
    with tempfile.TemporaryDirectory(prefix="kaon-export-") as folder, quiet():
        target = Path(folder) / "model.onnx"
        torch.onnx.export(module, args, str(target), dynamo=False, input_names=input_names,
                          output_names=output_names, opset_version=17,
                          dynamic_axes={name: {a: f"d{a}" for a in axis_list} for name, axis_list in axes.items()})
        return onnx.load(str(target))


def _culprit(exc: BaseException, program: Any) -> str:
    """' (in module 'odd' (Odd), node %wobble)' from the node the exporter names, if it names one."""
    text = ANSI.sub("", str(exc))
    match = re.search(r"translating node %(\w+)", text)
    if match is None:
        return ""
    for node in program.graph.nodes:
        if node.name == match.group(1):
            stack = node.meta.get("nn_module_stack") or {}
            if stack:
                path, kind = list(stack.values())[-1]
                kind_name = kind.rsplit(".", 1)[-1] if isinstance(kind, str) else getattr(kind, "__name__", "?")
                return f" (in module '{path or '<root>'}' ({kind_name}), node %{node.name})"
            return f" (node %{node.name}, at the top level of forward)"
    return ""


# ---- keras -----------------------------------------------------------------------------------------


def _is_keras(model: Any) -> bool:
    return any(cls.__module__.startswith("keras") for cls in type(model).__mro__)


def _export_keras(model: Any, example: dict[str, np.ndarray]) -> Any:
    onnx = require("onnx", "onnx", "Exporting to ONNX")
    args = list(example.values())
    model(args[0] if len(args) == 1 else args, training=False)  # Keras exports only a model that has run
    with tempfile.TemporaryDirectory(prefix="kaon-export-") as folder, quiet():
        target = Path(folder) / "model.onnx"
        try:
            model.export(str(target), format="onnx", verbose=False)
        except Exception as exc:  # noqa: BLE001
            raise UnexportableModelError(
                f"Keras could not export {type(model).__name__} to ONNX: {summarize(exc)}. "
                f"Serve the original, or rebuild the model from standard Keras layers."
            ) from exc
        return onnx.load(str(target))


# ---- helpers ---------------------------------------------------------------------------------------


def _batch_of_two(array: np.ndarray) -> np.ndarray:
    """torch.export specializes a batch of 1 to a constant; export on two so the batch axis stays dynamic."""
    return np.concatenate([array, array])[:2] if len(array) < 2 else array[:2]


def _rename_io(proto: Any, input_names: list[str], output_names: list[str]) -> None:
    """Name the graph's inputs and outputs as the model's signature does (clients send those names).

    An internal value that already has one of those names (the exporter calls an embedding lookup's
    output 'embedding') is renamed out of the way first.
    """
    graph = proto.graph
    initializers = {init.name for init in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initializers]
    wanted = {value.name: new for value, new in [*zip(inputs, input_names, strict=False),
                                                  *zip(graph.output, output_names, strict=False)]
              if value.name != new}
    if not wanted:
        return
    taken = initializers | {i.name for i in graph.input} | {o for n in graph.node for o in n.output}
    renames = {}
    for new in wanted.values():
        if new in taken and new not in wanted:
            suffix = 1
            while f"{new}_{suffix}" in taken:
                suffix += 1
            renames[new] = f"{new}_{suffix}"
            taken.add(renames[new])
    renames.update(wanted)
    for value in [*graph.input, *graph.output, *graph.value_info]:
        value.name = renames.get(value.name, value.name)
    for init in graph.initializer:
        init.name = renames.get(init.name, init.name)
    for node in graph.node:
        for i, name in enumerate(node.input):
            node.input[i] = renames.get(name, name)
        for i, name in enumerate(node.output):
            node.output[i] = renames.get(name, name)
