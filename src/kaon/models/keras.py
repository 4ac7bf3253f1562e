"""Keras 3 models, run on the torch backend (KERAS_BACKEND=torch is set before keras is imported)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from kaon.errors import ModelLoadError, require
from kaon.models.model import Model
from kaon.types import Signature, TensorSpec


def import_keras() -> Any:
    """Import keras on the torch backend; a keras already imported on another backend is an error."""
    os.environ.setdefault("KERAS_BACKEND", "torch")
    keras = require("keras", "keras", "Running a Keras model")
    backend = keras.backend.backend()
    if backend != "torch":
        raise ModelLoadError(
            f"kaon runs Keras models on the torch backend. Received: KERAS_BACKEND={backend!r}. "
            f"Set KERAS_BACKEND=torch before keras is first imported."
        )
    return keras


def keras_signature(model: Any) -> Signature:
    def spec(tensor: Any, fallback: str) -> TensorSpec:
        shape = tuple(-1 if d is None else int(d) for d in tensor.shape)
        name = (getattr(tensor, "name", None) or fallback).split(":")[0]
        if name.startswith("keras_tensor"):  # an auto-generated name says nothing to a client
            name = fallback
        return TensorSpec(name, str(getattr(tensor, "dtype", "float32")), shape)

    inputs = [spec(t, f"input_{i}" if i else "input") for i, t in enumerate(model.inputs)]
    outputs = [spec(t, f"output_{i}" if i else "output") for i, t in enumerate(model.outputs)]
    return Signature(inputs, outputs)


class KerasModel(Model):
    framework = "keras"

    def __init__(self, keras_model: Any, name: str = "model", signature: Signature | None = None) -> None:
        super().__init__(signature or keras_signature(keras_model), name)
        self.keras_model = keras_model
        self._output_names = [s.name for s in self.signature.outputs]

    def differentiable_module(self) -> Any:
        """On the torch backend a Keras 3 model is a torch module whose calls on torch tensors record gradients."""
        import torch

        return self.keras_model if isinstance(self.keras_model, torch.nn.Module) else None

    @classmethod
    def load(cls, path: Path, name: str | None = None) -> KerasModel:
        keras = import_keras()
        try:
            model = keras.saving.load_model(str(path), safe_mode=True)
        except Exception as exc:
            raise ModelLoadError(
                f"'{path}' could not be loaded as a Keras 3 model: {exc}. "
                f"Expected a .keras file written by model.save('name.keras')."
            ) from exc
        return cls(model, name or Path(path).stem)

    def _run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        torch = require("torch", "torch", "Running a Keras model on the torch backend")
        args = [inputs[s.name] for s in self.signature.inputs]
        with torch.inference_mode():
            result = self.keras_model(args[0] if len(args) == 1 else args, training=False)
        items = result if isinstance(result, (list, tuple)) else [result]
        return {n: np.asarray(t.detach().cpu().numpy() if hasattr(t, "detach") else t)
                for n, t in zip(self._output_names, items, strict=True)}
