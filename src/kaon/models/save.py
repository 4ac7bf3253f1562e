"""Turn an in-memory model into files a registry can hold, without pickle.

A torch module becomes a torch.export program (`model.pt2`); a Keras model its `.keras` archive.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kaon.errors import InvalidInputError
from kaon.types import Signature


@dataclass(frozen=True)
class SavedModel:
    files: dict[str, Path]
    framework: str
    signature: Signature


def is_keras_model(model: Any) -> bool:
    return any(cls.__module__.startswith("keras") for cls in type(model).__mro__)


def is_torch_module(model: Any) -> bool:
    return any(cls.__module__ == "torch.nn.modules.module" for cls in type(model).__mro__)


def save_model(model: Any, folder: Path, input_example: Any = None,
               labels: list[str] | None = None) -> SavedModel:
    """Write `model` under `folder` and say what was written."""
    folder.mkdir(parents=True, exist_ok=True)
    if is_keras_model(model):
        from kaon.models.keras import import_keras, keras_signature

        import_keras()
        path = folder / "model.keras"
        model.save(str(path))
        sig = keras_signature(model)
        return SavedModel({"model.keras": path}, "keras", _with_labels(sig, labels))
    if is_torch_module(model):
        if input_example is None:
            raise InvalidInputError(
                f"registering a torch module needs an input example to export it. "
                f"Received: input_example=None for {type(model).__name__}. "
                f"Pass input_example=x[:2] (a batch of real inputs)."
            )
        from kaon.models.torch import export_program

        path = folder / "model.pt2"
        example = input_example if isinstance(input_example, dict) else np.asarray(input_example)
        sig = export_program(model, example, path)
        return SavedModel({"model.pt2": path}, "torch", _with_labels(sig, labels))
    if isinstance(model, (str, Path)) and Path(model).exists():
        from kaon.models.loader import load_file

        source = Path(model)
        loaded = load_file(source)
        files = {source.name if source.suffix != ".onnx" else "model.onnx": source}
        data = source.with_name(source.name + ".data")
        if data.exists():
            files[data.name] = data
        return SavedModel(files, loaded.framework, _with_labels(loaded.signature, labels))
    raise InvalidInputError(
        f"cannot register a {type(model).__name__}. Expected a torch.nn.Module, a Keras 3 model, "
        f"or the path of a model file (.onnx, .pt2, .keras)."
    )


def _with_labels(sig: Signature, labels: list[str] | None) -> Signature:
    return Signature(sig.inputs, sig.outputs, labels, sig.extra) if labels else sig
