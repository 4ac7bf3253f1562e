"""A kaon Model seen by the explainers: one forward function on torch tensors, with or without gradients.

A torch model (an in-memory module, or a `.pt2` program whose module autograd runs through in
eager mode) gives a differentiable forward. Any other model (ONNX, Keras) is run through
`Model.run` on numpy arrays, which is all the forward-only methods need.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from kaon.errors import InvalidInputError
from kaon.explanation._gradients import first_output
from kaon.explanation.methods import tensor_methods
from kaon.models import Model


def differentiable_module(model: Model) -> torch.nn.Module | None:
    """The torch module behind `model` when autograd can run through it (a torch model, or a Keras 3 model on the
    torch backend: Model.differentiable_module), else None."""
    module = model.differentiable_module()
    return module if isinstance(module, torch.nn.Module) else None


class TensorAdapter:
    """One single-input Model, its input spec, and forward functions for the explainers."""

    def __init__(self, model: Model) -> None:
        if len(model.signature.inputs) != 1:
            names = [s.name for s in model.signature.inputs]
            raise InvalidInputError(
                f"kaon explains models with one input tensor; model '{model.name}' has {len(names)}: {names}. "
                f"Wrap it in a torch module that takes one tensor, or explain it through a kaon.Service."
            )
        self.model = model
        self.spec = model.signature.inputs[0]
        self.module = differentiable_module(model)
        self.device = getattr(model, "device", None) or torch.device("cpu")
        self.labels = model.signature.labels

    @property
    def name(self) -> str:
        return self.model.name

    @property
    def has_gradients(self) -> bool:
        return self.module is not None

    @property
    def supported_methods(self) -> list[str]:
        return tensor_methods(self.has_gradients)

    @property
    def why_not(self) -> str:
        """Why some methods are missing, for error messages."""
        if self.model.framework == "onnx":
            return "runs on onnxruntime, which gives no gradients"
        if self.model.framework == "torch":
            return "is a torch model (a CNN or MLP on tensors, not a transformer over tokens)"
        return f"runs on {self.model.framework}, which kaon explains with forward passes only"

    @property
    def item_shape(self) -> tuple[int, ...]:
        return tuple(self.spec.shape[1:])

    def prepare(self, inputs: Any) -> np.ndarray:
        """Inputs as a validated float batch (N, *item); one item without its batch axis is accepted."""
        if isinstance(inputs, dict):
            if set(inputs) != {self.spec.name}:
                raise InvalidInputError(
                    f"model '{self.name}' takes one input named {self.spec.name!r}. Received: {sorted(inputs)}.")
            inputs = inputs[self.spec.name]
        try:
            array = np.asarray(inputs)
        except ValueError as exc:
            raise InvalidInputError(
                f"inputs for model '{self.name}' must be one array {self.spec.describe()}. Received: a ragged "
                f"value ({exc}).") from exc
        if array.dtype.kind not in "fiub":
            raise InvalidInputError(
                f"inputs for model '{self.name}' must be numbers, {self.spec.describe()}. "
                f"Received: dtype={array.dtype}.")
        if array.ndim == len(self.spec.shape) - 1 and self.spec.accepts_shape((1, *array.shape)):
            array = array[None]
        array = self.spec.validate(array)
        if array.shape[0] == 0:
            raise InvalidInputError(f"no inputs to explain. Received: shape={tuple(array.shape)}.")
        if array.dtype.kind != "f":
            raise InvalidInputError(
                f"model '{self.name}' takes {self.spec.dtype} inputs; attributions need a float input "
                f"to perturb. Received: dtype={array.dtype}. Explain the model at a float input (e.g. embeddings)."
            )
        return np.ascontiguousarray(array)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, *item) -> (B, K), differentiable when the model is a torch module."""
        if self.module is not None:
            # a model placed in bf16/fp16 (kaon serve --precision) takes its inputs in that dtype
            dtype = getattr(self.model, "_dtype", None) if getattr(self.model, "precision", "fp32") != "fp32" else None
            out = first_output(self.module(x.to(self.device, dtype=dtype or x.dtype)))
        else:
            result = self.model.run({self.spec.name: x.detach().cpu().numpy()})
            out = torch.from_numpy(np.ascontiguousarray(result[self.model.signature.outputs[0].name]))
        if out.dim() == 1:
            out = out.unsqueeze(1)
        return out.reshape(out.shape[0], -1).float()

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Output rows (N, K) as numpy."""
        with torch.no_grad():
            return self.forward(torch.from_numpy(x)).cpu().numpy()
