"""What `optimize` starts from: a registered version, a model file, a kaon Model or an in-memory module."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kaon.errors import InvalidInputError
from kaon.models import Model, load_file, load_folder
from kaon.models.loader import MODEL_SUFFIXES
from kaon.models.save import is_keras_model, is_torch_module
from kaon.optimization.measure import Runner, model_runner, onnx_runner, torch_runner
from kaon.sdk.hub import looks_like_path
from kaon.types import Signature


@dataclass
class Source:
    label: str  # 'digits@1', a path, or 'DigitsCNN (in memory)'
    kind: str  # 'torch' | 'keras' | 'onnx'
    model: Model  # kaon's Model: the signature, and the runtime that serves the original today
    size_bytes: int
    program: Any = None  # torch.export.ExportedProgram, when the source is a .pt2
    module: Any = None  # torch nn.Module (eager) to run and prune
    keras_model: Any = None
    onnx_path: Path | None = None
    record: Any = None  # ModelVersionRecord when the source is registered

    @property
    def signature(self) -> Signature:
        return self.model.signature

    @property
    def input_name(self) -> str:
        return self.signature.inputs[0].name

    @property
    def output_names(self) -> list[str]:
        return [s.name for s in self.signature.outputs]

    def runner(self, num_threads: int) -> Runner:
        if self.kind == "onnx" and self.onnx_path is not None:
            return onnx_runner(self.onnx_path, num_threads=num_threads)
        if self.kind == "torch":
            return torch_runner(self.module, [s.name for s in self.signature.inputs])
        return model_runner(self.model)

    def exportable(self) -> Any:
        """What the ONNX exporter takes: the program, the module or the Keras model."""
        return self.program if self.program is not None else (self.module if self.kind == "torch"
                                                              else self.keras_model)


def open_source(ref_or_model: Any, *, registry: Any, example: np.ndarray | None) -> Source:
    """Resolve what the user passed; `example` (held-out inputs) signs an in-memory torch module."""
    if isinstance(ref_or_model, (str, Path)) and not looks_like_path(ref_or_model):
        record = registry.get_version(str(ref_or_model))
        folder = registry.materialize(record)
        model = load_folder(folder, record.files, record.framework, record.signature, record.name)
        return _from_model(model, record.ref, _model_bytes(folder, record.files), folder, record)
    if isinstance(ref_or_model, (str, Path)):
        path = Path(ref_or_model)
        model = load_file(path)
        extra = path.with_name(path.name + ".data")
        size = path.stat().st_size + (extra.stat().st_size if extra.exists() else 0)
        return _from_model(model, str(path), size, path.parent, None, main=path)
    if isinstance(ref_or_model, Model):
        return _from_model(ref_or_model, f"{ref_or_model.name} (in memory)", 0, None, None)
    if is_torch_module(ref_or_model):
        if example is None:
            raise InvalidInputError("an in-memory torch module needs calibration_data to learn its input shape.")
        from kaon.models.torch import TorchModel

        model = TorchModel.from_module(ref_or_model, example[:2], name=type(ref_or_model).__name__)
        return _from_model(model, f"{type(ref_or_model).__name__} (in memory)", 0, None, None)
    if is_keras_model(ref_or_model):
        from kaon.models.keras import KerasModel

        return _from_model(KerasModel(ref_or_model, name=ref_or_model.name), f"{ref_or_model.name} (in memory)", 0,
                           None, None)
    raise InvalidInputError(
        f"optimize takes a registered model ('digits@1'), a model file (.pt2, .onnx, .keras), a kaon Model, "
        f"a torch.nn.Module or a Keras model. Received: {type(ref_or_model).__name__}"
    )


def _from_model(model: Model, label: str, size: int, folder: Path | None, record: Any,
                main: Path | None = None) -> Source:
    framework = model.framework
    if framework == "onnx":
        path = main or (folder / "model.onnx" if folder else None)
        if path is None:
            raise InvalidInputError("an in-memory ONNX model cannot be optimized: pass its file or registry ref.")
        return Source(label, "onnx", model, size, onnx_path=path, record=record)
    if framework == "keras":
        size = size or _saved_size(model)
        return Source(label, "keras", model, size, keras_model=model.keras_model, record=record)  # type: ignore[attr-defined]
    program = None
    pt2 = main if main is not None and main.suffix == ".pt2" else (folder / "model.pt2" if folder else None)
    if pt2 is not None and pt2.exists():
        import torch

        program = torch.export.load(str(pt2))
    module = model.module  # type: ignore[attr-defined]
    source = Source(label, "torch", model, size, program=program, module=module, record=record)
    if not size:
        source.size_bytes = _saved_size(model)
    return source


def _model_bytes(folder: Path, names: Any) -> int:
    """The bytes of a version's model files (and ONNX external weights), not of what rides along with them
    (reference statistics, reports): the size the optimizer compares its variants with."""
    return sum((folder / name).stat().st_size for name in names
               if Path(name).suffix in MODEL_SUFFIXES or name.endswith(".onnx.data"))


def _saved_size(model: Model) -> int:
    """The size of the file kaon would register for an in-memory model (torch.export or .keras)."""
    from kaon.models import save_model

    inner = getattr(model, "module", None) or getattr(model, "keras_model", None)
    spec = model.signature.inputs[0]
    example = np.zeros([2 if d == -1 else d for d in spec.shape], dtype=spec.dtype)
    with tempfile.TemporaryDirectory(prefix="kaon-size-") as folder:
        saved = save_model(inner, Path(folder), input_example=example)
        return sum(p.stat().st_size for p in saved.files.values())
